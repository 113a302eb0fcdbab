"""PromQL for OOM-risk signals, built per policy and namespace, never per pod: pure.

A query selects a namespace (and the policy's container names, when it lists them) and
aggregates to one series per ``(namespace, pod, container)``; the operator joins the
results to the pods it governs, whose limits it knows from their specs (no
kube-state-metrics). The number of queries depends only on the enabled signals.

``for`` is evaluated by Prometheus (``min_over_time`` over a range or a subquery), so a
restarted operator loses nothing. A series must also have existed ``for`` ago (``and
... offset``): a container that has just started cannot have held anything for ``for``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from memwarden.api import OomRiskSpec
from memwarden.quantity import parse_duration

WORKING_SET: Final = "container_memory_working_set_bytes"
FAILURES: Final = "container_memory_failures_total"
OOM_EVENTS: Final = "container_oom_events_total"
PSI_WAITING: Final = "container_pressure_memory_waiting_seconds_total"

#: The keys a result is joined on: everything else (id, image, instance...) is dropped.
JOIN_LABELS: Final = ("namespace", "pod", "container")
#: The label that tells apart the parts of a multi-part query (timeToLimit).
PART_LABEL: Final = "memwarden_part"

Signal = Literal["usageRatio", "timeToLimit", "majorFaultsPerSecond", "pressureRatio", "oomKilled"]
#: Signal order for findings on one container: the most certain first.
SIGNALS: Final[tuple[Signal, ...]] = (
    "oomKilled",
    "usageRatio",
    "timeToLimit",
    "majorFaultsPerSecond",
    "pressureRatio",
)


@dataclass(frozen=True)
class Sample:
    """One instant-vector element, as the Prometheus adapter returns it."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Windows:
    """Ranges that are not in the policy: they depend on the scrape interval, not the app.

    ``regression`` feeds ``predict_linear``/``deriv`` (long enough to smooth GC sawtooth);
    ``rate`` must span at least two scrapes; ``oom`` is how far back an OOM event counts
    (shorter than any sensible cooldown, so one kill opens one incident).
    """

    regression: str = "5m"
    rate: str = "1m"
    oom: str = "5m"


@dataclass(frozen=True)
class Query:
    """One PromQL expression and the signal it measures."""

    signal: Signal
    expr: str
    threshold: float | None = None
    parts: tuple[str, ...] = field(default=())


