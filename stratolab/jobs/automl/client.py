"""Deploy the best trial of an AutoML search as a function (what **Deploy best** and
`stratolab automl deploy-best` do): fetch its bundle from the scheduler, deploy it through the
functions service, both with the caller's own token."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import requests

from stratolab.functions.bundle import extract_bundle
from stratolab.functions.client import Deployment, FunctionsError, _session, deploy_bundle

SCHEDULER_PATH = "/services/scheduler"


def deploy_best(job_id: int, name: str, *, scaling: dict | None = None, public: bool | None = None,
                url: str | None = None, token: str | None = None) -> tuple[Deployment, dict[str, Any]]:
    """(the deployment, the trial it came from)."""
    url, headers = _session(url, token)
    r = requests.get(f"{url}{SCHEDULER_PATH}/api/automl/{job_id}/best/bundle", headers=headers, timeout=300)
    if r.status_code >= 400:
        try:
            message = r.json().get("error", r.text)
        except ValueError:
            message = r.text[:500]
        raise FunctionsError(message, status=r.status_code)
    trial = {"number": int(r.headers.get("X-Trial-Number", "-1"))}
    with tempfile.TemporaryDirectory(prefix="stratolab-best-") as tmp:
        extract_bundle(r.content, Path(tmp) / "bundle")
        deployment = deploy_bundle(Path(tmp) / "bundle", name, scaling=scaling, public=public,
                                   url=url, token=token)
    return deployment, trial
