"""memwarden's recording rules for the risk queries, and how the operator finds them: pure.

One rule group records, for every namespace at once, the per-container series the risk
queries would otherwise compute at query time from cAdvisor's raw series (regressions,
rates, and a subquery that fits a line at every step):

| recorded series | expression (``W`` regression, ``r`` rate, ``o`` OOM window) |
| --- | --- |
| ``memwarden:container_memory_working_set_bytes`` | the working set |
| ``…:deriv<W>`` | ``deriv(ws[W])`` |
| ``…:predict_linear<W>{horizon="H"}`` | ``predict_linear(ws[W], H)``, one per horizon |
| ``memwarden:container_memory_major_faults:rate<r>`` | ``rate(pgmajfault[r])`` |
| ``memwarden:container_pressure_memory_waiting_seconds:rate<r>`` | ``rate(psi_waiting[r])`` |
| ``memwarden:container_oom_events:increase<o>`` | ``increase(oom_events[o])`` |
| ``memwarden:go_gc_cpu_share_near_gomemlimit:rate<r>`` | the Go GC's CPU share near GOMEMLIMIT |

each ``max by (namespace, pod, container)`` (the GC share: ``promql.gc_cpu_share``) over
the same selectors as the raw queries
(``promql.selector``), so both forms read the same containers. The prediction is
recorded for whole horizons (``timeToLimit`` values), not as a fit and a slope to combine
at query time: ``min_over_time((fit + slope × H)[for:step])`` costs a vector match at
every step, more than the regression it saves (docs/risk.md has the measurements).

A marker series says the group is loaded, with which windows and horizons, and since
when: its value is the time of the group's first evaluation (it reads its own last value
back, so it keeps that time until the group stops for longer than the lookback).
``find_recorded`` turns the marker into ``promql.Recorded`` for the operator. The marker's
``go_gc_cpu="true"`` says the GC share is recorded: rule sets from before gcCPURatio lack
it, and the operator then reads that one signal from the raw series. The
chart's PrometheusRule, ``charts/memwarden/files/recording-rules.yaml`` and
``memwarden recording-rules`` all come from ``RuleSet``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from memwarden.quantity import QuantityError, parse_duration
from memwarden.risk.promql import (
    FAILURES,
    HORIZON_LABEL,
    MAJOR_FAULTS,
    OOM_EVENTS,
    PSI_WAITING,
    WORKING_SET,
    Recorded,
    RecordedNames,
    Sample,
    Windows,
    by_container,
    gc_cpu_share,
    seconds_literal,
    selector,
)

#: The marker: one series per rule set, valued with the time of its first evaluation.
MARKER: Final = "memwarden:recording_rules:since_timestamp_seconds"
#: The marker keeps its first time through gaps shorter than this (Prometheus' default
#: lookback): a longer gap leaves holes in the recorded series, so it starts again.
MARKER_MEMORY: Final = "5m"
GROUP_NAME: Final = "memwarden-risk"
#: The marker's label that says the rule set records the GC share (gcCPURatio).
GO_GC_CPU_LABEL: Final = "go_gc_cpu"
DEFAULT_HORIZONS: Final = ("10m",)
"""The default ``oomRisk.timeToLimit``: policies that keep it read the recorded prediction."""


@dataclass(frozen=True)
class RuleSet:
    """One rule group: the windows the operator queries with, the horizons to predict at.

    The windows must be the operator's (``MEMWARDEN_RISK_*_WINDOW``): the operator reads
    rules recorded over other windows as absent. ``interval``: the group's evaluation
    interval (None: Prometheus' global one); it must not exceed the shortest
    ``oomRisk.for``, which the recorded forms read as a range of evaluations.
    """

    windows: Windows = field(default_factory=Windows)
    horizons: tuple[str, ...] = DEFAULT_HORIZONS
    interval: str | None = None
    name: str = GROUP_NAME

    def marker_labels(self) -> dict[str, str]:
        return {
            "regression_window": self.windows.regression,
            "rate_window": self.windows.rate,
            "oom_window": self.windows.oom,
            "horizons": ",".join(self.horizons),
            GO_GC_CPU_LABEL: "true",
        }

    def group(self) -> dict[str, Any]:
        """The rule group, as a Prometheus rules file or a PrometheusRule spec holds it."""
        names = RecordedNames.for_windows(self.windows)
        ws = selector(WORKING_SET, namespace=None)
        labels = self.marker_labels()
        matchers = ",".join(f'{k}="{v}"' for k, v in labels.items())
        rules: list[dict[str, Any]] = [
            {
                "record": MARKER,
                "expr": f"min_over_time({MARKER}{{{matchers}}}[{MARKER_MEMORY}]) "
                "or on () vector(time())",
                "labels": labels,
            },
            {"record": names.working_set, "expr": by_container(ws)},
            {
                "record": names.deriv,
                "expr": by_container(f"deriv({ws}[{self.windows.regression}])"),
            },
        ]
        for horizon in self.horizons:
            seconds = seconds_literal(parse_duration(horizon))
            rules.append(
                {
                    "record": names.predict_linear,
                    "expr": by_container(
                        f"predict_linear({ws}[{self.windows.regression}], {seconds})"
                    ),
                    "labels": {HORIZON_LABEL: horizon},
                }
            )
        faults = selector(FAILURES, namespace=None, extra=MAJOR_FAULTS)
        psi = selector(PSI_WAITING, namespace=None)
        oom = selector(OOM_EVENTS, namespace=None)
        rules += [
            {
                "record": names.major_faults,
                "expr": by_container(f"rate({faults}[{self.windows.rate}])"),
            },
            {
                "record": names.pressure,
                "expr": by_container(f"rate({psi}[{self.windows.rate}])"),
            },
            {
                "record": names.oom_events,
                "expr": by_container(f"increase({oom}[{self.windows.oom}])"),
            },
            {
                "record": names.go_gc_cpu,
                "expr": gc_cpu_share(namespace=None, containers=None, window=self.windows.rate),
            },
        ]
        group: dict[str, Any] = {"name": self.name}
        if self.interval:
            group["interval"] = self.interval
        group["rules"] = rules
        return group

    def document(self) -> dict[str, Any]:
        """A Prometheus rules file (``rule_files:``) holding the group."""
        return {"groups": [self.group()]}


def find_recorded(markers: Sequence[Sample], *, windows: Windows, now: float) -> Recorded | None:
    """The recording rules for ``windows`` among the ``MARKER`` samples, recorded for
    ``now`` minus their first evaluation (Unix seconds); None when none match.

    Windows are compared as durations (``300s`` is ``5m``); the returned ``Recorded``
    keeps the rules' spelling, which their series' names carry. Several matching rule
    sets (two releases): the union of their horizons and of what they record, and the
    youngest one's age.
    """
    wanted = _seconds(windows)
    found: list[tuple[Windows, tuple[str, ...], float]] = []
    go_gc_cpu = False
    for marker in markers:
        labels = marker.labels
        recorded = Windows(
            regression=labels.get("regression_window", ""),
            rate=labels.get("rate_window", ""),
            oom=labels.get("oom_window", ""),
        )
        if _seconds(recorded) != wanted or wanted is None:
            continue
        horizons = tuple(h for h in labels.get("horizons", "").split(",") if _is_duration(h))
        found.append((recorded, horizons, marker.value))
        go_gc_cpu = go_gc_cpu or labels.get(GO_GC_CPU_LABEL) == "true"
    if not found:
        return None
    horizons = tuple(dict.fromkeys(h for _, hs, _ in found for h in hs))
    since = max(value for _, _, value in found)
    return Recorded(
        windows=found[0][0],
        horizons=horizons,
        seconds=max(0.0, now - since),
        go_gc_cpu=go_gc_cpu,
    )


def describe(markers: Sequence[Sample]) -> str:
    """The rule sets the markers announce, for a log line: ``regression 5m, rate 1m, oom
    5m, horizons 10m``; ``none`` when there are none."""
    sets = [
        f"regression {m.labels.get('regression_window', '?')}, rate "
        f"{m.labels.get('rate_window', '?')}, oom {m.labels.get('oom_window', '?')}, "
        f"horizons {m.labels.get('horizons') or 'none'}"
        for m in markers
    ]
    return "; ".join(sets) if sets else "none"


def _seconds(windows: Windows) -> tuple[float, float, float] | None:
    try:
        return (
            parse_duration(windows.regression),
            parse_duration(windows.rate),
            parse_duration(windows.oom),
        )
    except QuantityError:
        return None


def _is_duration(text: str) -> bool:
    try:
        parse_duration(text)
    except QuantityError:
        return False
    return True


__all__ = [
    "DEFAULT_HORIZONS",
    "GO_GC_CPU_LABEL",
    "GROUP_NAME",
    "MARKER",
    "MARKER_MEMORY",
    "RuleSet",
    "describe",
    "find_recorded",
]
