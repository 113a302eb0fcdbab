"""Bookkeeping around one policy's risk evaluation cycle: pure.

The backoff while Prometheus fails, the ``RiskEvaluation`` condition (written without
touching the other conditions of the policy's status), and which suppressions are worth
an Event. Times come in; nothing here reads a clock or the network.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from memwarden.conditions import build_condition, replace_condition

CONDITION_TYPE: Final = "RiskEvaluation"
#: A suppression that persists (a pod in cooldown, still over its threshold) is
#: re-announced this often, not every cycle: one Event per cycle would flood the policy.
ANNOUNCE_EVERY_SECONDS: Final = 600.0


def backoff_delay(retry: int, *, interval: float, cap: float) -> float:
    """Seconds before the next attempt after ``retry`` consecutive failures (0-based):
    ``interval``, doubling, at most ``cap``."""
    return float(min(cap, interval * 2 ** min(max(retry, 0), 30)))


def with_risk_condition(
    conditions: Sequence[Mapping[str, Any]],
    *,
    ok: bool,
    reason: str,
    message: str,
    now: str,
    generation: int | None,
) -> list[dict[str, Any]] | None:
    """``conditions`` with the RiskEvaluation entry set; None when nothing changes.

    Every other condition is kept as it is (policy status owns Ready and Feasible). The
    transition time moves only when the status flips.
    """
    new = build_condition(
        type_=CONDITION_TYPE,
        status=ok,
        reason=reason,
        message=message,
        generation=generation,
        now=now,
        previous=conditions,
    )
    return replace_condition(conditions, new)


@dataclass
class Announcements:
    """Remembers when each suppression was last announced (``now`` is monotonic seconds)."""

    every: float = ANNOUNCE_EVERY_SECONDS
    _last: dict[Hashable, float] = field(default_factory=dict)

    def due(self, key: Hashable, *, now: float) -> bool:
        """True (and remembered) when ``key`` was not announced within ``every``."""
        last = self._last.get(key)
        if last is not None and now - last < self.every:
            return False
        self._last[key] = now
        if len(self._last) > 10_000:  # bounded: drop the stale ones
            self._last = {k: t for k, t in self._last.items() if now - t < self.every}
        return True


__all__ = [
    "ANNOUNCE_EVERY_SECONDS",
    "CONDITION_TYPE",
    "Announcements",
    "backoff_delay",
    "with_risk_condition",
]
