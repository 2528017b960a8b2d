"""Requests the platform makes on a user's behalf (run notifications' webhooks, and whatever else
fetches a URL a user gave): only to public addresses, unless the admin allows more.

A user-supplied URL is a way into the platform's network: `http://169.254.169.254/latest/meta-data`
reads a cloud machine's credentials, `http://127.0.0.1:8081/hub/api` the hub's private API. So:

- loopback, link-local (the metadata addresses among them), private (RFC 1918, unique local IPv6),
  shared (CGNAT), multicast, reserved and unspecified addresses are refused, IPv4-mapped IPv6 forms
  too;
- the check is made on the *resolved* address at connect time, by the resolver the HTTP client uses
  (`GuardedResolver`): a name that resolves to a public address when the schedule is saved and to
  127.0.0.1 when the run ends (DNS rebinding) is still refused; redirects are never followed;
- `validate_url` refuses what can be known without DNS when the URL is saved (a 400 naming the field);
- `STRATOLAB_OUTBOUND_ALLOW` names networks the admin allows anyway (comma-separated CIDRs, e.g.
  `10.20.0.0/16,127.0.0.1/32` for an internal chat server or a test receiver).
"""

from __future__ import annotations

import ipaddress
import os
import re
import socket
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from tornado.httpclient import AsyncHTTPClient
from tornado.netutil import DefaultExecutorResolver, Resolver

from stratolab.errors import InvalidInput

ENV = "STRATOLAB_OUTBOUND_ALLOW"
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
#: cloud metadata services that are not link-local everywhere (AWS's IPv6 one, Alibaba's)
METADATA_ADDRESSES = {ipaddress.ip_address("fd00:ec2::254"), ipaddress.ip_address("100.100.100.200")}


class OutboundRefused(OSError):
    """A request to an address the platform does not make requests to on a user's behalf."""


@dataclass(frozen=True)
class OutboundPolicy:
    """Which addresses requests on a user's behalf may reach: public ones, plus `allowed` networks."""

    allowed: tuple[IPNetwork, ...] = field(default_factory=tuple)

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> OutboundPolicy:
        raw = (os.environ if environ is None else environ).get(ENV, "")
        networks = []
        for item in (x.strip() for x in raw.split(",")):
            if not item:
                continue
            try:
                networks.append(ipaddress.ip_network(item, strict=False))
            except ValueError:
                raise ValueError(f"{ENV}: {item!r} is not a network (CIDR such as 10.0.0.0/8 or 127.0.0.1/32)") from None
        return cls(tuple(networks))

    def refusal(self, address: str) -> str | None:
        """Why `address` may not be reached (None: it may)."""
        try:
            ip: IPAddress = ipaddress.ip_address(address.split("%", 1)[0])
        except ValueError:
            return f"{address!r} is not an IP address"
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if any(ip in net for net in self.allowed):
            return None
        if ip in METADATA_ADDRESSES or ip.is_link_local:
            return f"{ip} is a link-local or cloud metadata address"
        if ip.is_loopback:
            return f"{ip} is a loopback address (this machine)"
        if ip.is_unspecified or ip.is_multicast or ip.is_reserved:
            return f"{ip} is not a unicast address"
        if ip.is_private or not ip.is_global:
            return f"{ip} is a private or internal address"
        return None

    def check_addresses(self, host: str, addresses: Iterable[str]) -> None:
        for address in addresses:
            reason = self.refusal(address)
            if reason:
                raise OutboundRefused(
                    f"{host} resolves to {address}: {reason}; requests on a user's behalf go only to public "
                    f"addresses (an admin may allow networks with {ENV})"
                )


def validate_url(url: Any, policy: OutboundPolicy, field_name: str) -> str:
    """An http(s) URL a user gives for the platform to call: refused early when its host is an IP
    literal or a name of this machine the policy refuses (the rest is checked at connect time)."""
    if not isinstance(url, str) or len(url) > 2048:
        raise InvalidInput("must be an http(s) URL of at most 2048 characters", field=field_name)
    try:
        parts = urlsplit(url)
        host, port = parts.hostname, parts.port
    except ValueError as e:
        raise InvalidInput(f"{url[:100]!r} is not a valid URL: {e}", field=field_name) from None
    if parts.scheme not in ("http", "https") or not host:
        raise InvalidInput(f"{url[:100]!r} is not an http(s) URL", field=field_name)
    del port  # parsed for validation: urlsplit raises on a port out of range
    literal = _ip_literal(host)
    if literal is None and (host == "localhost" or host.endswith(".localhost")):
        literal = "127.0.0.1"
    if literal is not None:
        reason = policy.refusal(literal)
        if reason:
            raise InvalidInput(
                f"{host} is refused: {reason}. Requests on your behalf go only to public addresses "
                "(an administrator may allow internal networks)", field=field_name,
            )
    return url


def _ip_literal(host: str) -> str | None:
    """The address a host that is an IP literal names, or None for a name. Besides the standard forms,
    the legacy IPv4 ones every resolver still takes (`127.1`, `0x7f000001`, `2130706433`, `0177.0.0.1`,
    `0`: inet_aton's), so that they are refused when saved, not only at connect time."""
    try:
        return str(ipaddress.ip_address(host.split("%", 1)[0]))
    except ValueError:
        pass
    if _LEGACY_IPV4.fullmatch(host):
        try:
            return str(ipaddress.IPv4Address(socket.inet_aton(host)))
        except OSError:
            return None
    return None


#: what inet_aton's legacy IPv4 forms are made of: 1 to 4 parts, each decimal, octal or 0x-hex
_LEGACY_IPV4 = re.compile(r"(?:0[xX][0-9a-fA-F]*|[0-9]+)(?:\.(?:0[xX][0-9a-fA-F]*|[0-9]+)){0,3}\.?")


class GuardedResolver(Resolver):
    """Resolves like the default resolver, then refuses addresses the policy refuses: the check
    happens on the address the connection is made to."""

    def initialize(self, policy: OutboundPolicy) -> None:
        self.policy = policy
        self._inner = DefaultExecutorResolver()

    async def resolve(self, host: str, port: int, family: socket.AddressFamily = socket.AF_UNSPEC) -> list:
        results = await self._inner.resolve(host, port, family)
        self.policy.check_addresses(host, [sockaddr[0] for _family, sockaddr in results])
        return results


def guarded_client(policy: OutboundPolicy) -> AsyncHTTPClient:
    """An HTTP client (a new instance: the shared one keeps the default resolver) for requests on a
    user's behalf."""
    return AsyncHTTPClient(force_instance=True, resolver=GuardedResolver(policy=policy))
