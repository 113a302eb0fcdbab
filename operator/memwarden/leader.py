"""Leader election over a ``coordination.k8s.io/v1`` Lease: the decisions, pure.

What client-go's ``leaderelection`` decides, as data: given the Lease as read (or None
when it does not exist), what this replica saw of it before, its identity, the local
clock and the timings, whether to create, acquire, renew, wait, or stop leading; and the
Lease spec to write. The adapter (``handlers/leadership.py``) reads and writes the Lease
through ``kube.py`` and acts on the answer; nothing here does I/O or reads a clock.

Expiry is judged on the local monotonic clock, as client-go does, never by comparing
the holder's ``renewTime`` with this machine's wall clock: a follower starts counting
``leaseDurationSeconds`` when it *sees* the record change, so a skewed clock on either
side cannot make a live leader look expired. Writes carry the ``resourceVersion`` that
was read: of two replicas racing for an expired Lease, the API server lets one win and
answers the other 409 Conflict.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Timing:
    """client-go's three durations (see ``settings.LeaderSettings``), in seconds."""

    lease_duration: float
    renew_deadline: float
    retry_period: float


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says, as the election reads it."""

    holder: str | None
    lease_duration: float | None
    acquire_time: str | None
    renew_time: str | None
    transitions: int
    resource_version: str | None

    @classmethod
    def from_object(cls, obj: Mapping[str, Any]) -> LeaseRecord:
        spec = obj.get("spec") or {}
        meta = obj.get("metadata") or {}
        duration = spec.get("leaseDurationSeconds")
        return cls(
            holder=spec.get("holderIdentity") or None,
            lease_duration=float(duration) if isinstance(duration, int | float) else None,
            acquire_time=spec.get("acquireTime"),
            renew_time=spec.get("renewTime"),
            transitions=int(spec.get("leaseTransitions") or 0),
            resource_version=meta.get("resourceVersion"),
        )

    @property
    def version(self) -> tuple[str | None, str | None]:
        """What changes at every write of the holder: a renewal or a new holder."""
        return (self.holder, self.renew_time)


@dataclass(frozen=True)
class Observation:
    """The record this replica last saw change, and when (local monotonic seconds)."""

    record: LeaseRecord
    seen_at: float


def observe(previous: Observation | None, record: LeaseRecord, *, now: float) -> Observation:
    """The observation after reading ``record`` at ``now``: the clock restarts only when
    the record changed (a renewal, a new holder), as client-go's ``observedTime``."""
    if previous is not None and previous.record.version == record.version:
        return Observation(record=record, seen_at=previous.seen_at)
    return Observation(record=record, seen_at=now)


class Action(enum.Enum):
    CREATE = "create"  # no Lease yet: create it, holding it
    ACQUIRE = "acquire"  # free (released) or expired: take it over
    RENEW = "renew"  # ours: write a fresh renewTime
    WAIT = "wait"  # another replica holds it and it has not expired
    LOST = "lost"  # we were leading and no longer may: stop reconciling now


@dataclass(frozen=True)
class Decision:
    action: Action
    why: str
    #: When the current holder's Lease expires for us (monotonic), for WAIT.
    expires_at: float | None = None


def decide(
    *,
    observation: Observation | None,
    identity: str,
    now: float,
    last_renewed: float | None,
    timing: Timing,
) -> Decision:
    """What to do now.

    ``observation`` is None when the Lease does not exist. ``last_renewed`` is the
    monotonic time of this replica's last successful write as holder, None while it is
    not leading: a leader that could not renew for ``renew_deadline`` must stop, even if
    it cannot read the Lease (the API server is down), before anyone may take over.
    """
    leading = last_renewed is not None
    if last_renewed is not None and now - last_renewed >= timing.renew_deadline:
        late = now - last_renewed
        return Decision(
            Action.LOST, f"not renewed for {late:.1f}s (deadline {timing.renew_deadline:g}s)"
        )
    if observation is None:
        if leading:
            return Decision(Action.LOST, "the Lease was deleted")
        return Decision(Action.CREATE, "no Lease yet")
    record = observation.record
    if leading:
        if record.holder == identity:
            return Decision(Action.RENEW, "held by this replica")
        return Decision(Action.LOST, f"the Lease is held by {record.holder or 'nobody'}")
    if record.holder is None:
        return Decision(Action.ACQUIRE, "released by its last holder")
    # Held, by another replica or under this replica's own name while it does not lead (an
    # earlier run of it, or a write it did not make): wait for the Lease to expire. Unlike
    # client-go, the name alone never grants leadership at once, so a forged holder
    # cannot make two replicas lead at the same time (docs/security.md).
    duration = record.lease_duration if record.lease_duration is not None else timing.lease_duration
    expires_at = observation.seen_at + duration
    if now >= expires_at:
        return Decision(
            Action.ACQUIRE, f"{record.holder} has not renewed for {now - observation.seen_at:.1f}s"
        )
    return Decision(Action.WAIT, f"held by {record.holder}", expires_at=expires_at)


def micro_time(moment: dt.datetime) -> str:
    """A Kubernetes ``MicroTime``: UTC, microseconds, ``Z``."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def lease_seconds(timing: Timing) -> int:
    """``leaseDurationSeconds`` is an integer: rounded up, never shorter than configured."""
    return max(1, math.ceil(timing.lease_duration))


def desired_spec(
    *,
    action: Action,
    record: LeaseRecord | None,
    identity: str,
    wall: dt.datetime,
    timing: Timing,
) -> dict[str, Any]:
    """The Lease spec to write for CREATE, ACQUIRE or RENEW."""
    stamp = micro_time(wall)
    if action is Action.RENEW and record is not None:
        return {
            "holderIdentity": identity,
            "leaseDurationSeconds": lease_seconds(timing),
            "acquireTime": record.acquire_time or stamp,
            "renewTime": stamp,
            "leaseTransitions": record.transitions,
        }
    if action in (Action.CREATE, Action.ACQUIRE):
        return {
            "holderIdentity": identity,
            "leaseDurationSeconds": lease_seconds(timing),
            "acquireTime": stamp,
            "renewTime": stamp,
            "leaseTransitions": 0 if record is None else record.transitions + 1,
        }
    raise ValueError(f"nothing to write for {action.value}")


def released_spec(record: LeaseRecord, *, wall: dt.datetime) -> dict[str, Any]:
    """The spec a leader writes when it stops on purpose: no holder, so the next replica
    acquires at its next retry instead of waiting for the Lease to expire (client-go's
    ``ReleaseOnCancel``)."""
    stamp = micro_time(wall)
    return {
        "holderIdentity": None,
        "leaseDurationSeconds": 1,
        "acquireTime": record.acquire_time or stamp,
        "renewTime": stamp,
        "leaseTransitions": record.transitions,
    }


__all__ = [
    "Action",
    "Decision",
    "LeaseRecord",
    "Observation",
    "Timing",
    "decide",
    "desired_spec",
    "lease_seconds",
    "micro_time",
    "observe",
    "released_spec",
]
