"""Cycle bookkeeping: backoff, the RiskEvaluation condition, Event rate limits; and the
adapters' error mapping (no server needed)."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes.client.exceptions import ApiException

from memwarden.kube import Conflict, NotFound, Rejected, Transient, error_from
from memwarden.risk.adapters.prometheus import PrometheusUnavailable, _samples
from memwarden.risk.cycle import Announcements, backoff_delay, with_risk_condition

pytestmark = pytest.mark.unit


@pytest.mark.parametrize(
    ("retry", "expected"),
    [
        pytest.param(0, 15, id="first-failure-one-interval"),
        pytest.param(1, 30, id="doubles"),
        pytest.param(4, 240, id="fourth"),
        pytest.param(5, 300, id="capped"),
        pytest.param(1000, 300, id="no-overflow"),
    ],
)
def test_backoff(retry: int, expected: float) -> None:
    assert backoff_delay(retry, interval=15, cap=300) == expected


READY = {"type": "Ready", "status": "True", "reason": "Reconciled", "message": "3 pods"}
OK = {
    "type": "RiskEvaluation",
    "status": "True",
    "reason": "Evaluated",
    "message": "5 queries",
    "lastTransitionTime": "2026-11-25T10:00:00Z",
    "observedGeneration": 2,
}


def condition(conditions: list[dict[str, Any]], **kw: Any) -> list[dict[str, Any]] | None:
    args: dict[str, Any] = {
        "ok": True,
        "reason": "Evaluated",
        "message": "5 queries",
        "now": "2026-11-25T11:00:00Z",
        "generation": 2,
        **kw,
    }
    return with_risk_condition(conditions, **args)


def test_unchanged_condition_is_not_rewritten() -> None:
    assert condition([READY, OK]) is None


def test_failure_flips_and_keeps_other_conditions() -> None:
    new = condition([READY, OK], ok=False, reason="PrometheusUnavailable", message="down")
    assert new is not None
    assert new[0] == READY
    assert new[1] == {
        "type": "RiskEvaluation",
        "status": "False",
        "reason": "PrometheusUnavailable",
        "message": "down",
        "lastTransitionTime": "2026-11-25T11:00:00Z",
        "observedGeneration": 2,
    }


def test_same_status_keeps_transition_time() -> None:
    new = condition([OK], message="6 queries")
    assert new is not None
    assert new[0]["lastTransitionTime"] == "2026-11-25T10:00:00Z"


def test_first_condition_is_added() -> None:
    new = condition([READY])
    assert new is not None
    assert [c["type"] for c in new] == ["Ready", "RiskEvaluation"]


def test_announcements_are_rate_limited_per_key() -> None:
    seen = Announcements(every=600)
    assert seen.due("a", now=0)
    assert not seen.due("a", now=599)
    assert seen.due("b", now=599)
    assert seen.due("a", now=600)


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        pytest.param(404, NotFound, id="404"),
        pytest.param(409, Conflict, id="409"),
        pytest.param(429, Transient, id="429"),
        pytest.param(503, Transient, id="503"),
        pytest.param(0, Transient, id="no-status"),
        pytest.param(422, Rejected, id="422"),
        pytest.param(403, Rejected, id="403"),
    ],
)
def test_api_errors_become_ours(status: int, kind: type[Exception]) -> None:
    exc = ApiException(status=status, reason="Reason")
    exc.body = '{"message": "' + "x" * 1000 + '"}'
    error = error_from(exc, what="create memoryincidents shop/a")
    assert type(error) is kind
    assert str(error).startswith(f"create memoryincidents shop/a: {status} xxx")
    assert len(str(error)) <= 300


def test_samples_from_a_vector() -> None:
    result = [{"metric": {"pod": "a"}, "value": [1700000000.0, "1.5"]}]
    (sample,) = _samples(result)
    assert (dict(sample.labels), sample.value) == ({"pod": "a"}, 1.5)
    assert _samples([{"metric": {}, "value": [0, "NaN"]}])[0].value != 0


@pytest.mark.parametrize(
    "result",
    [
        pytest.param({"resultType": "scalar"}, id="not-a-vector"),
        pytest.param([{"metric": {}}], id="no-value"),
        pytest.param([{"metric": {}, "value": [0, "many"]}], id="not-a-number"),
    ],
)
def test_malformed_results_are_unavailable(result: Any) -> None:
    with pytest.raises(PrometheusUnavailable):
        _samples(result)
