"""The judge on synthetic samples: a clearly worse candidate fails, an equal one passes, a small sample
waits; thresholds, custom metrics, the score, and checks read from JSON."""

from __future__ import annotations

import json

import numpy as np
import pytest

from stratolab.errors import InvalidInput
from stratolab.platform.rollout.judge import (
    Check,
    Verdict,
    VersionData,
    check_from_json,
    checks_from_json,
    default_checks,
    evaluate,
    flagger_style_checks,
    judge,
)


def version(rng: np.random.Generator, n: int, *, error_rate: float = 0.01, slower: float = 1.0,
            accuracy: float | None = None, labelled: int = 0) -> VersionData:
    correct = int(rng.binomial(labelled, accuracy)) if accuracy is not None else 0
    return VersionData(latencies_ms=rng.lognormal(3.5, 0.5, n) * slower, requests=n,
                       errors=int(rng.binomial(n, error_rate)), feedback=labelled, correct=correct)


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(20261206)


def test_a_clearly_slower_candidate_fails_latency(rng):
    result = evaluate(Check("latency", "latency"), version(rng, 500, slower=1.3), version(rng, 4500))
    assert result.verdict is Verdict.FAIL
    assert result.p_value < 1e-6 and result.effect_size > 0.6
    assert result.relative_change == pytest.approx(0.3, abs=0.12)
    assert result.samples_candidate == 500 and result.samples_baseline == 4500
    assert result.method == "mann-whitney (asymptotic)" and "p99" in result.reason


def test_an_equal_candidate_passes(rng):
    judgement = judge(default_checks(), version(rng, 500), version(rng, 4500))
    assert judgement.verdict is Verdict.PASS and judgement.score == 100.0
    assert all(r.verdict is Verdict.PASS for r in judgement.results)


def test_a_faster_candidate_is_never_failed_for_it(rng):
    """The tests are one-sided: being better is not a difference to fear."""
    judgement = judge(default_checks(), version(rng, 800, slower=0.5, error_rate=0.0), version(rng, 4000))
    assert judgement.verdict is Verdict.PASS


def test_a_small_sample_waits(rng):
    judgement = judge(default_checks(), version(rng, 20, slower=3.0, error_rate=0.5), version(rng, 4500))
    assert judgement.verdict is Verdict.NODATA and judgement.score is None
    assert {r.verdict for r in judgement.results} == {Verdict.NODATA}
    assert "20 candidate" in judgement.results[0].reason


def test_a_higher_error_rate_fails_and_a_tiny_one_is_tolerated(rng):
    check = Check("errors", "error_rate")
    worse = evaluate(check, VersionData(requests=1000, errors=30), VersionData(requests=9000, errors=90))
    assert worse.verdict is Verdict.FAIL and worse.method == "z-test"
    assert worse.candidate == pytest.approx(0.03) and worse.baseline == pytest.approx(0.01)
    assert worse.effect_size == pytest.approx(0.02) and worse.p_value < 1e-6
    # significant with this much data, but by less than the half point tolerated
    slight = evaluate(check, VersionData(requests=200_000, errors=2600), VersionData(requests=200_000, errors=2000))
    assert slight.p_value < 0.05 and slight.verdict is Verdict.PASS


def test_few_errors_use_fisher(rng):
    result = evaluate(Check("errors", "error_rate", min_samples=50), VersionData(requests=60, errors=4),
                      VersionData(requests=600, errors=1))
    assert result.method == "fisher" and result.verdict is Verdict.FAIL


def test_accuracy_from_feedback(rng):
    check = Check("accuracy", "accuracy")
    worse = evaluate(check, VersionData(feedback=800, correct=640), VersionData(feedback=2000, correct=1800))
    assert worse.verdict is Verdict.FAIL and worse.candidate == pytest.approx(0.8)
    assert evaluate(check, VersionData(feedback=800, correct=730), VersionData(feedback=2000, correct=1800)).verdict \
        is Verdict.PASS
    assert evaluate(check, VersionData(feedback=20, correct=1), VersionData(feedback=2000, correct=1800)).verdict \
        is Verdict.NODATA


def test_flagger_style_thresholds(rng):
    checks = flagger_style_checks(min_success_rate=0.99, max_p99_ms=200)
    good = judge(checks, VersionData(latencies_ms=np.full(200, 50.0), requests=200, errors=1), VersionData())
    assert good.verdict is Verdict.PASS
    bad = judge(checks, VersionData(latencies_ms=np.full(200, 250.0), requests=200, errors=5), VersionData())
    assert bad.verdict is Verdict.FAIL
    success, duration = bad.results
    assert success.candidate == pytest.approx(0.975) and "below the minimum 0.99" in success.reason
    assert duration.candidate == 250.0 and "above the maximum 200 ms" in duration.reason


