"""Requests on a user's behalf (webhooks) go only to public addresses unless the admin allows more:
checked when the URL is saved and again on the resolved address when the request is made."""

from __future__ import annotations

import asyncio
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest
from tornado.httpclient import HTTPRequest

from stratolab.errors import InvalidInput
from stratolab.platform.outbound import OutboundPolicy, OutboundRefused, guarded_client, validate_url

REFUSED = [
    "http://169.254.169.254/latest/meta-data",     # cloud metadata (link-local)
    "http://[fd00:ec2::254]/latest/meta-data",      # AWS's IPv6 metadata
    "http://100.100.100.200/latest/meta-data",      # Alibaba's metadata
    "http://127.0.0.1:8081/hub/api/users",          # the hub's own API
    "http://localhost/", "http://api.localhost/",
    "http://[::1]/", "http://[::ffff:169.254.169.254]/", "http://[::ffff:10.1.2.3]/",
    "http://10.0.0.5/", "http://172.16.3.4/", "http://192.168.1.1/", "http://100.64.0.1/",  # private, CGNAT
    "http://0.0.0.0/", "http://224.0.0.1/", "http://240.0.0.1/",
    # the legacy IPv4 forms resolvers still take (inet_aton's): the same addresses, spelt otherwise
    "http://0x7f000001/", "http://2130706433/", "http://127.1/", "http://0177.0.0.1/", "http://0/",
    "http://0xa9.0xfe.0xa9.0xfe/", "http://2852039166/",
]


@pytest.mark.parametrize("url", REFUSED)
def test_internal_addresses_are_refused_when_saved(url):
    with pytest.raises(InvalidInput) as e:
        validate_url(url, OutboundPolicy(), "notify.webhook")
    assert e.value.field == "notify.webhook" and "public" in e.value.message


@pytest.mark.parametrize("url", ["ftp://example.org/x", "http://", "not a url", "http://[::1", "http://h:99999/",
                                 "https://" + "a" * 3000 + ".org", None, 42, ["http://example.org"]])
def test_malformed_urls_are_400s(url):
    with pytest.raises(InvalidInput):
        validate_url(url, OutboundPolicy(), "notify.webhook")


def test_public_addresses_and_names_pass_and_the_admin_can_allow_networks():
    policy = OutboundPolicy()
    assert validate_url("https://hooks.example.org/T0/B1?x=1", policy, "f") == "https://hooks.example.org/T0/B1?x=1"
    assert validate_url("http://93.184.215.14:8080/", policy, "f")
    assert validate_url("http://deadbeef.example/", policy, "f") and validate_url("http://1e100.net/", policy, "f")
    allowed = OutboundPolicy.from_env({"STRATOLAB_OUTBOUND_ALLOW": "10.20.0.0/16, 127.0.0.1/32"})
    assert validate_url("http://10.20.1.2/chat", allowed, "f") and validate_url("http://127.0.0.1:9/", allowed, "f")
    with pytest.raises(InvalidInput):
        validate_url("http://10.21.0.1/", allowed, "f")
    with pytest.raises(InvalidInput):
        validate_url("http://169.254.169.254/", allowed, "f")  # allowing one network allows only it
    with pytest.raises(ValueError, match="STRATOLAB_OUTBOUND_ALLOW"):
        OutboundPolicy.from_env({"STRATOLAB_OUTBOUND_ALLOW": "intranet"})


class _Receiver(BaseHTTPRequestHandler):
    hits = 0

    def do_POST(self):
        type(self).hits += 1
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args):
        pass


def test_a_name_that_resolves_to_an_internal_address_is_refused_at_connect_time():
    """A host name passes validation (no DNS then); the connection is refused on the resolved address,
    so a name that later resolves to 127.0.0.1 (DNS rebinding) reaches nothing."""
    server = HTTPServer(("127.0.0.1", 0), _Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    url = f"http://localtest.me.invalid:{port}/hook"  # a name: accepted when saved

    async def send(policy: OutboundPolicy, target: str):
        client = guarded_client(policy)
        try:
            return await client.fetch(HTTPRequest(target, method="POST", body="{}"), raise_error=False)
        finally:
            client.close()

    try:
        assert validate_url(url, OutboundPolicy(), "f") == url
        with pytest.raises(OutboundRefused, match="loopback"):
            asyncio.run(send(OutboundPolicy(), f"http://localhost:{port}/hook"))
        assert _Receiver.hits == 0
        allowed = OutboundPolicy.from_env({"STRATOLAB_OUTBOUND_ALLOW": "127.0.0.1/32,::1/128"})
        assert asyncio.run(send(allowed, f"http://localhost:{port}/hook")).code == 200
        assert _Receiver.hits == 1
    finally:
        server.shutdown()
