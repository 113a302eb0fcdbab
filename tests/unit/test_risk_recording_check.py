"""The risk loop's look for recording rules: how often it asks, what each mode reads.

Virtual time: ``refresh`` takes the monotonic ``now``, ``current`` the wall-clock one.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from memwarden.handlers.risk import RecordingRules
from memwarden.risk.adapters.prometheus import RecordingRulesMissing
from memwarden.risk.promql import Recorded, Sample, Windows
from memwarden.risk.rules import MARKER
from memwarden.settings import Settings

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.UTC)
MARKERS = [
    Sample(
        labels={
            "__name__": MARKER,
            "regression_window": "5m",
            "rate_window": "1m",
            "oom_window": "5m",
            "horizons": "10m",
        },
        value=T0.timestamp(),
    )
]


class FakePrometheus:
    """The one adapter method the check uses; counts the questions."""

    def __init__(self, markers: list[Sample]) -> None:
        self.markers = markers
        self.asked = 0

    async def aquery(self, expr: str, **_: Any) -> list[Sample]:
        assert expr == MARKER
        self.asked += 1
        return list(self.markers)


@pytest.fixture
def mode(request: pytest.FixtureRequest) -> str:
    """The settings' risk.recording_rules."""
    return str(request.param)


def rules_for(mode: str) -> RecordingRules:
    return RecordingRules(Settings.model_validate({"risk": {"recording_rules": mode}}))


def look(rules: RecordingRules, client: FakePrometheus, at: float) -> None:
    asyncio.run(rules.refresh(client, now=at))  # type: ignore[arg-type]


@pytest.mark.parametrize("mode", ["auto"], indirect=True)
def test_asks_at_most_once_per_check_interval(mode: str) -> None:
    rules, client = rules_for(mode), FakePrometheus(MARKERS)
    for at in (1000.0, 1100.0, 1299.0):
        look(rules, client, at)
    assert client.asked == 1
    look(rules, client, 1300.0)
    assert client.asked == 2


@pytest.mark.parametrize("mode", ["auto", "on"], indirect=True)
def test_the_rules_age_between_looks(mode: str) -> None:
    rules, client = rules_for(mode), FakePrometheus(MARKERS)
    look(rules, client, 0.0)
    seconds = T0 + dt.timedelta(seconds=1)
    assert rules.current(seconds) == Recorded(windows=Windows(), horizons=("10m",), seconds=1)
    later = rules.current(T0 + dt.timedelta(minutes=3))
    assert later is not None and later.seconds == 180
    assert client.asked == 1


@pytest.mark.parametrize("mode", ["auto"], indirect=True)
def test_auto_without_rules_reads_the_raw_series(mode: str) -> None:
    rules = rules_for(mode)
    look(rules, FakePrometheus([]), 0.0)
    assert rules.current(T0) is None


@pytest.mark.parametrize("mode", ["on"], indirect=True)
def test_on_without_rules_fails_loudly(mode: str) -> None:
    rules = rules_for(mode)
    look(
        rules,
        FakePrometheus([Sample(labels={**MARKERS[0].labels, "rate_window": "2m"}, value=0)]),
        0.0,
    )
    with pytest.raises(RecordingRulesMissing, match=r"regression 5m, rate 1m, oom 5m") as caught:
        rules.current(T0)
    assert "rate 2m" in str(caught.value)  # what was found instead
    assert caught.value.reason == "RecordingRulesMissing"


@pytest.mark.parametrize("mode", ["off"], indirect=True)
def test_off_never_asks(mode: str) -> None:
    rules, client = rules_for(mode), FakePrometheus(MARKERS)
    look(rules, client, 0.0)
    assert client.asked == 0
    assert rules.current(T0 + dt.timedelta(hours=1)) is None