def duration(seconds: float) -> str:
    """A PromQL duration for ``seconds``: the largest exact unit (``2m``, ``90s``, ``1500ms``)."""
    if seconds <= 0:
        raise ValueError(f"duration must be positive: {seconds}")
    millis = round(seconds * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if millis % size == 0:
            return f"{millis // size}{unit}"
    return f"{millis}ms"


def subquery_step(for_seconds: float) -> str:
    """Subquery resolution for a ``for`` window: about ten points, between 1 s and 1 m."""
    return duration(min(60.0, max(1.0, math.floor(for_seconds / 10))))


def selector(metric: str, *, namespace: str, containers: Sequence[str] | None = None) -> str:
    """``metric{namespace="NS",container!="",container!="POD"}`` (+ a container regex).

    ``container!=""`` drops the pod-level cgroup series and ``POD`` the pause container.
    """
    matchers = [f'namespace="{_escape(namespace)}"', 'container!=""', 'container!="POD"']
    if containers:
        alternatives = "|".join(re.escape(name) for name in sorted(set(containers)))
        matchers.append(f'container=~"{_escape(alternatives)}"')
    return f"{metric}{{{','.join(matchers)}}}"


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def _by_container(expr: str) -> str:
    return f"max by ({', '.join(JOIN_LABELS)}) ({expr})"


def _held(expr: str, *, series: str, for_: str) -> str:
    """``expr`` only for series that already existed ``for`` ago."""
    return f"{expr} and {series} offset {for_}"


def usage_query(
    *,
    namespace: str,
    containers: Sequence[str] | None,
    for_: str,
    threshold: float,
    min_limit: int | None = None,
) -> Query:
    """Lowest working set over ``for`` (bytes); the ratio to the limit is taken client-side.

    With ``min_limit`` (the smallest limit among the governed containers) Prometheus
    returns only series at or above ``threshold × min_limit``: a superset of those that
    can hold, so a namespace of idle pods costs almost no transfer.
    """
    ws = selector(WORKING_SET, namespace=namespace, containers=containers)
    lowest = f"min_over_time({ws}[{for_}])"
    if min_limit is not None:
        lowest += f" >= {math.floor(threshold * min_limit)}"
    expr = _held(lowest, series=ws, for_=for_)
    return Query(signal="usageRatio", expr=_by_container(expr), threshold=threshold)


def time_to_limit_query(
    *,
    namespace: str,
    containers: Sequence[str] | None,
    for_: str,
    horizon: str,
    windows: Windows,
    min_limit: int | None = None,
) -> Query:
    """Three parts per container, in one query, told apart by ``memwarden_part``:

    - ``held``: lowest ``predict_linear(ws, horizon)`` over ``for`` (a subquery); at or
      above the limit means the limit was predicted within ``horizon`` all along;
    - ``now`` and ``slope``: the same fit at the evaluation time, so the operator can
      say how many seconds are left: ``(limit - now) / slope``.

    With ``min_limit``, every part is limited to series whose prediction reaches it (a
    superset of those that can hold): the rest are not worth sending.
    """
    ws = selector(WORKING_SET, namespace=namespace, containers=containers)
    seconds = _seconds_literal(parse_duration(horizon))
    window = windows.regression
    step = subquery_step(parse_duration(for_))
    bound = "" if min_limit is None else f" >= {min_limit}"
    held = _held(
        f"min_over_time(predict_linear({ws}[{window}], {seconds})[{for_}:{step}]){bound}",
        series=ws,
        for_=for_,
    )
    # Same selector on both sides of ``and``: the label sets match one to one.
    reaching = "" if min_limit is None else f" and predict_linear({ws}[{window}], {seconds}){bound}"
    parts = {
        "held": held,
        "now": f"predict_linear({ws}[{window}], 0){reaching}",
        "slope": f"deriv({ws}[{window}]){reaching}",
    }
    expr = " or ".join(
        f'label_replace({_by_container(e)}, "{PART_LABEL}", "{name}", "", "")'
        for name, e in parts.items()
    )
    return Query(
        signal="timeToLimit",
        expr=expr,
        threshold=parse_duration(horizon),
        parts=tuple(parts),
    )


def _min_rate_query(
    signal: Signal, *, series: str, threshold: float, for_: str, windows: Windows
) -> Query:
    step = subquery_step(parse_duration(for_))
    expr = _held(
        f"min_over_time(rate({series}[{windows.rate}])[{for_}:{step}]) >= {_number(threshold)}",
        series=series,
        for_=for_,
    )
    return Query(signal=signal, expr=_by_container(expr), threshold=threshold)


def major_faults_query(
    *,
    namespace: str,
    containers: Sequence[str] | None,
    for_: str,
    threshold: float,
    windows: Windows,
) -> Query:
    """Lowest major-fault rate (faults/s) over ``for``: the page cache is being thrashed."""
    base = selector(FAILURES, namespace=namespace, containers=containers)
    series = base[:-1] + ',failure_type="pgmajfault",scope="container"}'
    return _min_rate_query(
        "majorFaultsPerSecond", series=series, threshold=threshold, for_=for_, windows=windows
    )


def pressure_query(
    *,
    namespace: str,
    containers: Sequence[str] | None,
    for_: str,
    threshold: float,
    windows: Windows,
) -> Query:
    """Lowest PSI memory "some" stall ratio over ``for`` (seconds stalled per second).

    The series exist only where cAdvisor reads PSI (cgroup v2, kernel PSI on); elsewhere
    the query returns nothing and the signal stays silent.
    """
    series = selector(PSI_WAITING, namespace=namespace, containers=containers)
    return _min_rate_query(
        "pressureRatio", series=series, threshold=threshold, for_=for_, windows=windows
    )


def oom_events_query(
    *, namespace: str, containers: Sequence[str] | None, windows: Windows
) -> Query:
    """Containers the kernel OOM-killed within ``windows.oom`` (count of kills)."""
    series = selector(OOM_EVENTS, namespace=namespace, containers=containers)
    expr = f"{_by_container(f'increase({series}[{windows.oom}])')} > 0"
    return Query(signal="oomKilled", expr=expr, threshold=0.0)


def policy_queries(
    risk: OomRiskSpec,
    *,
    namespace: str,
    containers: Sequence[str] | None,
    windows: Windows,
    min_limit: int | None = None,
) -> list[Query]:
    """Every query of one policy's evaluation cycle: one per enabled signal, plus OOM events.

    ``min_limit``: the smallest memory limit among the governed containers (None: not
    known), so Prometheus leaves out series that cannot reach any limit.
    """
    for_ = duration(parse_duration(risk.for_))
    ns, names = namespace, containers
    queries: list[Query] = []
    if risk.usageRatio is not None:
        queries.append(
            usage_query(
                namespace=ns,
                containers=names,
                for_=for_,
                threshold=risk.usageRatio,
                min_limit=min_limit,
            )
        )
    if risk.timeToLimit is not None:
        horizon = duration(parse_duration(risk.timeToLimit))
        queries.append(
            time_to_limit_query(
                namespace=ns,
                containers=names,
                for_=for_,
                horizon=horizon,
                windows=windows,
                min_limit=min_limit,
            )
        )
    if risk.majorFaultsPerSecond is not None:
        queries.append(
            major_faults_query(
                namespace=ns,
                containers=names,
                for_=for_,
                threshold=risk.majorFaultsPerSecond,
                windows=windows,
            )
        )
    if risk.pressureRatio is not None:
        queries.append(
            pressure_query(
                namespace=ns,
                containers=names,
                for_=for_,
                threshold=risk.pressureRatio,
                windows=windows,
            )
        )
    queries.append(oom_events_query(namespace=ns, containers=names, windows=windows))
    return queries


@dataclass(frozen=True)
class PolicyRisk:
    """One policy's part in its namespace's cycle: its rule, containers and smallest limit."""

    name: str
    risk: OomRiskSpec
    containers: tuple[str, ...] | None
    min_limit: int | None


def namespace_queries(
    policies: Sequence[PolicyRisk], *, namespace: str, windows: Windows
) -> list[tuple[Query, tuple[str, ...]]]:
    """The queries of a namespace's cycle, each with the policies that read its result.

    Policies whose rules give the same query but for their container names and smallest
    limit share one: it selects the union of their containers and the smallest of their
    limits, so its result holds every series each of them would have got (a superset;
    the signal maths joins results to each policy's own containers and thresholds). Ten
    policies with the default rule cost the queries of one.
    """
    groups: dict[tuple[Signal, str, float | None], list[PolicyRisk]] = {}
    for policy in policies:
        for query in policy_queries(
            policy.risk, namespace=namespace, containers=None, windows=windows
        ):
            groups.setdefault((query.signal, query.expr, query.threshold), []).append(policy)
    batched: list[tuple[Query, tuple[str, ...]]] = []
    for (signal, _, _), members in groups.items():
        names: tuple[str, ...] | None = ()
        for member in members:
            if member.containers is None or names is None:
                names = None
            else:
                names = tuple(sorted({*names, *member.containers}))
        limits = [m.min_limit for m in members]
        min_limit = None if None in limits else min(int(x) for x in limits if x is not None)
        query = next(
            q
            for q in policy_queries(
                members[0].risk,
                namespace=namespace,
                containers=names,
                windows=windows,
                min_limit=min_limit,
            )
            if q.signal == signal
        )
        batched.append((query, tuple(m.name for m in members)))
    return batched


def _number(value: float) -> str:
    """A PromQL number literal: ``50``, ``0.25``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def _seconds_literal(seconds: float) -> str:
    return str(int(seconds)) if float(seconds).is_integer() else repr(seconds)


__all__ = [
    "FAILURES",
    "JOIN_LABELS",
    "OOM_EVENTS",
    "PART_LABEL",
    "PSI_WAITING",
    "SIGNALS",
    "WORKING_SET",
    "PolicyRisk",
    "Query",
    "Sample",
    "Signal",
    "Windows",
    "duration",
    "major_faults_query",
    "namespace_queries",
    "oom_events_query",
    "policy_queries",
    "pressure_query",
    "selector",
    "subquery_step",
    "time_to_limit_query",
    "usage_query",
]