def test_custom_metrics_as_samples_and_as_values(rng):
    samples = Check("confidence", "custom:confidence", higher_is_better=True)
    lower = VersionData(custom={"confidence": rng.normal(0.6, 0.1, 300)})
    usual = VersionData(custom={"confidence": rng.normal(0.8, 0.1, 3000)})
    result = evaluate(samples, lower, usual)
    assert result.verdict is Verdict.FAIL and result.effect_size < 0.2
    assert evaluate(samples, usual, usual).verdict is Verdict.PASS
    one_value = Check("cost", "custom:cost", test="threshold", max=2.0, min_samples=1)
    assert evaluate(one_value, VersionData(custom={"cost": 2.5}), VersionData()).verdict is Verdict.FAIL
    assert evaluate(one_value, VersionData(custom={"cost": 1.5}), VersionData()).verdict is Verdict.PASS
    assert evaluate(one_value, VersionData(), VersionData()).verdict is Verdict.NODATA
    with pytest.raises(InvalidInput):
        evaluate(Check("cost", "custom:cost"), VersionData(custom={"cost": 2.5}), VersionData(custom={"cost": 2.0}))


def test_score_and_critical_checks(rng):
    candidate, baseline = version(rng, 500, slower=1.3), version(rng, 4500)
    soft = [Check("latency", "latency", critical=False), Check("errors", "error_rate"),
            Check("p99", "latency", test="threshold", max=10_000), Check("rate", "success_rate", test="threshold",
                                                                          min=0.9)]
    judgement = judge(soft, candidate, baseline)
    assert judgement.score == 75.0 and judgement.verdict is Verdict.PASS
    assert judge(soft, candidate, baseline, min_score=80).verdict is Verdict.FAIL
    hard = [Check("latency", "latency"), *soft[1:]]
    assert judge(hard, candidate, baseline).verdict is Verdict.FAIL
    # a failure decides even while another check still waits for data
    waiting = [Check("latency", "latency"), Check("accuracy", "accuracy")]
    assert judge(waiting, candidate, baseline).verdict is Verdict.FAIL


def test_judgement_is_json_with_its_numbers(rng):
    judgement = judge(default_checks(), version(rng, 500, slower=1.3), version(rng, 4500))
    data = json.loads(json.dumps(judgement.to_json(), allow_nan=False))
    assert data["verdict"] == "fail"
    latency = next(m for m in data["metrics"] if m["metric"] == "latency")
    assert {"statistic", "p_value", "effect_size", "samples_candidate", "samples_baseline", "candidate",
            "baseline", "reason"} <= set(latency)


def test_checks_from_json():
    checks = checks_from_json([
        {"metric": "error_rate", "alpha": 0.01, "tolerance": 0.002},
        {"name": "p99", "metric": "latency", "test": "threshold", "max": 300},
        {"metric": "custom:confidence", "higher_is_better": True, "min_samples": 30, "weight": 2},
    ])
    assert checks[0] == Check("error-rate", "error_rate", alpha=0.01, tolerance=0.002)
    assert checks[1].max == 300 and checks[1].test == "threshold"
    assert checks[2].higher_is_better and checks[2].weight == 2 and checks[2].floor == 30
    assert check_from_json(checks[0].to_json()) == checks[0]


@pytest.mark.parametrize("raw,field", [
    ("nope", "checks"),
    ([], "checks"),
    (["x"], "checks[0]"),
    ([{"metric": "throughput"}], "checks[0].metric"),
    ([{"metric": "custom:"}], "checks[0].metric"),
    ([{"metric": "latency", "test": "vibes"}], "checks[0].test"),
    ([{"metric": "latency", "statistic": "p42"}], "checks[0].statistic"),
    ([{"metric": "latency", "alpha": 0.9}], "checks[0].alpha"),
    ([{"metric": "latency", "alpha": "low"}], "checks[0].alpha"),
    ([{"metric": "error_rate", "test": "threshold", "max": 5}], "checks[0].max"),
    ([{"metric": "error_rate", "test": "threshold"}], "checks[0].min"),
    ([{"metric": "latency", "min_samples": 0}], "checks[0].min_samples"),
    ([{"metric": "latency", "critical": "yes"}], "checks[0].critical"),
    ([{"metric": "latency", "weight": 0}], "checks[0].weight"),
    ([{"metric": "latency", "colour": "red"}], "checks[0].colour"),
    ([{"metric": "latency"}, {"metric": "latency"}], "checks[1].name"),
])
def test_bad_checks_name_the_field(raw, field):
    with pytest.raises(InvalidInput) as error:
        checks_from_json(raw)
    assert error.value.field == field
