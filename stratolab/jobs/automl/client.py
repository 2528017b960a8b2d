"""Deploy the best trial of an AutoML search as a function (what **Deploy best** and
`stratolab automl deploy-best` do): fetch its bundle from the scheduler, deploy it through the
functions service, both with the caller's own token."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from stratolab.client.session import download
from stratolab.functions.client import Deployment, FunctionsError, deploy_bundle
from stratolab.platform.archive import extract_bundle


def deploy_best(job_id: int, name: str, *, scaling: dict | None = None, public: bool | None = None,
                url: str | None = None, token: str | None = None) -> tuple[Deployment, dict[str, Any]]:
    """(the deployment, the trial it came from)."""
    r = download("scheduler", f"api/automl/{job_id}/best/bundle", error=FunctionsError, url=url, token=token)
    trial = {"number": int(r.headers.get("X-Trial-Number", "-1"))}
    with tempfile.TemporaryDirectory(prefix="stratolab-best-") as tmp:
        extract_bundle(r.content, Path(tmp) / "bundle")
        deployment = deploy_bundle(Path(tmp) / "bundle", name, scaling=scaling, public=public,
                                   url=url, token=token)
    return deployment, trial
