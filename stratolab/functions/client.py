"""Talk to the functions service from Python: a notebook, the CLI, a CI job.

    import stratolab.functions as fn
    fn.deploy(predict, name="mlp")            # capture from this kernel, upload, wait until ready
    fn.invoke("mlp", [[0.1, 0.2]])

Inside a user server the server's own token is used; elsewhere what `stratolab login` stored, or
STRATOLAB_URL / STRATOLAB_TOKEN.
"""

from __future__ import annotations

import io
import json
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from stratolab.cli.credentials import load_credentials
from stratolab.errors import StratolabError

SERVICE_PATH = "/services/functions"


class FunctionsError(StratolabError):
    """The functions service refused or failed; the message is the service's."""


@dataclass
class Deployment:
    """What a deploy returns; shows the URL and a curl example when displayed in a notebook."""

    data: dict[str, Any]

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
        return "\n".join(lines)


def _session(url: str | None, token: str | None) -> tuple[str, dict[str, str]]:
    creds = load_credentials()
    url = (url or creds.url).rstrip("/")
    token = token or creds.token
    if not token:
        raise FunctionsError("not logged in: run `stratolab login`, or set STRATOLAB_TOKEN", status=401)
    return url, {"Authorization": f"token {token}"}


def _answer(r: requests.Response) -> dict[str, Any]:
    try:
        data = r.json()
    except ValueError:
        data = {"error": r.text[:500]}
    if r.status_code >= 400:
        raise FunctionsError(data.get("error", f"HTTP {r.status_code}"), status=r.status_code)
    return data


def pack(directory: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for path in sorted(Path(directory).rglob("*")):
            tar.add(path, arcname=str(path.relative_to(directory)), recursive=False)
    return buf.getvalue()


def deploy_bundle(directory: Path, name: str, *, scaling: dict | None = None, public: bool | None = None,
                  promote: bool = True, url: str | None = None, token: str | None = None) -> Deployment:
    url, headers = _session(url, token)
    params: dict[str, str] = {"promote": "true" if promote else "false"}
    if scaling:
        params["scaling"] = json.dumps(scaling)
    if public is not None:
        params["public"] = "true" if public else "false"
    r = requests.post(
        f"{url}{SERVICE_PATH}/api/functions/{name}", params=params, data=pack(directory),
        headers={**headers, "Content-Type": "application/gzip"}, timeout=600,
    )
    return Deployment(_answer(r))


def deploy(handler: Callable[..., Any] | str, name: str | None = None, *, scaling: dict | None = None,
           public: bool | None = None, promote: bool = True, cell_source: str | None = None,
           url: str | None = None, token: str | None = None) -> Deployment:
    """Capture `handler` from this kernel (model included) and deploy it as a new version of `name`."""
    from stratolab.functions.capture import capture_to_directory

    fname = name or (handler if isinstance(handler, str) else handler.__name__).replace("_", "-").lower()
    with tempfile.TemporaryDirectory(prefix="stratolab-bundle-") as tmp:
        capture_to_directory(handler, Path(tmp) / "bundle", cell_source=cell_source)
        return deploy_bundle(Path(tmp) / "bundle", fname, scaling=scaling, public=public, promote=promote, url=url, token=token)


def invoke(name: str, payload: Any, *, owner: str | None = None, url: str | None = None, token: str | None = None) -> Any:
    url, headers = _session(url, token)
    owner = owner or load_credentials().username or whoami_name(url, headers)
    body = payload if isinstance(payload, (bytes, bytearray)) else json.dumps(payload).encode()
    ctype = "application/octet-stream" if isinstance(payload, (bytes, bytearray)) else "application/json"
    r = requests.post(
        f"{url}{SERVICE_PATH}/fn/{owner}/{name}", data=body, headers={**headers, "Content-Type": ctype}, timeout=600
    )
    if r.status_code >= 400:
        _answer(r)
    return r.content if r.headers.get("Content-Type", "").startswith("application/octet-stream") else r.json()


def whoami_name(url: str, headers: dict[str, str]) -> str:
    r = requests.get(f"{url}/hub/api/user", headers=headers, timeout=30)
    return _answer(r)["name"]


def call(method: str, path: str, *, json_body: Any = None, url: str | None = None, token: str | None = None) -> dict[str, Any]:
    """Any management call: `call("GET", "api/functions")`."""
    url, headers = _session(url, token)
    r = requests.request(method, f"{url}{SERVICE_PATH}/{path.lstrip('/')}", json=json_body, headers=headers, timeout=120)
    return _answer(r)
