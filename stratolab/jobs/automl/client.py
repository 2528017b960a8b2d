"""Deploy the best trial of an AutoML search as a function (what **Deploy best** and
`stratolab automl deploy-best` do): fetch its bundle from the scheduler, deploy it through the
functions service, both with the caller's own token."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import requests

from stratolab.client.session import decode, hub_session
from stratolab.functions.client import Deployment, FunctionsError, deploy_bundle
from stratolab.platform.archive import extract_bundle

SCHEDULER_PATH = "/services/scheduler"


def deploy_best(job_id: int, name: str, *, scaling: dict | None = None, public: bool | None = None,
                url: str | None = None, token: str | None = None) -> tuple[Deployment, dict[str, Any]]:
    """(the deployment, the trial it came from)."""
    session = hub_session(url, token, FunctionsError)
    r = requests.get(f"{session.url}{SCHEDULER_PATH}/api/automl/{job_id}/best/bundle", headers=session.headers,
                     timeout=300)
    if r.status_code >= 400:
        decode(r, FunctionsError)
    trial = {"number": int(r.headers.get("X-Trial-Number", "-1"))}
    with tempfile.TemporaryDirectory(prefix="stratolab-best-") as tmp:
        extract_bundle(r.content, Path(tmp) / "bundle")
        deployment = deploy_bundle(Path(tmp) / "bundle", name, scaling=scaling, public=public,
                                   url=session.url, token=token)
    return deployment, trial
