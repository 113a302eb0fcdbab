"""PromQL for OOM-risk signals, built per policy and namespace, never per pod: pure.

A query selects a namespace (and the policy's container names, when it lists them) and
aggregates to one series per ``(namespace, pod, container)``; the operator joins the
results to the pods it governs, whose limits it knows from their specs (no
kube-state-metrics). The number of queries depends only on the enabled signals.

``for`` is evaluated by Prometheus (``min_over_time`` over a range or a subquery), so a
restarted operator loses nothing. A series must also have existed ``for`` ago (``and
... offset``): a container that has just started cannot have held anything for ``for``.

Each builder has two forms with the same meaning: over the raw cAdvisor series, or over
the per-container series memwarden's recording rules keep (``rules.py``; ``Recorded``
says which are there). The recorded form needs no regression, rate or subquery at query
time: Prometheus did that work once per rule evaluation, for every namespace at once.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Final, Literal

from memwarden.api import OomRiskSpec
from memwarden.quantity import parse_duration

WORKING_SET: Final = "container_memory_working_set_bytes"
FAILURES: Final = "container_memory_failures_total"
OOM_EVENTS: Final = "container_oom_events_total"
PSI_WAITING: Final = "container_pressure_memory_waiting_seconds_total"
#: The Go runtime's own series (client_golang's names), scraped from the workload.
GO_GC_CPU: Final = "go_cpu_classes_gc_total_cpu_seconds_total"
GO_TOTAL_CPU: Final = "go_cpu_classes_total_cpu_seconds_total"
GO_HEAP_GOAL: Final = "go_gc_heap_goal_bytes"
GO_MEMORY_LIMIT: Final = "go_gc_gomemlimit_bytes"
#: gcCPURatio counts only while the heap goal is at least this share of GOMEMLIMIT: the
#: limit, not GOGC, sets when the next GC starts (measured 0.92-0.95 in a spiral).
HEAP_NEAR_LIMIT: Final = 0.85
#: Matchers that pick major faults among ``FAILURES``.
MAJOR_FAULTS: Final = ('failure_type="pgmajfault"', 'scope="container"')

#: The keys a result is joined on: everything else (id, image, instance...) is dropped.
JOIN_LABELS: Final = ("namespace", "pod", "container")
#: The label that tells apart the parts of a multi-part query (timeToLimit).
PART_LABEL: Final = "memwarden_part"
#: The label of a recorded prediction that says its horizon (``10m``).
HORIZON_LABEL: Final = "horizon"

Signal = Literal[
    "usageRatio", "timeToLimit", "majorFaultsPerSecond", "pressureRatio", "gcCPURatio", "oomKilled"
]
#: Signal order for findings on one container: the most certain first.
SIGNALS: Final[tuple[Signal, ...]] = (
    "oomKilled",
    "usageRatio",
    "timeToLimit",
    "majorFaultsPerSecond",
    "pressureRatio",
    "gcCPURatio",
)


@dataclass(frozen=True)
class Sample:
    """One instant-vector element, as the Prometheus adapter returns it."""

    labels: Mapping[str, str]
    value: float


@dataclass(frozen=True)
class Series:
    """One range-vector element: (unix time, value) points, oldest first."""

    labels: Mapping[str, str]
    points: tuple[tuple[float, float], ...]


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
class RecordedNames:
    """Names of the series memwarden's recording rules keep, for one set of ``Windows``
    (``for_windows``).

    Each has only the ``JOIN_LABELS`` (the prediction also ``horizon``). The window is in
    the name, so rules recorded over another window are never read by mistake.
    """

    working_set: str
    deriv: str
    predict_linear: str
    major_faults: str
    pressure: str
    oom_events: str
    go_gc_cpu: str

    @classmethod
    def for_windows(cls, windows: Windows) -> RecordedNames:
        ws = "memwarden:container_memory_working_set_bytes"
        return cls(
            working_set=ws,
            deriv=f"{ws}:deriv{windows.regression}",
            predict_linear=f"{ws}:predict_linear{windows.regression}",
            major_faults=f"memwarden:container_memory_major_faults:rate{windows.rate}",
            pressure=f"memwarden:container_pressure_memory_waiting_seconds:rate{windows.rate}",
            oom_events=f"memwarden:container_oom_events:increase{windows.oom}",
            go_gc_cpu=f"memwarden:go_gc_cpu_share_near_gomemlimit:rate{windows.rate}",
        )


@dataclass(frozen=True)
class Recorded:
    """Recording rules the queries may read (``rules.py`` makes them; the operator finds
    them): ``windows`` and ``horizons`` spelled as the rules spell them, and how long
    they have been recorded.

    A query reads them only when they cover its ``for`` (series that began less than
    ``for`` ago would shorten it) and, for timeToLimit, when its horizon is recorded;
    otherwise it reads the raw series.
    """

    windows: Windows
    horizons: tuple[str, ...] = ()
    seconds: float = math.inf
    go_gc_cpu: bool = False
    """The rules record the GC CPU share (gcCPURatio); rule sets older than it do not."""

    @property
    def names(self) -> RecordedNames:
        return RecordedNames.for_windows(self.windows)

    def covers(self, for_: str) -> bool:
        return self.seconds >= parse_duration(for_)

    def horizon(self, horizon: str) -> str | None:
        """The recorded horizon equal to ``horizon`` (``600s`` is ``10m``), as labelled."""
        seconds = parse_duration(horizon)
        return next((h for h in self.horizons if parse_duration(h) == seconds), None)


@dataclass(frozen=True)
class Query:
    """One PromQL expression and the signal it measures."""

    signal: Signal
    expr: str
    threshold: float | None = None
    parts: tuple[str, ...] = field(default=())
    recorded: bool = False
    """Reads the recording rules' series (``Recorded``), not the raw ones."""


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


