"""Event triggers in JupyterLab: the server extension's proxy to the triggers service
(`{base_url}stratolab/triggers/api/...`) and, in a real Chromium, an upload trigger added in a
function's Triggers block, a PNG uploaded with the file browser into its inbox, the function's result
file appearing beside it and the event counted; a failing file dead-lettered and redriven from the
panel."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import struct
import zlib
from pathlib import Path

import pytest
import requests

from jobs_support import wait_for
from stratolab.functions.analysis import plan_capture, read_cells
from stratolab.functions.bundle import build_bundle
from stratolab.functions.client import pack
from stratolab.server.functions_proxy import forwardable_path
from support import CHROMIUM, lab_page, screenshots

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("stratolab.triggers.service.app") is None,
    reason="the triggers service (stratolab.triggers.service.app) is not there yet",
)

#: reads an uploaded file's bytes; refuses what is not a PNG (those end in the dead-letter queue)
DIGEST_CELLS = [
    "import hashlib",
    "def digest(data, event):\n"
    "    if not data.startswith(b'\\x89PNG'):\n"
    "        raise ValueError('not a PNG: ' + event.get('subject', '?'))\n"
    "    return {'size': len(data), 'sha256': hashlib.sha256(data).hexdigest(), 'subject': event.get('subject')}\n",
]


def digest_bundle(tmp: Path) -> bytes:
    ns: dict = {}
    exec("\n".join(DIGEST_CELLS), ns)
    build_bundle(plan_capture("digest", read_cells(DIGEST_CELLS), live_names=set(ns)), ns, tmp / "digest")
    return pack(tmp / "digest")


def deploy_digest(hub, user, tmp: Path) -> None:
    r = requests.post(f"{hub.url}/services/functions/api/functions/digest", data=digest_bundle(tmp),
                      headers={**user.headers, "Content-Type": "application/gzip"}, timeout=120)
    assert r.status_code == 201, r.text


def png(width: int = 4, height: int = 3) -> bytes:
    """A small valid PNG (8-bit RGB, a gradient), written with the standard library."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = b"".join(b"\x00" + bytes(v for x in range(width) for v in (x * 60 % 256, y * 80 % 256, 128))
                    for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b"")


# --- pure parts ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path, expected", [
    ("api/triggers", "api/triggers"),
    ("api/dlq/redrive", "api/dlq/redrive"),
    ("ingress/alice/3", None),
    ("upload/alice/3/cat.png", None),
    ("metrics", None),
    ("api/../metrics", None),
])
def test_only_the_triggers_api_is_forwarded(path, expected):
    assert forwardable_path(path, ("api/",)) == expected


def test_the_png_is_one():
    data = png()
    assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82")


# --- the proxy in a real user server, behind a real hub ---------------------------------------------


def test_proxy_manages_triggers_through_the_users_server(hub, tmp_path):
    user = hub.create_user()
    deploy_digest(hub, user, tmp_path)
    assert hub.spawn(user, {"profile": "cpu"}).status_code in (201, 202)
    try:
        base = f"{hub.url}/user/{user.name}/stratolab/triggers/api/"
        r = requests.post(base + "triggers", json={"function": "digest", "kind": "cloudevents"},
                          headers=user.headers, timeout=60)
        assert r.status_code == 201, r.text
        trigger = r.json()
        assert trigger["key"] and trigger["ingress_url"].endswith(f"/services/triggers/ingress/{user.name}/{trigger['id']}")

        r = requests.get(base + "triggers?function=digest", headers=user.headers, timeout=60)
        assert r.status_code == 200 and [t["id"] for t in r.json()["triggers"]] == [trigger["id"]]
        assert "key" not in r.json()["triggers"][0]  # shown once
        r = requests.patch(base + f"triggers/{trigger['id']}", json={"paused": True}, headers=user.headers, timeout=60)
        assert r.status_code == 200 and r.json()["paused"] is True

        # the service's refusals pass through with the field they name (the panel shows them beside it)
        r = requests.post(base + "triggers", json={"function": "digest", "kind": "mqtt", "source": {"filter": "a/#/b"}},
                          headers=user.headers, timeout=60)
        assert r.status_code == 400 and r.json()["field"] == "source.filter", r.text
        r = requests.get(base + "dlq?function=digest", headers=user.headers, timeout=60)
        assert r.status_code == 200 and r.json() == {"events": []}

        # a deletion's 204 passes through without a body; only api/ is forwarded
        r = requests.delete(base + f"triggers/{trigger['id']}", headers=user.headers, timeout=60)
        assert r.status_code == 204 and r.content == b""
        other = f"{hub.url}/user/{user.name}/stratolab/triggers/"
        assert requests.get(other + "metrics", headers=user.headers, timeout=60).status_code == 404
        assert requests.post(other + f"ingress/{user.name}/1", headers=user.headers, timeout=60).status_code == 404

        # without credentials: refused (or sent to log in), never forwarded
        r = requests.get(base + "triggers", allow_redirects=False, timeout=60)
        assert r.status_code in (401, 403, 302), r.status_code
    finally:
        hub.stop_server(user)


