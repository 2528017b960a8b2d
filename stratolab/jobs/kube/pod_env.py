"""A run's environment inside its pod: the agent's variables, and paths rewritten for the pod's workdir.

Light on purpose: the agent, which runs in every Job's pod, imports it; the Job builders
(`manifests.py`, which need KubeSpawner) import it too.

Environment values naming the scheduler's workdir (STRATOLAB_TRIAL_DIR, STRATOLAB_MODEL_DIR...) are
rewritten to `$(STRATOLAB_WORKDIR)/...`, Kubernetes' dependent-variable syntax: the kubelet expands
them in the Job's env, and the agent expands the same values from the spec route with `expand`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

#: where the pod's emptyDir work volume is mounted (the agent's workdir)
WORK_MOUNT = "/srv/stratolab/work"
WORKDIR_VAR = "STRATOLAB_WORKDIR"
#: variables of the local executor that mean nothing in a pod (the device plugin assigns GPUs there)
LOCAL_ONLY_ENV = frozenset({"CUDA_VISIBLE_DEVICES"})
#: variables the agent needs; set last, so no run variable can replace them
SCHEDULER_URL_VAR, RUN_KEY_VAR, RUN_TOKEN_VAR = "STRATOLAB_SCHEDULER_URL", "STRATOLAB_RUN_KEY", "STRATOLAB_RUN_TOKEN"

_REFERENCE = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def escape_references(value: str) -> str:
    """A literal value the kubelet will not expand: `$` is written `$$` (a run parameter may hold `$(X)`)."""
    return value.replace("$", "$$")


def localize_paths(env: Mapping[str, str], workdir: Path | str) -> dict[str, str]:
    """`env` for the pod: values naming the scheduler's `workdir` (or a path in it) name the pod's,
    as `$(STRATOLAB_WORKDIR)/...`; every other value is escaped so the kubelet keeps it as it is."""
    base = str(workdir).rstrip("/")
    out = {}
    for name, value in env.items():
        if value == base:
            out[name] = f"$({WORKDIR_VAR})"
        elif value.startswith(base + "/"):
            out[name] = f"$({WORKDIR_VAR})/" + escape_references(value[len(base) + 1:])
        else:
            out[name] = escape_references(value)
    return out


def expand(value: str, variables: Mapping[str, str]) -> str:
    """Kubernetes' expansion of `$(NAME)` in an env value: what the kubelet does with the Job's env.

    `$$` is a literal `$`; a reference to an undefined name is kept as written."""
    out, i = [], 0
    while i < len(value):
        if value[i] == "$" and i + 1 < len(value):
            nxt = value[i + 1]
            if nxt == "$":
                out.append("$")
                i += 2
                continue
            if nxt == "(":
                m = _REFERENCE.match(value, i)
                if m:
                    out.append(variables.get(m.group(1), m.group(0)))
                    i = m.end()
                    continue
        out.append(value[i])
        i += 1
    return "".join(out)
