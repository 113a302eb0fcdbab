"""leader.py: the Lease decisions, on a virtual clock (no API server, no sleeping)."""

from __future__ import annotations

import datetime as dt

import pytest

from memwarden.leader import (
    Action,
    LeaseRecord,
    Observation,
    Timing,
    decide,
    desired_spec,
    lease_seconds,
    micro_time,
    observe,
    released_spec,
)

pytestmark = pytest.mark.unit

TIMING = Timing(lease_duration=15, renew_deadline=10, retry_period=2)
ME, OTHER = "memwarden-a", "memwarden-b"
WALL = dt.datetime(2026, 12, 1, 6, 0, 0, 123456, tzinfo=dt.UTC)


def record(
    holder: str | None, *, renewed: str = "t1", duration: float | None = 15, version: str = "7"
) -> LeaseRecord:
    return LeaseRecord(
        holder=holder,
        lease_duration=duration,
        acquire_time="2026-12-01T05:00:00.000000Z",
        renew_time=renewed,
        transitions=3,
        resource_version=version,
    )


def seen(rec: LeaseRecord | None, at: float = 100.0) -> Observation | None:
    return None if rec is None else Observation(record=rec, seen_at=at)


@pytest.mark.parametrize(
    ("rec", "now", "last_renewed", "action"),
    [
        pytest.param(None, 100.0, None, Action.CREATE, id="no-lease-creates"),
        pytest.param(record(None), 100.0, None, Action.ACQUIRE, id="released-acquires-at-once"),
        pytest.param(record(OTHER), 100.0, None, Action.WAIT, id="other-holder-fresh-waits"),
        pytest.param(
            record(OTHER), 114.999, None, Action.WAIT, id="other-holder-just-before-expiry"
        ),
        pytest.param(record(OTHER), 115.0, None, Action.ACQUIRE, id="other-holder-at-expiry"),
        pytest.param(record(OTHER), 400.0, None, Action.ACQUIRE, id="other-holder-long-expired"),
        pytest.param(
            record(OTHER, duration=4), 104.0, None, Action.ACQUIRE, id="holder-own-duration-wins"
        ),
        pytest.param(
            record(OTHER, duration=None), 114.0, None, Action.WAIT, id="no-duration-uses-ours"
        ),
        pytest.param(record(ME), 100.0, None, Action.WAIT, id="our-name-not-leading-waits"),
        pytest.param(record(ME), 115.0, None, Action.ACQUIRE, id="our-name-expired-acquires"),
        pytest.param(record(ME), 105.0, 100.0, Action.RENEW, id="leading-renews"),
        pytest.param(record(ME), 109.999, 100.0, Action.RENEW, id="just-before-renew-deadline"),
        pytest.param(record(ME), 110.0, 100.0, Action.LOST, id="renew-deadline-missed"),
        pytest.param(None, 110.0, 100.0, Action.LOST, id="deadline-missed-api-down"),
        pytest.param(record(OTHER), 101.0, 100.0, Action.LOST, id="taken-over-by-another"),
        pytest.param(record(None), 101.0, 100.0, Action.LOST, id="released-under-us"),
        pytest.param(None, 101.0, 100.0, Action.LOST, id="lease-deleted-under-us"),
    ],
)
def test_decide(
    rec: LeaseRecord | None, now: float, last_renewed: float | None, action: Action
) -> None:
    decision = decide(
        observation=seen(rec), identity=ME, now=now, last_renewed=last_renewed, timing=TIMING
    )
    assert decision.action is action, decision.why
    assert decision.why


def test_wait_says_when_the_lease_expires() -> None:
    decision = decide(
        observation=seen(record(OTHER), at=50.0),
        identity=ME,
        now=60.0,
        last_renewed=None,
        timing=TIMING,
    )
    assert decision.action is Action.WAIT and decision.expires_at == 65.0