# --- in a real Chromium -----------------------------------------------------------------------------


def user_triggers(hub, user) -> list[dict]:
    r = requests.get(f"{hub.url}/services/triggers/api/triggers?function=digest", headers=user.headers, timeout=30)
    assert r.status_code == 200, r.text
    return r.json()["triggers"]


STRATOLAB_TAB = ".jp-SideBar [data-id=stratolab-panel], .jp-SideBar li[title*=Stratolab]"
FILES_TAB = ".jp-SideBar [data-id=filebrowser], .jp-SideBar li[title*='File Browser']"


def upload_with_file_browser(page, path: Path) -> None:
    """The file browser's Upload button (a file chooser) with `path`, into the folder it shows."""
    with page.expect_file_chooser() as chooser:
        page.locator(".jp-FileBrowser .jp-id-upload").first.click()
    chooser.value.set_files(str(path))


@pytest.mark.browser
@pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed")
def test_add_an_upload_trigger_upload_a_png_and_see_the_result_and_the_count(hub, tmp_path):
    user = hub.create_user()
    deploy_digest(hub, user, tmp_path)
    shot = screenshots(tmp_path)
    image = tmp_path / "dot.png"
    image.write_bytes(png())
    not_png = tmp_path / "notes.txt"
    not_png.write_text("no pixels here\n")

    with lab_page(hub, user, tmp_path) as page:
        page.locator(STRATOLAB_TAB).first.click()
        card = page.locator("[data-testid=stratolab-functions] [data-testid=stratolab-function-digest]")
        card.wait_for(state="visible", timeout=30_000)
        prefix = "stratolab-function-digest-triggers"
        page.click(f"[data-testid={prefix}-summary]")
        page.wait_for_selector(f"[data-testid={prefix}-empty]", timeout=30_000)

        # Add trigger: a refusal of the service is shown beside the field it names, and the dialog stays
        page.click(f"[data-testid={prefix}-add]")
        page.select_option("[data-testid=stratolab-trigger-kind]", "mqtt")
        page.fill("[data-testid=stratolab-trigger-mqtt-filter]", "sensors/#/x")
        dialog = page.locator(".jp-Dialog")
        dialog.get_by_role("button", name="Add trigger", exact=True).click()
        error = page.locator("[data-testid=stratolab-trigger-error-source-filter]")
        error.wait_for(state="visible", timeout=30_000)
        assert "#" in error.inner_text(), error.inner_text()
        shot(page, "triggers-refused")

        # ... then an upload trigger, as the form starts (inbox/digest, results beside each file),
        # with no retries so that a file the function refuses is dead-lettered at once
        page.select_option("[data-testid=stratolab-trigger-kind]", "upload")
        assert page.locator("[data-testid=stratolab-trigger-upload-folder]").input_value() == "inbox/digest"
        page.click("[data-testid=stratolab-trigger-advanced] summary")
        page.fill("[data-testid=stratolab-trigger-retries]", "0")
        dialog.get_by_role("button", name="Add trigger", exact=True).click()
        dialog.wait_for(state="detached", timeout=30_000)

        [trigger] = user_triggers(hub, user)
        assert trigger["kind"] == "upload" and trigger["source"]["folder"] == "inbox/digest" and trigger["retries"] == 0
        t = f"{prefix}-{trigger['id']}"
        page.wait_for_selector(f"[data-testid={t}]", timeout=30_000)
        assert page.locator(f"[data-testid={t}-inbox]").inner_text() == "~/inbox/digest/"
        page.wait_for_selector(f"[data-testid={t}-state]:text-matches('^active')", timeout=30_000)
        # its key, shown once (for senders of HTTP PUTs), until hidden
        assert len(page.locator(f"[data-testid={t}-key]").input_value()) >= 16
        shot(page, "triggers-added")
        page.click(f"[data-testid={t}-key-hide]")
        page.wait_for_selector(f"[data-testid={t}-key]", state="detached", timeout=30_000)

        # "Open folder" shows the inbox in the file browser; its Upload button puts the PNG there
        page.click(f"[data-testid={t}-action-open-folder]")
        page.wait_for_selector(".jp-FileBrowser .jp-BreadCrumbs:has-text('digest')", timeout=30_000)
        upload_with_file_browser(page, image)
        listing = page.locator(".jp-FileBrowser .jp-DirListing-content")
        listing.locator(".jp-DirListing-item", has_text="dot.png").first.wait_for(timeout=30_000)

        # the function's result appears beside it (the file browser refreshes its folder by itself)
        result = listing.locator(".jp-DirListing-item", has_text="dot.result.json")
        try:
            result.first.wait_for(timeout=120_000)
        except Exception:
            shot(page, "triggers-no-result")
            raise
        r = requests.get(f"{hub.url}/user/{user.name}/api/contents/inbox/digest/dot.result.json?content=1",
                         headers=user.headers, timeout=30)
        assert r.status_code == 200, r.text
        answer = json.loads(r.json()["content"]) if isinstance(r.json()["content"], str) else r.json()["content"]
        assert answer["size"] == len(png()) and answer["sha256"] == hashlib.sha256(png()).hexdigest(), answer
        assert answer["subject"] == "inbox/digest/dot.png"

        # ... and the event is counted in the Triggers block (it polls while open and shown)
        page.locator(STRATOLAB_TAB).first.click()
        page.wait_for_selector(f"[data-testid={t}-counts]:has-text('1 done')", timeout=60_000)
        shot(page, "triggers-done")

        # a file the function refuses: dead-lettered (no retries), shown with its error, redriven
        page.locator(FILES_TAB).first.click()
        upload_with_file_browser(page, not_png)
        listing.locator(".jp-DirListing-item", has_text="notes.txt").first.wait_for(timeout=30_000)
        page.locator(STRATOLAB_TAB).first.click()
        page.wait_for_selector(f"[data-testid={t}-counts]:has-text('1 dead')", timeout=120_000)
        dlq = f"{prefix}-dlq"
        page.click(f"[data-testid={dlq}-summary]")
        dead = page.locator(f"[data-testid={dlq}] .jp-Stratolab-deadLetter")
        dead.first.wait_for(timeout=30_000)
        assert dead.count() == 1
        # the function's own message stays in its logs; the error names its id
        text = dead.first.inner_text()
        assert "inbox/digest/notes.txt" in text and "the function raised an error" in text and "error id" in text, text
        event_id = dead.first.get_attribute("data-testid").rsplit("-", 1)[1]
        shot(page, "triggers-dead-letter")
        events = f"{hub.url}/services/triggers/api/events/{event_id}"
        before = requests.get(events, headers=user.headers, timeout=30).json()
        assert before["state"] == "dead" and before["attempts"] == 1, before
        page.click(f"[data-testid={dlq}-{event_id}-redrive]")

        def redelivered() -> dict | None:
            event = requests.get(events, headers=user.headers, timeout=30).json()
            # redriven: back to pending with a fresh count of tries, then dead again (one more failure)
            return event if event["state"] == "dead" and event["finished_at"] != before["finished_at"] else None

        event = wait_for(redelivered, timeout=60, what="the redriven event to be tried again")
        assert event["attempts"] == 1 and "the function raised an error" in (event["error"] or ""), event
        fn = requests.get(f"{hub.url}/services/functions/api/functions/digest", headers=user.headers, timeout=30).json()
        assert fn["stats"]["errors"] == 2, fn["stats"]  # the function was called again

        # the Functions tab's detail shows the same triggers (open there), with the dead letter counted
        page.click("[data-testid=stratolab-functions-open-tab]")
        page.click(f"[data-testid=stratolab-tab-functions-row-{user.name}-digest]")
        detail = "stratolab-tab-functions-detail-triggers"
        page.wait_for_selector(f"[data-testid={detail}-{trigger['id']}-counts]:has-text('1 done')", timeout=30_000)
        assert "1 dead" in page.locator(f"[data-testid={detail}-{trigger['id']}-counts]").inner_text()
        assert page.locator(f"[data-testid={detail}-dlq-summary]").inner_text() == "Dead letters (1)"
        shot(page, "triggers-tab")

        # pause, then delete (confirmed): the block says there are none
        page.click(f"[data-testid={t}-action-pause]")
        page.wait_for_selector(f"[data-testid={t}-state]:text-is('paused')", timeout=30_000)
        assert user_triggers(hub, user)[0]["paused"] is True
        page.click(f"[data-testid={t}-action-delete]")
        page.locator(".jp-Dialog").get_by_role("button", name="Delete", exact=True).click()
        page.wait_for_selector(f"[data-testid={prefix}-empty]", timeout=30_000)
        assert user_triggers(hub, user) == []
    hub.stop_server(user)

