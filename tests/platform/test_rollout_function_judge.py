"""A user's judge function, the pure part: its check's JSON, the document it gets, its answer as a result."""

from __future__ import annotations

import json

import pytest

from stratolab.errors import InvalidInput
from stratolab.platform.rollout import function_judge
from stratolab.platform.rollout.judge import Check, Verdict, VersionData, check_from_json, checks_from_json, judge


def test_a_judge_check_reads_back_from_its_own_json_and_refuses_what_does_not_apply():
    checks = checks_from_json(
        [
            {"judge": "my-judge"},
            {
                "judge": {"function": "other", "version": 2, "timeout": 5, "fields": {"conf": "scores.confidence"}},
                "critical": False,
            },
        ]
    )
    assert checks[0].name == "judge:my-judge" and checks[0].family == "judge" and checks[0].judge_timeout_s == 30
    assert checks[1].judge_version == 2 and checks[1].judge_fields == {"conf": "scores.confidence"}
    for check in checks:
        assert check_from_json(json.loads(json.dumps(check.to_json()))) == check
    assert Check(**checks[1].__dict__) == checks[1]
    for raw, field in (
        ({"judge": "bob/x"}, "checks[0].judge.function"),
        ({"judge": "x", "min": 1}, "checks[0].min"),
        ({"judge": {"function": "x", "version": 0}}, "checks[0].judge.version"),
        ({"judge": {"function": "x", "timeout": 601}}, "checks[0].judge.timeout"),
        ({"judge": {"function": "x", "fields": {"a": "no spaces"}}}, "checks[0].judge.fields"),
        ({"judge": "x", "metric": "latency"}, "checks[0].metric"),
        ({"judge": []}, "checks[0].judge"),
    ):
        with pytest.raises(InvalidInput) as e:
            checks_from_json([raw])
        assert e.value.field == field, raw


def test_the_document_and_the_answer():
    check = checks_from_json([{"judge": "j", "weight": 2}])[0]
    data = VersionData(
        latencies_ms=[float(i) for i in range(3000)],
        requests=3000,
        errors=30,
        feedback=10,
        correct=9,
        custom={"conf": [0.5] * 2500},
    )
    doc = function_judge.document(check, {"step": 1, "weight": 25}, (1, data), (2, VersionData()))
    base, cand = doc["baseline"], doc["candidate"]
    assert (base["version"], base["error_rate"], base["accuracy"], base["latency_samples"]) == (1, 0.01, 0.9, 3000)
    assert len(base["latencies_ms"]) == 2000 and base["latencies_ms"][-1] == 2999.0
    assert base["custom"]["conf"]["count"] == 2500 and len(base["custom"]["conf"]["samples"]) == 2000
    assert cand["latency_ms"] is None and cand["error_rate"] is None and doc["rollout"]["weight"] == 25
    json.dumps(doc, allow_nan=False)

    result = function_judge.result_from_answer(check, {"pass": False, "reason": "worse", "value": 0.3})
    assert (result.verdict, result.reason, result.candidate, result.weight) == (Verdict.FAIL, "judge:j: worse", 0.3, 2)
    assert function_judge.result_from_answer(check, {"pass": None, "reason": "wait"}).verdict is Verdict.NODATA
    for bad in (
        {"pass": "yes", "reason": "x"},
        {"reason": "x"},
        {"pass": True},
        {"pass": True, "reason": "x", "value": "high"},
        [True],
        "pass",
    ):
        result = function_judge.result_from_answer(check, bad)
        assert result.verdict is Verdict.FAIL and "malformed" in result.reason, bad

    # the answer weighs as any check; without one the judge check says nodata
    ok = function_judge.result_from_answer(check, {"pass": True, "reason": "fine"})
    assert judge([check], data, data, answers={check.name: ok}).verdict is Verdict.PASS
    assert judge([check], data, data).verdict is Verdict.NODATA
    assert judge([check], data, data, answers={check.name: function_judge.failed(check, "boom")}).verdict is Verdict.FAIL
