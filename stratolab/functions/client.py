"""Talk to the functions service from Python: a notebook, the CLI, a CI job.

    import stratolab.functions as fn
    fn.deploy(predict, name="mlp")            # capture from this kernel, upload, wait until ready
    fn.invoke("mlp", [[0.1, 0.2]])
    fn.deploy(resize, triggers=[fn.upload(), fn.mqtt("sensors/#")])   # and run on events

Inside a user server the server's own token is used; elsewhere what `stratolab login` stored, or
STRATOLAB_URL / STRATOLAB_TOKEN.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from stratolab.client.session import call_service, decode, hub_session, service_url
from stratolab.errors import StratolabError
from stratolab.platform.archive import pack

SERVICE = "functions"


class FunctionsError(StratolabError):
    """The functions service refused or failed; the message is the service's."""


@dataclass
class Deployment:
    """What a deploy returns; shows the URL and a curl example when displayed in a notebook."""

    data: dict[str, Any]
    #: the triggers `deploy(triggers=...)` created or updated, as the triggers service answered
    triggers: list[dict[str, Any]] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.data["name"]

    @property
    def version(self) -> int:
        return self.data["version"]

    @property
    def url(self) -> str:
        return self.data["url"]

    @property
    def key(self) -> str | None:
        return self.data.get("key")

    def curl(self) -> str:
        auth = f'-H "X-Function-Key: {self.key}" ' if self.key else '-H "Authorization: token $JUPYTERHUB_API_TOKEN" '
        if self.data.get("public"):
            auth = ""
        return f"curl -X POST {auth}-H 'Content-Type: application/json' -d '[...]' {self.url}"

    def __repr__(self) -> str:
        lines = [f"{self.name} version {self.version}: {self.url}", self.curl()]
        if self.key:
            lines.append(f"Invocation key (shown once): {self.key}")
        for t in self.triggers:
            where = t.get("ingress_url") or t.get("upload_url") or ""
            lines.append(f"Trigger {t['id']} {t['name']} ({t['kind']}, {t.get('action', 'created')}) {where}".rstrip())
            if t.get("key"):
                lines.append(f"  trigger key (shown once): {t['key']}")
        return "\n".join(lines)


def _answer(r: requests.Response) -> dict[str, Any]:
    return decode(r, FunctionsError)


def capture_bundle(handler: Callable[..., Any] | str, directory: Path, cell_source: str | None = None) -> None:
    """Write `handler`'s bundle, captured from this kernel with what it uses, into `directory`, without
    deploying it (an AutoML trial saves its model this way; **Deploy best** deploys it later)."""
    from stratolab.functions.capture import capture_to_directory

    capture_to_directory(handler, Path(directory), cell_source=cell_source)


def save_model_files(name: str, value: Any, directory: Path) -> None:
    """Save a live value (a trained model) in its framework's format, as a bundle keeps its values."""
    from stratolab.functions.serializers import save_value

    save_value(name, value, Path(directory))


def deploy_bundle(directory: Path, name: str, *, scaling: dict | None = None, public: bool | None = None,
                  promote: bool = True, url: str | None = None, token: str | None = None) -> Deployment:
    session = hub_session(url, token, FunctionsError)
    params: dict[str, str] = {"promote": "true" if promote else "false"}
    if scaling:
        params["scaling"] = json.dumps(scaling)
    if public is not None:
        params["public"] = "true" if public else "false"
    r = requests.post(
        service_url(session, SERVICE, f"api/functions/{name}"), params=params, data=pack(directory),
        headers={**session.headers, "Content-Type": "application/gzip"}, timeout=600,
    )
    return Deployment(_answer(r))


def deploy(handler: Callable[..., Any] | str, name: str | None = None, *, scaling: dict | None = None,
           public: bool | None = None, promote: bool = True, cell_source: str | None = None,
           triggers: list[Any] | None = None, url: str | None = None, token: str | None = None) -> Deployment:
    """Capture `handler` from this kernel (model included) and deploy it as a new version of `name`.

    `triggers=[fn.upload(), fn.mqtt("sensors/#"), fn.cron("*/5 * * * *")]` makes the function run on
    events too. They are set up once the deploy succeeded, and a redeploy with the same list changes
    nothing: a trigger is matched by name (its own, else FUNCTION-KIND), kept when its source is the
    same, replaced when it is not; triggers made elsewhere are left alone."""
    from stratolab.client import triggers_api
    from stratolab.functions.capture import capture_to_directory

    fname = name or (handler if isinstance(handler, str) else handler.__name__).replace("_", "-").lower()
    wanted = triggers_api.named_triggers(fname, triggers or [])  # a wrong trigger fails before the upload
    with tempfile.TemporaryDirectory(prefix="stratolab-bundle-") as tmp:
        capture_to_directory(handler, Path(tmp) / "bundle", cell_source=cell_source)
        deployment = deploy_bundle(Path(tmp) / "bundle", fname, scaling=scaling, public=public, promote=promote,
                                   url=url, token=token)
    if wanted:
        try:
            deployment.triggers = triggers_api.sync_triggers(fname, wanted, url=url, token=token)
        except StratolabError as e:
            raise FunctionsError(f"{fname} version {deployment.version} is deployed, but its triggers are not "
                                 f"all set up: {e.message}", status=e.status) from e
    return deployment


def invoke(name: str, payload: Any, *, owner: str | None = None, url: str | None = None, token: str | None = None) -> Any:
    session = hub_session(url, token, FunctionsError)
    owner = owner or session.username or whoami_name(session.url, session.headers)
    body = payload if isinstance(payload, (bytes, bytearray)) else json.dumps(payload).encode()
    ctype = "application/octet-stream" if isinstance(payload, (bytes, bytearray)) else "application/json"
    r = requests.post(
        service_url(session, SERVICE, f"fn/{owner}/{name}"), data=body,
        headers={**session.headers, "Content-Type": ctype}, timeout=600,
    )
    if r.status_code >= 400:
        _answer(r)
    return r.content if r.headers.get("Content-Type", "").startswith("application/octet-stream") else r.json()


def whoami_name(url: str, headers: dict[str, str]) -> str:
    r = requests.get(f"{url}/hub/api/user", headers=headers, timeout=30)
    return _answer(r)["name"]


def call(method: str, path: str, *, json_body: Any = None, url: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Any management call: `call("GET", "api/functions")`."""
    return call_service(SERVICE, method, path, json_body, error=FunctionsError, url=url, token=token)
