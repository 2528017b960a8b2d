"""MQTT broker URLs, once for every service that talks to a broker (triggers' sources and publisher, rollouts'
decision events): mqtt://[user:password@]host[:port], mqtts:// for TLS (tcp:// and ssl:// as their aliases)."""

from __future__ import annotations

import ssl
from typing import Any
from urllib.parse import unquote, urlsplit

#: scheme -> whether the connection uses TLS
SCHEMES = {"mqtt": False, "tcp": False, "mqtts": True, "ssl": True}


def client_options(url: str) -> dict[str, Any]:
    """aiomqtt.Client's connection arguments for a broker URL (host 127.0.0.1 and port 1883, or 8883 with TLS,
    when the URL leaves them out); a ValueError says what is wrong with the URL."""
    parts = urlsplit(url)
    if parts.scheme not in SCHEMES:
        raise ValueError(f"the MQTT broker URL {url!r} must start with mqtt:// or mqtts://")
    tls = SCHEMES[parts.scheme]
    options: dict[str, Any] = {"hostname": parts.hostname or "127.0.0.1", "port": parts.port or (8883 if tls else 1883)}
    if parts.username:
        options["username"] = unquote(parts.username)
        options["password"] = unquote(parts.password) if parts.password else None
    if tls:
        options["tls_context"] = ssl.create_default_context()
    return options