def selector(
    metric: str,
    *,
    namespace: str | None,
    containers: Sequence[str] | None = None,
    extra: Sequence[str] = (),
) -> str:
    """``metric{namespace="NS",container!="",container!="POD"}`` (+ a container regex and
    ``extra`` matchers); ``namespace=None``: every namespace (the recording rules).

    ``container!=""`` drops the pod-level cgroup series and ``POD`` the pause container.
    """
    matchers = [] if namespace is None else [f'namespace="{_escape(namespace)}"']
    matchers += ['container!=""', 'container!="POD"', *_containers(containers), *extra]
    return f"{metric}{{{','.join(matchers)}}}"


def recorded_selector(
    metric: str, *, namespace: str, containers: Sequence[str] | None, extra: Sequence[str] = ()
) -> str:
    """``metric{namespace="NS"}`` (+ a container regex): a recorded series has neither the
    pod-level nor the pause container, the rules left them out."""
    matchers = [f'namespace="{_escape(namespace)}"', *_containers(containers), *extra]
    return f"{metric}{{{','.join(matchers)}}}"


def _containers(containers: Sequence[str] | None) -> list[str]:
    if not containers:
        return []
    alternatives = "|".join(re.escape(name) for name in sorted(set(containers)))
    return [f'container=~"{_escape(alternatives)}"']


def _escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace('"', '\\"')


def by_container(expr: str) -> str:
    """``max by (namespace, pod, container) (expr)``: one series per container."""
    return f"max by ({', '.join(JOIN_LABELS)}) ({expr})"


def _held(expr: str, *, series: str, for_: str, on: bool = False) -> str:
    """``expr`` only for series that already existed ``for`` ago (``on``: matched on the
    ``JOIN_LABELS`` only, for ``expr`` with more labels than ``series``)."""
    matching = f"on ({', '.join(JOIN_LABELS)}) " if on else ""
    return f"{expr} and {matching}{series} offset {for_}"


def _usable(recorded: Recorded | None, for_: str) -> Recorded | None:
    return recorded if recorded is not None and recorded.covers(for_) else None


def usage_query(
    *,
    namespace: str,
    containers: Sequence[str] | None,
    for_: str,
    threshold: float,
    min_limit: int | None = None,
    recorded: Recorded | None = None,
) -> Query:
    """Lowest working set over ``for`` (bytes); the ratio to the limit is taken client-side.

    With ``min_limit`` (the smallest limit among the governed containers) Prometheus
    returns only series at or above ``threshold × min_limit``: a superset of those that
    can hold, so a namespace of idle pods costs almost no transfer.
    """
    rules = _usable(recorded, for_)
    if rules is None:
        ws = selector(WORKING_SET, namespace=namespace, containers=containers)
    else:
        ws = recorded_selector(rules.names.working_set, namespace=namespace, containers=containers)
    lowest = f"min_over_time({ws}[{for_}])"
    if min_limit is not None:
        lowest += f" >= {math.floor(threshold * min_limit)}"
    expr = _held(lowest, series=ws, for_=for_)
    return Query(
        signal="usageRatio",
        expr=by_container(expr),
        threshold=threshold,
        recorded=rules is not None,
    )


