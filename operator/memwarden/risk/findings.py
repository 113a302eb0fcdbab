"""A container found heading for OOM: what every risk source produces. Pure."""

from __future__ import annotations

from dataclasses import dataclass, field

from memwarden.api import TriggerSource


@dataclass(frozen=True)
class Finding:
    """One signal holding for one container, from Prometheus, Alertmanager or the API.

    ``signal`` is one of usageRatio, timeToLimit, majorFaultsPerSecond, pressureRatio,
    gcCPURatio, oomKilled, or an alert's name; ``value`` and ``threshold`` are in the signal's unit
    (ratio, seconds, faults/s).
    """

    namespace: str
    pod: str
    container: str
    source: TriggerSource
    signal: str
    value: float | None = None
    threshold: float | None = None
    policy: str | None = None
    alert_name: str | None = None
    labels: dict[str, str] = field(default_factory=dict)
