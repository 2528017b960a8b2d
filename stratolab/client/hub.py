"""HTTP calls to a JupyterHub, shared by the CLI and the tests: tokens and the current user.

Errors come back as `HubError` with a message that says what to do, never a bare HTTP status.
"""

from __future__ import annotations

from typing import Any

import requests

from stratolab.errors import StratolabError

TIMEOUT = 30


class HubError(StratolabError):
    """A hub call failed; `status` is the HTTP status (0 when the hub could not be reached)."""


def _hub(url: str) -> str:
    return url.rstrip("/")


def _request(method: str, url: str, **kwargs) -> requests.Response:
    try:
        return requests.request(method, url, timeout=TIMEOUT, **kwargs)
    except requests.ConnectionError as e:
        raise HubError(f"cannot reach the hub at {url.split('/hub/')[0]}: is it running?", status=0) from e


def request_token(
    hub_url: str,
    username: str,
    password: str,
    note: str = "stratolab CLI",
    expires_in: int | None = None,
) -> str:
    """Log in with a password and return a new API token of that user.

    The login form runs first: it checks the password the way a browser login does (approval
    included) and creates the hub user on a first login, which the token API needs.
    """
    hub_url = _hub(hub_url)
    session = requests.Session()
    try:
        session.get(f"{hub_url}/hub/login", timeout=TIMEOUT)
        xsrf = next((c.value for c in session.cookies if c.name == "_xsrf"), "")
        r = session.post(
            f"{hub_url}/hub/login",
            data={"username": username, "password": password, "_xsrf": xsrf},
            allow_redirects=False,
            timeout=TIMEOUT,
        )
    except requests.ConnectionError as e:
        raise HubError(f"cannot reach the hub at {hub_url}: is it running?", status=0) from e
    if r.status_code != 302:
        raise HubError(
            "login refused: wrong username or password, or the account is not approved yet",
            status=403,
        )
    body: dict[str, Any] = {"auth": {"username": username, "password": password}, "note": note}
    if expires_in:
        body["expires_in"] = expires_in
    r = _request("POST", f"{hub_url}/hub/api/users/{username}/tokens", json=body)
    if r.status_code != 201:
        raise HubError(f"the hub refused to issue a token ({r.status_code})", status=r.status_code)
    return r.json()["token"]


def whoami(hub_url: str, token: str) -> dict[str, Any]:
    """The model of the user (or service) that owns `token`."""
    r = _request(
        "GET", f"{_hub(hub_url)}/hub/api/user", headers={"Authorization": f"token {token}"}
    )
    if r.status_code in (401, 403):
        raise HubError(
            "the hub does not accept this token (expired or revoked?): run `stratolab login`",
            status=r.status_code,
        )
    if r.status_code != 200:
        raise HubError(f"the hub answered {r.status_code} to /hub/api/user", status=r.status_code)
    return r.json()