def test_expiry_counts_from_when_the_record_changed_not_from_each_read() -> None:
    first = observe(None, record(OTHER, renewed="t1"), now=100.0)
    again = observe(first, record(OTHER, renewed="t1", version="7"), now=110.0)
    assert again.seen_at == 100.0  # unchanged: the clock keeps running
    renewed = observe(again, record(OTHER, renewed="t2", version="8"), now=112.0)
    assert renewed.seen_at == 112.0  # a renewal restarts it
    assert (
        decide(observation=renewed, identity=ME, now=120.0, last_renewed=None, timing=TIMING).action
        is Action.WAIT
    )


def test_a_skewed_renew_time_does_not_expire_a_live_holder() -> None:
    """The holder's clock may be hours behind ours: only local observation counts."""
    stale_looking = record(OTHER, renewed="1999-01-01T00:00:00.000000Z")
    decision = decide(
        observation=observe(None, stale_looking, now=100.0),
        identity=ME,
        now=101.0,
        last_renewed=None,
        timing=TIMING,
    )
    assert decision.action is Action.WAIT


def test_acquiring_counts_a_transition_and_renewing_keeps_the_acquire_time() -> None:
    rec = record(OTHER)
    taken = desired_spec(action=Action.ACQUIRE, record=rec, identity=ME, wall=WALL, timing=TIMING)
    assert taken == {
        "holderIdentity": ME,
        "leaseDurationSeconds": 15,
        "acquireTime": "2026-12-01T06:00:00.123456Z",
        "renewTime": "2026-12-01T06:00:00.123456Z",
        "leaseTransitions": 4,
    }
    kept = desired_spec(
        action=Action.RENEW, record=record(ME), identity=ME, wall=WALL, timing=TIMING
    )
    assert kept["acquireTime"] == "2026-12-01T05:00:00.000000Z"
    assert kept["renewTime"] == "2026-12-01T06:00:00.123456Z"
    assert kept["leaseTransitions"] == 3
    created = desired_spec(action=Action.CREATE, record=None, identity=ME, wall=WALL, timing=TIMING)
    assert created["leaseTransitions"] == 0 and created["holderIdentity"] == ME


def test_nothing_is_written_for_wait_or_lost() -> None:
    for action in (Action.WAIT, Action.LOST):
        with pytest.raises(ValueError, match=action.value):
            desired_spec(action=action, record=record(ME), identity=ME, wall=WALL, timing=TIMING)


def test_release_clears_the_holder_so_the_next_replica_acquires_at_once() -> None:
    spec = released_spec(record(ME), wall=WALL)
    assert spec["holderIdentity"] is None and spec["leaseTransitions"] == 3
    after = LeaseRecord.from_object({"spec": spec, "metadata": {"resourceVersion": "9"}})
    decision = decide(
        observation=observe(None, after, now=0.0),
        identity=OTHER,
        now=0.0,
        last_renewed=None,
        timing=TIMING,
    )
    assert decision.action is Action.ACQUIRE


@pytest.mark.parametrize(
    ("duration", "seconds"),
    [
        pytest.param(15, 15, id="whole"),
        pytest.param(3.2, 4, id="rounded-up"),
        pytest.param(0.3, 1, id="at-least-one"),
    ],
)
def test_lease_duration_is_whole_seconds_never_shorter(duration: float, seconds: int) -> None:
    assert (
        lease_seconds(Timing(lease_duration=duration, renew_deadline=0.2, retry_period=0.1))
        == seconds
    )


def test_record_from_an_api_object() -> None:
    rec = LeaseRecord.from_object(
        {
            "metadata": {"resourceVersion": "42"},
            "spec": {"holderIdentity": "", "leaseDurationSeconds": 4, "leaseTransitions": None},
        }
    )
    assert rec.holder is None and rec.lease_duration == 4.0
    assert rec.transitions == 0 and rec.resource_version == "42"
    assert micro_time(WALL.astimezone(dt.timezone(dt.timedelta(hours=2)))) == (
        "2026-12-01T06:00:00.123456Z"
    )