def time_to_limit_query(
    *,
    namespace: str,
    containers: Sequence[str] | None,
    for_: str,
    horizon: str,
    windows: Windows,
    min_limit: int | None = None,
    recorded: Recorded | None = None,
) -> Query:
    """Three parts per container, in one query, told apart by ``memwarden_part``:

    - ``held``: lowest ``predict_linear(ws, horizon)`` over ``for``; at or above the limit
      means the limit was predicted within ``horizon`` all along;
    - ``predicted`` and ``slope``: the prediction and ``deriv`` at the evaluation time,
      so the operator can say how many seconds are left (the fit now is ``predicted -
      slope × horizon``; ``predict_linear(v, h)`` is the fit at the evaluation time plus
      ``deriv(v) × h``, the same regression).

    With ``min_limit``, every part is limited to series whose prediction reaches it (a
    superset of those that can hold): the rest are not worth sending.

    Raw, ``held`` is a subquery that fits a line at every step. Recorded (when the rules
    record this horizon), it is ``min_over_time`` over the recorded prediction: the rules
    fitted once per evaluation.
    """
    seconds = seconds_literal(parse_duration(horizon))
    bound = "" if min_limit is None else f" >= {min_limit}"
    rules = _usable(recorded, for_)
    label = None if rules is None else rules.horizon(horizon)
    if rules is None or label is None:
        ws = selector(WORKING_SET, namespace=namespace, containers=containers)
        window = windows.regression
        step = subquery_step(parse_duration(for_))
        predicted = f"predict_linear({ws}[{window}], {seconds})"
        held = _held(f"min_over_time({predicted}[{for_}:{step}]){bound}", series=ws, for_=for_)
        # Same selector on both sides of ``and``: the label sets match one to one.
        reaching = "" if min_limit is None else f" and {predicted}{bound}"
        slope = f"deriv({ws}[{window}]){reaching}"
    else:
        names = rules.names
        ws = recorded_selector(names.working_set, namespace=namespace, containers=containers)
        predicted = recorded_selector(
            names.predict_linear,
            namespace=namespace,
            containers=containers,
            extra=[f'{HORIZON_LABEL}="{_escape(label)}"'],
        )
        derived = recorded_selector(names.deriv, namespace=namespace, containers=containers)
        held = _held(f"min_over_time({predicted}[{for_}]){bound}", series=ws, for_=for_, on=True)
        on = f"on ({', '.join(JOIN_LABELS)}) "  # the prediction has a horizon label
        slope = derived + ("" if min_limit is None else f" and {on}{predicted}{bound}")
    parts = {"held": held, "predicted": f"{predicted}{bound}", "slope": slope}
    expr = " or ".join(
        f'label_replace({by_container(e)}, "{PART_LABEL}", "{name}", "", "")'
        for name, e in parts.items()
    )
    return Query(
        signal="timeToLimit",
        expr=expr,
        threshold=parse_duration(horizon),
        parts=tuple(parts),
        recorded=label is not None,
    )


def _min_rate_query(
    signal: Signal,
    *,
    series: str,
    recorded_as: Callable[[RecordedNames], str],
    namespace: str,
    containers: Sequence[str] | None,
    threshold: float,
    for_: str,
    windows: Windows,
    recorded: Recorded | None,
    per_step: str | None = None,
) -> Query:
    """Lowest rate of ``series`` over ``for`` (``per_step``: another expression of it, one
    series per container); when the rules serve it, the lowest of the recorded rate
    (``recorded_as``) over ``for``, no subquery."""
    rules = _usable(recorded, for_)
    on = False
    if rules is None:
        step = subquery_step(parse_duration(for_))
        each = per_step if per_step is not None else f"rate({series}[{windows.rate}])"
        lowest, existed, on = f"min_over_time({each}[{for_}:{step}])", series, per_step is not None
    else:
        rate = recorded_as(rules.names)
        existed = recorded_selector(rate, namespace=namespace, containers=containers)
        lowest = f"min_over_time({existed}[{for_}])"
    expr = _held(f"{lowest} >= {_number(threshold)}", series=existed, for_=for_, on=on)
    return Query(
        signal=signal, expr=by_container(expr), threshold=threshold, recorded=rules is not None
    )


