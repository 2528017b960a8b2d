"""Cron and time-zone arithmetic (clock changes included), parameters, and request validation: pure."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime

import pytest

from stratolab.errors import InvalidInput
from stratolab.jobs.parameters import inspect_parameters, validate_parameters
from stratolab.jobs.spec import notebook_path, validate_notify, validate_schedule
from stratolab.platform import cron

BERLIN = cron.parse_timezone("Europe/Berlin")
NEW_YORK = cron.parse_timezone("America/New_York")


def local(times, tz):
    return [t.astimezone(tz).strftime("%Y-%m-%d %H:%M %Z") for t in times]


def test_weekday_mornings_in_berlin():
    after = datetime(2026, 11, 27, 12, 0, tzinfo=UTC)  # a Friday
    times = cron.next_times("0 7 * * 1-5", BERLIN, after, 3)
    assert local(times, BERLIN) == ["2026-11-30 07:00 CET", "2026-12-01 07:00 CET", "2026-12-02 07:00 CET"]
    assert times[0] == datetime(2026, 11, 30, 6, 0, tzinfo=UTC)
    assert cron.describe("0 7 * * 1-5", "Europe/Berlin") == "At 07:00, Monday through Friday (Europe/Berlin)"


def test_daily_time_keeps_wall_clock_across_spring_forward():
    # Europe/Berlin: 2026-03-29 02:00 CET -> 03:00 CEST. A daily 07:00 stays 07:00 local.
    times = cron.next_times("0 7 * * *", BERLIN, datetime(2026, 3, 27, 12, tzinfo=UTC), 3)
    assert local(times, BERLIN) == ["2026-03-28 07:00 CET", "2026-03-29 07:00 CEST", "2026-03-30 07:00 CEST"]
    assert (times[2] - times[1]).total_seconds() == 24 * 3600
    assert (times[1] - times[0]).total_seconds() == 23 * 3600


def test_skipped_wall_time_runs_after_the_change():
    # 02:30 does not exist on 2026-03-29 in Berlin: it runs at 03:30 CEST, once.
    times = cron.next_times("30 2 * * *", BERLIN, datetime(2026, 3, 28, 12, tzinfo=UTC), 3)
    assert local(times, BERLIN) == ["2026-03-29 03:30 CEST", "2026-03-30 02:30 CEST", "2026-03-31 02:30 CEST"]


def test_every_fifteen_minutes_through_the_gap_has_no_duplicates():
    times = cron.next_times("*/15 * * * *", BERLIN, datetime(2026, 3, 29, 0, 30, tzinfo=UTC), 4)
    # 01:45 CET, then the gap (02:00-02:59 do not exist), then 03:00 CEST: real 15-minute steps
    assert local(times, BERLIN) == ["2026-03-29 01:45 CET", "2026-03-29 03:00 CEST", "2026-03-29 03:15 CEST",
                                    "2026-03-29 03:30 CEST"]
    assert len(set(times)) == 4


def test_repeated_wall_time_runs_once_for_daily_jobs():
    # Berlin 2026-10-25: 03:00 CEST -> 02:00 CET; 02:30 happens twice, a daily job runs once.
    times = cron.next_times("30 2 * * *", BERLIN, datetime(2026, 10, 24, 12, tzinfo=UTC), 2)
    assert local(times, BERLIN) == ["2026-10-25 02:30 CEST", "2026-10-26 02:30 CET"]


def test_hourly_jobs_run_in_both_repeated_hours():
    times = cron.next_times("0 * * * *", BERLIN, datetime(2026, 10, 24, 22, 30, tzinfo=UTC), 4)
    # 01:00 CEST, 02:00 CEST, 02:00 CET (the hour again), 03:00 CET: every real hour
    assert local(times, BERLIN) == ["2026-10-25 01:00 CEST", "2026-10-25 02:00 CEST", "2026-10-25 02:00 CET",
                                    "2026-10-25 03:00 CET"]
    gaps = {(b - a).total_seconds() for a, b in itertools.pairwise(times)}
    assert gaps == {3600}


def test_new_york_fall_back_daily():
    times = cron.next_times("30 1 * * *", NEW_YORK, datetime(2026, 10, 31, 12, tzinfo=UTC), 2)
    assert local(times, NEW_YORK) == ["2026-11-01 01:30 EDT", "2026-11-02 01:30 EST"]


def test_seconds_field_and_latest_missed_time():
    after = datetime(2026, 1, 1, 0, 0, 0, tzinfo=UTC)
    times = cron.next_times("*/10 * * * * *", cron.parse_timezone("UTC"), after, 3)
    assert [t.second for t in times] == [10, 20, 30]
    latest = cron.latest_time_at_or_before("0 * * * *", cron.parse_timezone("UTC"),
                                           datetime(2026, 1, 1, 1, 0, tzinfo=UTC), datetime(2026, 1, 1, 5, 30, tzinfo=UTC))
    assert latest == datetime(2026, 1, 1, 5, 0, tzinfo=UTC)


@pytest.mark.parametrize("expr, fragment", [
    ("61 * * * *", "not a valid cron expression"),
    ("* * *", "has 3 fields"),
    ("0 0 30 2 *", "never fires"),
    ("", "a cron expression is needed"),
])
def test_bad_cron_names_the_field(expr, fragment):
    with pytest.raises(InvalidInput) as e:
        cron.validate_cron(expr)
    assert fragment in str(e.value) and e.value.field == "cron"


@pytest.mark.parametrize("name", ["Mars/Olympus", "../etc/passwd", "Europe\\Berlin", ""])
def test_unknown_timezone(name):
    if name == "":
        assert cron.parse_timezone(name).key == "UTC"
        return
    with pytest.raises(InvalidInput) as e:
        cron.parse_timezone(name)
    assert e.value.field == "timezone"


NB = {
    "cells": [
        {"cell_type": "markdown", "metadata": {}, "source": "# Report"},
        {"cell_type": "code", "metadata": {"tags": ["parameters"]}, "outputs": [], "execution_count": None,
         "source": "n = 3  # how many\nrate = 0.5\ntitle = 'x'\nflag = False\nitems = [1, 2]\nopts = {'a': 1}\n"
                   "nothing = None\nexpr = list(range(3))\n"},
    ],
    "metadata": {"kernelspec": {"name": "python3", "language": "python", "display_name": "Python 3"}},
    "nbformat": 4, "nbformat_minor": 5,
}


def test_parameters_are_read_the_papermill_way():
    declared = {p["name"]: (p["type"], p["default"]) for p in inspect_parameters(NB)}
    assert declared == {
        "n": ("int", 3), "rate": ("float", 0.5), "title": ("str", "x"), "flag": ("bool", False),
        "items": ("list", [1, 2]), "opts": ("dict", {"a": 1}), "nothing": ("None", None), "expr": ("any", "list(range(3))"),
    }
    assert inspect_parameters({"cells": [], "metadata": {}}) == []


def test_parameter_values_are_typed_like_the_defaults():
    declared = inspect_parameters(NB)
    assert validate_parameters({"n": 5, "rate": 2, "title": "y", "flag": True}, declared) == {
        "n": 5, "rate": 2.0, "title": "y", "flag": True}
    # text (the CLI's --param k=v) is converted to the parameter's type
    assert validate_parameters({"n": "7", "rate": "1e-3", "flag": "true", "items": "[3]", "opts": '{"b": 2}'}, declared) == {
        "n": 7, "rate": 0.001, "flag": True, "items": [3], "opts": {"b": 2}}
    for bad, field in [({"n": "seven"}, "parameters.n"), ({"n": 1.5}, "parameters.n"), ({"title": 3}, "parameters.title"),
                       ({"flag": "maybe"}, "parameters.flag"), ({"items": {"a": 1}}, "parameters.items"),
                       ({"unknown": 1}, "parameters.unknown")]:
        with pytest.raises(InvalidInput) as e:
            validate_parameters(bad, declared)
        assert e.value.field == field


@pytest.mark.parametrize("raw", ["../x.ipynb", "/etc/passwd.ipynb", "a/../../b.ipynb", "~/x.ipynb", "notes.txt", ""])
def test_paths_outside_the_home_are_refused(raw):
    with pytest.raises(InvalidInput) as e:
        notebook_path(raw)
    assert e.value.field == "notebook"


def test_paths_are_normalised():
    assert notebook_path("./reports//daily.ipynb") == "reports/daily.ipynb"


def test_schedule_validation_names_fields():
    ok = validate_schedule({"notebook": "a.ipynb", "cron": "0 7 * * 1-5", "timezone": "Europe/Berlin", "retries": 2,
                            "output_formats": ["html"]}, partial=False, smtp_configured=False)
    assert ok["cron"] == "0 7 * * 1-5" and ok["output_formats"] == ["ipynb", "html"]
    cases = [
        ({"notebook": "a.ipynb", "timezone": "Nowhere/City"}, "timezone"),
        ({"notebook": "a.ipynb", "retries": -1}, "retries"),
        ({"notebook": "a.ipynb", "retries": 11}, "retries"),
        ({"notebook": "a.ipynb", "timeout": "soon"}, "timeout"),
        ({"notebook": "a.ipynb", "missed": "sometimes"}, "missed"),
        ({"notebook": "a.ipynb", "output_formats": ["pdf"]}, "output_formats"),
        ({"notebook": "a.ipynb", "content": {"cells": "no"}}, "content"),
        ({"notebook": "a.ipynb", "colour": "red"}, "colour"),
        ({"notebook": "a.ipynb", "name": "../x"}, "name"),
    ]
    for body, field in cases:
        with pytest.raises(InvalidInput) as e:
            validate_schedule(body, partial=False, smtp_configured=False)
        assert e.value.field == field, (body, e.value)


def test_notification_validation():
    assert validate_notify({"webhook": "https://example.org/h"}, False) == {"webhook": "https://example.org/h", "on": ["failure"]}
    with pytest.raises(InvalidInput) as e:
        validate_notify({"webhook": "file:///etc/passwd"}, False)
    assert e.value.field == "notify.webhook"
    with pytest.raises(InvalidInput) as e:
        validate_notify({"email": ["a@example.org"]}, False)
    assert e.value.field == "notify.email" and "STRATOLAB_SMTP_HOST" in str(e.value)
    assert validate_notify({"email": "a@example.org, b@example.org", "on": ["success", "failure"]}, True) == {
        "email": ["a@example.org", "b@example.org"], "on": ["failure", "success"]}
