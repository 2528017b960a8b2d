"""`stratolab usage` and `stratolab usage budgets`: options become the service's query, answers become
tables (JSON with --json), usage errors are status 2 before any call, service errors status 1.

The HTTP side is a small server on a real socket that answers as the usage service does (its report
built by `usage_report` from a real bill), so the request the CLI sends (path, query, token) is checked
as it goes over the wire; the service itself is tested in test_usage_service.py."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from stratolab.cli.main import build_parser, main
from stratolab.cli.usage_cmd import budgets_text, usage_query, usage_text
from stratolab.db.usage_ledger import Resources, Usage
from stratolab.usage.bill import compare, make_bill, usage_report
from stratolab.usage.budgets import RowsView, gauges, parse_budgets
from stratolab.usage.pricing import DEFAULT_SHEET

T0 = datetime(2026, 3, 1, tzinfo=UTC)
NOW = T0 + timedelta(days=10)
ROWS = [Usage(username="ann", kind="server", thing="gpu", started_at=T0, ended_at=T0 + timedelta(hours=3),
              seconds=10800, resources=Resources(4, 16, 1, "H100")),
        Usage(username="ann", kind="run", thing="nightly", started_at=T0 + timedelta(days=1),
              ended_at=T0 + timedelta(days=1, minutes=5), seconds=300, resources=Resources(2, 4))]


def report(by: str) -> dict:
    bill = make_bill(ROWS, DEFAULT_SHEET, T0, NOW, NOW)
    return usage_report(bill, compare(ROWS, DEFAULT_SHEET, T0, NOW, NOW), by, {"user": "ann"})


def budgets_answer() -> dict:
    bs = parse_budgets([{"name": "gpu-monthly", "resource": "gpu_hours", "limit": 2, "window": "30d"}])
    return {"budgets": [g.to_json() for g in gauges(bs, "ann", [], RowsView(ROWS), NOW)]}


class FakeUsageService(BaseHTTPRequestHandler):
    seen: list[tuple[str, dict, str | None]] = []

    def do_GET(self):
        parts = urlsplit(self.path)
        query = {k: v[0] for k, v in parse_qs(parts.query).items()}
        self.seen.append((parts.path, query, self.headers.get("Authorization")))
        if parts.path == "/services/usage/api/usage" and query.get("user") == "stranger":
            return self._answer(403, {"error": "you may see only your own usage"})
        if parts.path == "/services/usage/api/usage":
            return self._answer(200, report(query.get("by", "thing")))
        if parts.path == "/services/usage/api/budgets":
            return self._answer(200, budgets_answer())
        self._answer(404, {"error": "no such route"})

    def _answer(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def service(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeUsageService)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("STRATOLAB_URL", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.setenv("STRATOLAB_TOKEN", "tok-ann")
    FakeUsageService.seen = []
    yield FakeUsageService.seen
    server.shutdown()
    server.server_close()


def test_options_become_the_services_query():
    args = build_parser().parse_args(["usage", "--group", "ml", "--from", "2026-03-01", "--to", "now", "--by", "day",
                                      "--price-as", "spot"])
    assert usage_query(args) == {"group": "ml", "from": "2026-03-01", "to": "now", "by": "day", "price_as": "spot"}
    assert usage_query(build_parser().parse_args(["usage"])) == {"by": "thing"}


@pytest.mark.parametrize("argv", [["usage", "--by", "week"], ["usage", "--price-as", "cheap"]])
def test_bad_choices_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as e:
        build_parser().parse_args(argv)
    assert e.value.code == 2


def test_user_and_group_together_is_status_2_before_any_call(capsys, monkeypatch):
    monkeypatch.setenv("STRATOLAB_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("STRATOLAB_TOKEN", "unused")
    assert main(["usage", "--user", "ann", "--group", "ml"]) == 2
    assert "--user or --group" in capsys.readouterr().err


def test_usage_is_fetched_with_the_token_and_printed_as_a_table(service, capsys):
    assert main(["usage", "--from", "2026-03-01", "--price-as", "per-minute"]) == 0
    out = capsys.readouterr().out
    [(path, query, auth)] = service
    assert path == "/services/usage/api/usage" and auth == "token tok-ann"
    assert query == {"from": "2026-03-01", "by": "thing", "price_as": "per-minute"}
    assert "Usage of ann from 2026-03-01" in out
    assert "gpu" in out and "nightly" in out and "The same usage priced as: per-second" in out


def test_usage_as_json_is_the_services_answer(service, capsys):
    assert main(["usage", "--json", "--by", "resource"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["scope"] == {"user": "ann"} and data["breakdown"][0]["key"] == "cpu"


def test_budgets_table_and_json(service, capsys):
    assert main(["usage", "budgets"]) == 0
    out = capsys.readouterr().out
    assert "gpu-monthly" in out and "exceeded" in out and "UTC" in out
    assert service[-1][0] == "/services/usage/api/budgets"
    assert main(["usage", "budgets", "--json", "--user", "bob"]) == 0
    assert json.loads(capsys.readouterr().out)["budgets"][0]["name"] == "gpu-monthly"
    assert service[-1][1] == {"user": "bob"}


def test_a_refusal_is_the_services_message_and_status_1(service, capsys):
    assert main(["usage", "--user", "stranger"]) == 1
    assert "you may see only your own usage" in capsys.readouterr().err
    assert main(["usage", "--json", "--user", "stranger"]) == 1
    assert json.loads(capsys.readouterr().err)["status"] == 403


def test_an_unreachable_hub_is_one_line_and_status_1(capsys, monkeypatch):
    monkeypatch.setenv("STRATOLAB_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("STRATOLAB_TOKEN", "unused")
    assert main(["usage"]) == 1
    assert "cannot reach the hub at http://127.0.0.1:9" in capsys.readouterr().err


def test_each_breakdown_prints_its_rows():
    assert "RESOURCE" in usage_text(report("resource"), "resource")
    day_text = usage_text(report("day"), "day")
    assert "2026-03-01" in day_text and "2026-03-10" in day_text
    assert "(default server)" not in usage_text(report("thing"), "thing")
    assert budgets_text({"budgets": []}) == "No budgets apply to you."


def test_a_pipelines_steps_are_one_line_of_kind_pipeline():
    steps = [Usage(username="ann", kind="pipeline_step", thing="churn", thing_id=f"{i}/7/{step}",
                   started_at=T0 + timedelta(hours=i), ended_at=T0 + timedelta(hours=i, minutes=10), seconds=600,
                   resources=Resources(2, 4)) for i, step in enumerate(("prepare", "train"), start=1)]
    rows = ROWS + steps
    bill = make_bill(rows, DEFAULT_SHEET, T0, NOW, NOW)
    text = usage_text(usage_report(bill, compare(rows, DEFAULT_SHEET, T0, NOW, NOW), "thing", {"user": "ann"}),
                      "thing")
    [line] = [line for line in text.splitlines() if line.startswith("churn")]
    assert line.split()[:3] == ["churn", "pipeline", "0.67"], text  # 2 steps x 10 min x 2 cores
