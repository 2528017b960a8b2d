"""Requirements of a captured handler, pinned to what the kernel's environment has installed.

`import sklearn` needs the distribution `scikit-learn`; the mapping comes from
`importlib.metadata.packages_distributions()` of the environment the kernel runs in, so the deployed
function gets the versions the model was trained with (nuclio and MLRun leave them unpinned).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from importlib import metadata

STDLIB = frozenset(sys.stdlib_module_names)


def pin_requirements(
    modules: Iterable[str],
    module_to_distributions: Mapping[str, list[str]] | None = None,
    version_of=metadata.version,
) -> tuple[list[str], list[str]]:
    """Return (`name==version` lines, modules that belong to no installed distribution).

    Standard-library modules need nothing. A module provided by several distributions (namespace
    packages) pins all of them.
    """
    mapping = module_to_distributions if module_to_distributions is not None else metadata.packages_distributions()
    pins: set[str] = set()
    unknown: list[str] = []
    for module in sorted(set(modules)):
        if not module or module in STDLIB or module == "__future__":
            continue
        dists = mapping.get(module)
        if not dists:
            unknown.append(module)
            continue
        for dist in dists:
            try:
                pins.add(f"{dist}=={version_of(dist)}")
            except metadata.PackageNotFoundError:
                unknown.append(module)
    return sorted(pins, key=str.lower), unknown
