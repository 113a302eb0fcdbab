"""Units and thresholds shared by the sizing sections: MemoryQoS's minors, GOMEMLIMIT headroom."""

from __future__ import annotations

from fractions import Fraction
from typing import Final, Literal

QosClass = Literal["Guaranteed", "Burstable", "BestEffort"]
ReservationPolicy = Literal["None", "TieredReservation"]

MIB: Final = 2**20

#: MemoryQoS appears (alpha, gate off) in Kubernetes 1.22.
FIRST_MEMORY_QOS_MINOR: Final = 22
#: ``memoryReservationPolicy`` appears in 1.36; before it the gate alone writes memory.min.
FIRST_RESERVATION_POLICY_MINOR: Final = 36
#: MemoryQoS is beta in 1.37: gate on, ``memoryThrottlingFactor`` defaults to nil. The same
#: kubelet throttles containers without request or limit, writes the pod cgroup's memory.high
#: for pods with pod-level resources and then skips it on their containers without a limit.
FIRST_BETA_MINOR: Final = 37

#: A GOMEMLIMIT computed from a percentage is floored to a whole MiB from this size up: the
#: env value stays readable (``1843MiB``) and flooring never raises the limit. Below it one
#: MiB is more than 1.5 % of the value, so small limits keep their exact bytes.
GOMEMLIMIT_MIB_FLOOR_FROM: Final = 64 * MIB

#: GOMEMLIMIT should leave at least the larger of 5 % of memory.max and 32 MiB below
#: memory.max. That room holds what the cgroup is charged for but the Go runtime does not
#: count (cgo allocations, the binary, page cache, kernel memory) and the heap's overshoot
#: while a GC cycle finishes. With less, the GC runs nearly nonstop near the limit; the GC
#: CPU limiter caps it at ~50 % CPU, so the process degrades for minutes (a death spiral)
#: instead of failing fast. 32 MiB covers small containers where 5 % is only a few MiB.
HEADROOM_FRACTION: Final = Fraction(5, 100)
HEADROOM_MIN: Final = 32 * MIB


def _amount(value: int | None) -> int:
    """Unset and zero are the same amount to the kubelet and to the QoS rules."""
    return value or 0


def _check_non_negative(owner: str, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 0:
            raise ValueError(f"{owner}: {name} must not be negative, got {value}")
