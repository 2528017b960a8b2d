"""One way to call a Stratolab service: the hub URL and token to use, and the one decoder of answers.

The services answer errors as `{"error": message, "field": name?}` with a 4xx/5xx status; `decode`
turns that into the exception a caller can show as is (InvalidInput when a field is named), and a
204 into an empty dict. `call_service` and `download` are the two kinds of call every client makes:
JSON in and out, or bytes out (bundles, executed notebooks, logs).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import requests

from stratolab.client.credentials import load_credentials
from stratolab.errors import StratolabError


@dataclass(frozen=True)
class HubSession:
    """The hub to call and the headers that authenticate the calls."""

    url: str
    headers: dict[str, str]
    username: str | None = None


def hub_session(url: str | None = None, token: str | None = None,
                error: type[StratolabError] = StratolabError) -> HubSession:
    """The given URL and token, else the stored credentials (see credentials.py); `error` (401) when
    there is no token at all."""
    creds = load_credentials()
    token = token or creds.token
    if not token:
        raise error("not logged in: run `stratolab login`, or set STRATOLAB_TOKEN", status=401)
    return HubSession((url or creds.url).rstrip("/"), {"Authorization": f"token {token}"}, creds.username)


def decode(r: requests.Response, error: type[StratolabError] = StratolabError) -> Any:
    """The answer's JSON (an empty dict for 204), or the service's error raised as `error` with the
    answer's status; an error about a field says which (`field: message`) and keeps it in `.field`."""
    if r.status_code == 204:
        return {}
    try:
        data = r.json()
    except ValueError:
        data = {"error": r.text[:500] or f"HTTP {r.status_code}"}
    if r.status_code >= 400:
        message = (data.get("error") if isinstance(data, dict) else None) or f"HTTP {r.status_code}"
        field = data.get("field") if isinstance(data, dict) else None
        exc = error(f"{field}: {message}" if field else message, status=r.status_code)
        exc.field = field or None
        raise exc
    return data


def service_url(session: HubSession, service: str, path: str) -> str:
    """`path` of the hub service named `service` (functions, scheduler), through the hub's proxy."""
    return f"{session.url}/services/{service}/{path.lstrip('/')}"


def call_service(service: str, method: str, path: str, body: Any = None, *, error: type[StratolabError] = StratolabError,
                 url: str | None = None, token: str | None = None, timeout: float = 120) -> Any:
    """A JSON call to a hub service with the given or stored credentials; its answer decoded."""
    session = hub_session(url, token, error)
    r = requests.request(method, service_url(session, service, path), json=body, headers=session.headers,
                         timeout=timeout)
    return decode(r, error)


def download(service: str, path: str, *, error: type[StratolabError] = StratolabError, url: str | None = None,
             token: str | None = None, timeout: float = 300) -> requests.Response:
    """A GET of bytes from a hub service: the answer itself (its `.content`, its headers), or its
    error raised as `decode` raises it."""
    session = hub_session(url, token, error)
    r = requests.get(service_url(session, service, path), headers=session.headers, timeout=timeout)
    if r.status_code >= 400:
        decode(r, error)
    return r
