"""Where the CLI finds its hub URL and token.

In order: STRATOLAB_URL / STRATOLAB_TOKEN; inside a single-user server, the server's own token
(JUPYTERHUB_API_TOKEN, JUPYTERHUB_API_URL); then what `stratolab login` stored in
`$XDG_CONFIG_HOME/stratolab/credentials.json` (mode 0600).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_URL = "http://127.0.0.1:8000"


@dataclass(frozen=True)
class Credentials:
    url: str
    token: str | None
    username: str | None = None
    #: where they came from: "env", "server", "file" or "none"
    source: str = "none"


def credentials_path(environ: Mapping[str, str] | None = None) -> Path:
    env = os.environ if environ is None else environ
    base = env.get("XDG_CONFIG_HOME") or str(Path(env.get("HOME", "~")).expanduser() / ".config")
    return Path(base) / "stratolab" / "credentials.json"


def load_credentials(environ: Mapping[str, str] | None = None) -> Credentials:
    env = os.environ if environ is None else environ
    stored: dict = {}
    path = credentials_path(env)
    if path.exists():
        try:
            stored = json.loads(path.read_text())
        except (OSError, ValueError):
            stored = {}
    if env.get("STRATOLAB_TOKEN"):
        url = env.get("STRATOLAB_URL") or stored.get("url") or DEFAULT_URL
        return Credentials(url.rstrip("/"), env["STRATOLAB_TOKEN"], None, "env")
    if env.get("JUPYTERHUB_API_TOKEN") and env.get("JUPYTERHUB_API_URL"):
        api = env["JUPYTERHUB_API_URL"].rstrip("/")
        url = env.get("STRATOLAB_URL") or api.removesuffix("/api").removesuffix("/hub")
        return Credentials(url.rstrip("/"), env["JUPYTERHUB_API_TOKEN"], env.get("JUPYTERHUB_USER"), "server")
    if stored.get("token"):
        url = env.get("STRATOLAB_URL") or stored.get("url") or DEFAULT_URL
        return Credentials(url.rstrip("/"), stored["token"], stored.get("username"), "file")
    return Credentials((env.get("STRATOLAB_URL") or DEFAULT_URL).rstrip("/"), None)


def save_credentials(creds: Credentials, environ: Mapping[str, str] | None = None) -> Path:
    path = credentials_path(environ)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {k: v for k, v in asdict(creds).items() if k != "source"}
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    os.chmod(path, 0o600)
    return path


def forget_credentials(environ: Mapping[str, str] | None = None) -> bool:
    path = credentials_path(environ)
    if path.exists():
        path.unlink()
        return True
    return False