def major_faults_query(
    *,
    namespace: str,
    containers: Sequence[str] | None,
    for_: str,
    threshold: float,
    windows: Windows,
    recorded: Recorded | None = None,
) -> Query:
    """Lowest major-fault rate (faults/s) over ``for``: the page cache is being thrashed."""
    return _min_rate_query(
        "majorFaultsPerSecond",
        series=selector(FAILURES, namespace=namespace, containers=containers, extra=MAJOR_FAULTS),
        recorded_as=lambda names: names.major_faults,
        namespace=namespace,
        containers=containers,
        threshold=threshold,
        for_=for_,
        windows=windows,
        recorded=recorded,
    )


def pressure_query(
    *,
    namespace: str,
    containers: Sequence[str] | None,
    for_: str,
    threshold: float,
    windows: Windows,
    recorded: Recorded | None = None,
) -> Query:
    """Lowest PSI memory "some" stall ratio over ``for`` (seconds stalled per second).

    The series exist only where cAdvisor reads PSI (cgroup v2, kernel PSI on); elsewhere
    the query returns nothing and the signal stays silent.
    """
    return _min_rate_query(
        "pressureRatio",
        series=selector(PSI_WAITING, namespace=namespace, containers=containers),
        recorded_as=lambda names: names.pressure,
        namespace=namespace,
        containers=containers,
        threshold=threshold,
        for_=for_,
        windows=windows,
        recorded=recorded,
    )


def gc_cpu_share(*, namespace: str | None, containers: Sequence[str] | None, window: str) -> str:
    """Per container, the share of CPU the Go GC took over ``window``, only where the heap
    goal is near GOMEMLIMIT (``HEAP_NEAR_LIMIT``); ``namespace=None``: every namespace
    (the recording rule)."""

    def one(metric: str, form: str = "{}") -> str:
        return by_container(
            form.format(selector(metric, namespace=namespace, containers=containers))
        )

    rate = f"rate({{}}[{window}])"
    share = f"{one(GO_GC_CPU, rate)} / {one(GO_TOTAL_CPU, rate)}"
    near = f"{one(GO_HEAP_GOAL)} >= {_number(HEAP_NEAR_LIMIT)} * {one(GO_MEMORY_LIMIT)}"
    return f"{share} and {near}"


def gc_cpu_query(
    *,
    namespace: str,
    containers: Sequence[str] | None,
    for_: str,
    threshold: float,
    windows: Windows,
    recorded: Recorded | None = None,
) -> Query:
    """Lowest share of CPU the Go GC took over ``for``, counted only while the heap goal
    was near GOMEMLIMIT (``gc_cpu_share``): the GC death spiral, where the live heap sits
    under the limit and the GC runs nearly nonstop, RSS flat.

    The share is ``rate(gc cpu) / rate(total cpu)`` of the runtime's own estimates
    (client_golang's ``go_cpu_classes_*``), so it needs the workload's metrics scraped
    with ``namespace``, ``pod`` and ``container`` labels. Without GOMEMLIMIT (the runtime
    reports ``math.MaxInt64``) the goal is never near it and the signal stays silent.
    Recorded only by rule sets that say so (``Recorded.go_gc_cpu``).
    """
    share = gc_cpu_share(namespace=namespace, containers=containers, window=windows.rate)
    return _min_rate_query(
        "gcCPURatio",
        series=selector(GO_GC_CPU, namespace=namespace, containers=containers),
        per_step=f"({share})",
        recorded_as=lambda names: names.go_gc_cpu,
        namespace=namespace,
        containers=containers,
        threshold=threshold,
        for_=for_,
        windows=windows,
        recorded=recorded if recorded is not None and recorded.go_gc_cpu else None,
    )


def oom_events_query(
    *,
    namespace: str,
    containers: Sequence[str] | None,
    windows: Windows,
    recorded: Recorded | None = None,
) -> Query:
    """Containers the kernel OOM-killed within ``windows.oom`` (count of kills).

    The recorded increase is usable as soon as it exists: the rule reads the raw counter
    over the whole window from its first evaluation, and there is no ``for``.
    """
    if recorded is None:
        series = selector(OOM_EVENTS, namespace=namespace, containers=containers)
        increase = f"increase({series}[{windows.oom}])"
    else:
        increase = recorded_selector(
            recorded.names.oom_events, namespace=namespace, containers=containers
        )
    return Query(
        signal="oomKilled",
        expr=f"{by_container(increase)} > 0",
        threshold=0.0,
        recorded=recorded is not None,
    )


def policy_queries(
    risk: OomRiskSpec,
    *,
    namespace: str,
    containers: Sequence[str] | None,
    windows: Windows,
    min_limit: int | None = None,
    recorded: Recorded | None = None,
) -> list[Query]:
    """Every query of one policy's evaluation cycle: one per enabled signal, plus OOM events.

    ``min_limit``: the smallest memory limit among the governed containers (None: not
    known), so Prometheus leaves out series that cannot reach any limit. ``recorded``:
    the recording rules found (None: raw series only); each query reads them when they
    serve it.
    """
    for_ = duration(parse_duration(risk.for_))
    ns, names, rules = namespace, containers, recorded
    queries: list[Query] = []
    if risk.usageRatio is not None:
        queries.append(
            usage_query(
                namespace=ns,
                containers=names,
                for_=for_,
                threshold=risk.usageRatio,
                min_limit=min_limit,
                recorded=rules,
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
                recorded=rules,
            )
        )
    # The signals that are a lowest rate over ``for`` against a threshold.
    rates: tuple[tuple[float | None, Callable[..., Query]], ...] = (
        (risk.majorFaultsPerSecond, major_faults_query),
        (risk.pressureRatio, pressure_query),
        (risk.gcCPURatio, gc_cpu_query),
    )
    for threshold, build in rates:
        if threshold is not None:
            queries.append(
                build(
                    namespace=ns,
                    containers=names,
                    for_=for_,
                    threshold=threshold,
                    windows=windows,
                    recorded=rules,
                )
            )
    queries.append(
        oom_events_query(namespace=ns, containers=names, windows=windows, recorded=rules)
    )
    return queries


@dataclass(frozen=True)
class PolicyRisk:
    """One policy's part in its namespace's cycle: its rule, containers and smallest limit."""

    name: str
    risk: OomRiskSpec
    containers: tuple[str, ...] | None
    min_limit: int | None


def namespace_queries(
    policies: Sequence[PolicyRisk],
    *,
    namespace: str,
    windows: Windows,
    recorded: Recorded | None = None,
) -> list[tuple[Query, tuple[str, ...]]]:
    """The queries of a namespace's cycle, each with the policies that read its result.

    Policies whose rules give the same query but for their container names and smallest
    limit share one: it selects the union of their containers and the smallest of their
    limits, so its result holds every series each of them would have got (a superset;
    the signal maths joins results to each policy's own containers and thresholds). Ten
    policies with the default rule cost the queries of one. With ``recorded``, a query
    reads the recorded series where they serve it (its ``for``, its horizon), so two
    policies share a query only when they would read the same series.
    """
    groups: dict[tuple[Signal, str, float | None], list[PolicyRisk]] = {}
    for policy in policies:
        for query in policy_queries(
            policy.risk, namespace=namespace, containers=None, windows=windows, recorded=recorded
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
                recorded=recorded,
            )
            if q.signal == signal
        )
        batched.append((query, tuple(m.name for m in members)))
    return batched


def _number(value: float) -> str:
    """A PromQL number literal: ``50``, ``0.25``."""
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def seconds_literal(seconds: float) -> str:
    """A PromQL number of seconds: ``600``, ``1.5``."""
    return str(int(seconds)) if float(seconds).is_integer() else repr(seconds)


__all__ = [
    "FAILURES",
    "GO_GC_CPU",
    "GO_HEAP_GOAL",
    "GO_MEMORY_LIMIT",
    "GO_TOTAL_CPU",
    "HEAP_NEAR_LIMIT",
    "HORIZON_LABEL",
    "JOIN_LABELS",
    "MAJOR_FAULTS",
    "OOM_EVENTS",
    "PART_LABEL",
    "PSI_WAITING",
    "SIGNALS",
    "WORKING_SET",
    "PolicyRisk",
    "Query",
    "Recorded",
    "RecordedNames",
    "Sample",
    "Series",
    "Signal",
    "Windows",
    "by_container",
    "duration",
    "gc_cpu_query",
    "gc_cpu_share",
    "major_faults_query",
    "namespace_queries",
    "oom_events_query",
    "policy_queries",
    "pressure_query",
    "recorded_selector",
    "seconds_literal",
    "selector",
    "subquery_step",
    "time_to_limit_query",
    "usage_query",
]
