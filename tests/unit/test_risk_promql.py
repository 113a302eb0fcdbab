"""PromQL builders: golden strings, and a query count that ignores the number of pods."""

from __future__ import annotations

import math

import pytest

from memwarden.api import OomRiskSpec
from memwarden.risk.promql import (
    PolicyRisk,
    Query,
    Recorded,
    Windows,
    duration,
    gc_cpu_query,
    major_faults_query,
    namespace_queries,
    oom_events_query,
    policy_queries,
    pressure_query,
    selector,
    subquery_step,
    time_to_limit_query,
    usage_query,
)

pytestmark = pytest.mark.unit

W = Windows(regression="5m", rate="1m", oom="5m")
WS = 'container_memory_working_set_bytes{namespace="shop",container!="",container!="POD"}'


@pytest.mark.parametrize(
    ("containers", "expected"),
    [
        pytest.param(None, WS, id="every-container"),
        pytest.param([], WS, id="empty-list-is-every-container"),
        pytest.param(
            ["app", "side-car"],
            'container_memory_working_set_bytes{namespace="shop",container!="",'
            'container!="POD",container=~"app|side\\\\-car"}',
            id="policy-containers",
        ),
    ],
)
def test_selector(containers: list[str] | None, expected: str) -> None:
    got = selector("container_memory_working_set_bytes", namespace="shop", containers=containers)
    assert got == expected


def test_usage_query() -> None:
    query = usage_query(namespace="shop", containers=None, for_="2m", threshold=0.9)
    assert query.signal == "usageRatio"
    assert query.threshold == 0.9
    assert query.expr == (
        f"max by (namespace, pod, container) (min_over_time({WS}[2m]) and {WS} offset 2m)"
    )


def test_time_to_limit_query() -> None:
    query = time_to_limit_query(
        namespace="shop", containers=None, for_="2m", horizon="10m", windows=W
    )
    assert (query.signal, query.threshold, query.parts, query.recorded) == (
        "timeToLimit",
        600.0,
        ("held", "predicted", "slope"),
        False,
    )
    by = "max by (namespace, pod, container)"
    assert query.expr == (
        f"label_replace({by} (min_over_time(predict_linear({WS}[5m], 600)[2m:12s]) "
        f'and {WS} offset 2m), "memwarden_part", "held", "", "") '
        f"or label_replace({by} (predict_linear({WS}[5m], 600)), "
        f'"memwarden_part", "predicted", "", "") '
        f'or label_replace({by} (deriv({WS}[5m])), "memwarden_part", "slope", "", "")'
    )


def test_usage_query_leaves_out_what_cannot_reach_the_smallest_limit() -> None:
    query = usage_query(namespace="shop", containers=None, for_="2m", threshold=0.9, min_limit=1000)
    assert query.expr == (
        f"max by (namespace, pod, container) (min_over_time({WS}[2m]) >= 900 and {WS} offset 2m)"
    )


def test_time_to_limit_query_leaves_out_what_cannot_reach_the_smallest_limit() -> None:
    query = time_to_limit_query(
        namespace="shop", containers=None, for_="2m", horizon="10m", windows=W, min_limit=1000
    )
    by = "max by (namespace, pod, container)"
    reaching = f"predict_linear({WS}[5m], 600) >= 1000"
    assert query.expr == (
        f"label_replace({by} (min_over_time(predict_linear({WS}[5m], 600)[2m:12s]) >= 1000 "
        f'and {WS} offset 2m), "memwarden_part", "held", "", "") '
        f"or label_replace({by} ({reaching}), "
        f'"memwarden_part", "predicted", "", "") '
        f"or label_replace({by} (deriv({WS}[5m]) and {reaching}), "
        f'"memwarden_part", "slope", "", "")'
    )


def test_major_faults_query() -> None:
    query = major_faults_query(
        namespace="shop", containers=["app"], for_="2m", threshold=50, windows=W
    )
    series = (
        'container_memory_failures_total{namespace="shop",container!="",container!="POD",'
        'container=~"app",failure_type="pgmajfault",scope="container"}'
    )
    assert query.expr == (
        f"max by (namespace, pod, container) "
        f"(min_over_time(rate({series}[1m])[2m:12s]) >= 50 and {series} offset 2m)"
    )
    assert query.threshold == 50


def test_pressure_query() -> None:
    query = pressure_query(namespace="shop", containers=None, for_="30s", threshold=0.2, windows=W)
    series = (
        'container_pressure_memory_waiting_seconds_total{namespace="shop",container!="",'
        'container!="POD"}'
    )
    assert query.expr == (
        f"max by (namespace, pod, container) "
        f"(min_over_time(rate({series}[1m])[30s:3s]) >= 0.2 and {series} offset 30s)"
    )


def test_gc_cpu_query() -> None:
    """GC CPU share (rate / rate), only while the heap goal is near GOMEMLIMIT, lowest
    over ``for``; the existence check matches on the join labels (the held value has no
    others)."""
    query = gc_cpu_query(namespace="shop", containers=["app"], for_="30s", threshold=0.5, windows=W)
    by = "max by (namespace, pod, container)"

    def series(name: str) -> str:
        return f'{name}{{namespace="shop",container!="",container!="POD",container=~"app"}}'

    gc, total = (
        series("go_cpu_classes_gc_total_cpu_seconds_total"),
        series("go_cpu_classes_total_cpu_seconds_total"),
    )
    goal, limit = series("go_gc_heap_goal_bytes"), series("go_gc_gomemlimit_bytes")
    share = f"{by} (rate({gc}[1m])) / {by} (rate({total}[1m]))"
    near = f"{by} ({goal}) >= 0.85 * {by} ({limit})"
    assert (query.signal, query.threshold, query.recorded) == ("gcCPURatio", 0.5, False)
    assert query.expr == (
        f"{by} (min_over_time(({share} and {near})[30s:3s]) >= 0.5 "
        f"and on (namespace, pod, container) {gc} offset 30s)"
    )


def test_gc_cpu_query_reads_the_rules_only_where_they_record_it() -> None:
    """A rule set older than gcCPURatio records no GC share: the policy reads the raw
    series for it (and the rules for the other signals)."""
    spec = OomRiskSpec.model_validate({"gcCPURatio": 0.5, "for": "30s"})

    def by_signal(recorded: Recorded) -> dict[str, Query]:
        queries = policy_queries(
            spec, namespace="shop", containers=None, windows=W, recorded=recorded
        )
        return {q.signal: q for q in queries}

    older = by_signal(Recorded(windows=W))
    assert not older["gcCPURatio"].recorded and older["usageRatio"].recorded
    gc = by_signal(Recorded(windows=W, go_gc_cpu=True))["gcCPURatio"]
    name = 'memwarden:go_gc_cpu_share_near_gomemlimit:rate1m{namespace="shop"}'
    assert gc.recorded
    assert gc.expr == (
        f"max by (namespace, pod, container) (min_over_time({name}[30s]) >= 0.5 "
        f"and {name} offset 30s)"
    )


def test_oom_events_query() -> None:
    query = oom_events_query(namespace="shop", containers=None, windows=W)
    series = 'container_oom_events_total{namespace="shop",container!="",container!="POD"}'
    assert query.expr == f"max by (namespace, pod, container) (increase({series}[5m])) > 0"


@pytest.mark.parametrize(
    ("risk", "signals"),
    [
        pytest.param({}, ["usageRatio", "timeToLimit", "oomKilled"], id="defaults"),
        pytest.param(
            {"usageRatio": None, "timeToLimit": None}, ["oomKilled"], id="only-oom-events"
        ),
        pytest.param(
            {"majorFaultsPerSecond": 50, "pressureRatio": 0.3, "gcCPURatio": 0.5},
            [
                "usageRatio",
                "timeToLimit",
                "majorFaultsPerSecond",
                "pressureRatio",
                "gcCPURatio",
                "oomKilled",
            ],
            id="every-signal",
        ),
        pytest.param(
            {"usageRatio": 0, "timeToLimit": "0s", "gcCPURatio": 1},
            ["gcCPURatio", "oomKilled"],
            id="gc-only",
        ),
    ],
)
def test_one_query_per_enabled_signal(risk: dict[str, object], signals: list[str]) -> None:
    spec = OomRiskSpec.model_validate(risk)
    queries = policy_queries(spec, namespace="shop", containers=None, windows=W)
    assert [q.signal for q in queries] == signals


def test_for_is_normalised() -> None:
    spec = OomRiskSpec.model_validate({"for": "120s", "timeToLimit": None})
    (usage, _) = policy_queries(spec, namespace="ns", containers=None, windows=W)
    assert "[2m]" in usage.expr
    assert "offset 2m" in usage.expr


@pytest.mark.parametrize(
    ("seconds", "text"),
    [
        pytest.param(7200, "2h", id="hours"),
        pytest.param(90, "90s", id="seconds"),
        pytest.param(120, "2m", id="minutes"),
        pytest.param(1.5, "1500ms", id="millis"),
    ],
)
def test_duration(seconds: float, text: str) -> None:
    assert duration(seconds) == text


@pytest.mark.parametrize(
    ("for_seconds", "step"),
    [
        pytest.param(5, "1s", id="floor-1s"),
        pytest.param(120, "12s", id="tenth"),
        pytest.param(3600, "1m", id="cap-1m"),
    ],
)
def test_subquery_step(for_seconds: float, step: str) -> None:
    assert subquery_step(for_seconds) == step


def risk(**fields: object) -> OomRiskSpec:
    return OomRiskSpec.model_validate(fields)


def test_policies_with_one_rule_share_the_namespace_queries() -> None:
    policies = [
        PolicyRisk(name=f"p{i}", risk=risk(), containers=None, min_limit=(i + 1) * 2**30)
        for i in range(10)
    ]
    batched = namespace_queries(policies, namespace="shop", windows=W)
    # Ten policies, the queries of one: usage, time to limit, OOM events.
    assert [q.signal for q, _ in batched] == ["usageRatio", "timeToLimit", "oomKilled"]
    assert all(readers == tuple(f"p{i}" for i in range(10)) for _, readers in batched)
    # The shared query keeps the smallest limit of its readers: a superset of each one's.
    usage, _ = batched[0]
    alone = policy_queries(risk(), namespace="shop", containers=None, windows=W, min_limit=2**30)
    assert usage == alone[0]


def test_container_lists_are_unioned_and_other_rules_get_their_own_query() -> None:
    policies = [
        PolicyRisk(name="a", risk=risk(), containers=("app",), min_limit=None),
        PolicyRisk(name="b", risk=risk(), containers=("worker",), min_limit=None),
        PolicyRisk(name="strict", risk=risk(usageRatio=0.5), containers=None, min_limit=None),
    ]
    batched = namespace_queries(policies, namespace="shop", windows=W)
    by_readers = {(q.signal, readers): q for q, readers in batched}
    shared = by_readers[("usageRatio", ("a", "b"))]
    assert 'container=~"app|worker"' in shared.expr
    assert by_readers[("usageRatio", ("strict",))].threshold == 0.5
    # Time to limit and OOM events do not depend on usageRatio: all three share them, over
    # every container (one of them names none).
    assert "container=~" not in by_readers[("oomKilled", ("a", "b", "strict"))].expr


# -- the recorded forms: the same signals over memwarden's recording rules (rules.py) ------

#: Rules recorded for ten minutes, over the operator's windows, predicting at 10m.
REC = Recorded(windows=W, horizons=("10m",), seconds=600)
RWS = 'memwarden:container_memory_working_set_bytes{namespace="shop"}'
BY = "max by (namespace, pod, container)"


def test_recorded_usage_query() -> None:
    query = usage_query(
        namespace="shop", containers=None, for_="2m", threshold=0.9, min_limit=1000, recorded=REC
    )
    assert query.recorded
    assert query.expr == f"{BY} (min_over_time({RWS}[2m]) >= 900 and {RWS} offset 2m)"


def test_recorded_time_to_limit_query_reads_the_recorded_prediction() -> None:
    query = time_to_limit_query(
        namespace="shop",
        containers=["app"],
        for_="2m",
        horizon="600s",
        windows=W,
        min_limit=1000,
        recorded=REC,
    )
    assert (query.recorded, query.parts, query.threshold) == (
        True,
        ("held", "predicted", "slope"),
        600.0,
    )
    app = 'namespace="shop",container=~"app"'
    ws = f"memwarden:container_memory_working_set_bytes{{{app}}}"
    predicted = (
        f'memwarden:container_memory_working_set_bytes:predict_linear5m{{{app},horizon="10m"}}'
    )
    deriv = f"memwarden:container_memory_working_set_bytes:deriv5m{{{app}}}"
    on = "on (namespace, pod, container)"
    # No regression, rate or subquery at query time: the rules fitted once per evaluation.
    assert query.expr == (
        f"label_replace({BY} (min_over_time({predicted}[2m]) >= 1000 and {on} {ws} offset 2m), "
        '"memwarden_part", "held", "", "") '
        f'or label_replace({BY} ({predicted} >= 1000), "memwarden_part", "predicted", "", "") '
        f"or label_replace({BY} ({deriv} and {on} {predicted} >= 1000), "
        '"memwarden_part", "slope", "", "")'
    )


def test_recorded_rate_and_oom_queries() -> None:
    faults = major_faults_query(
        namespace="shop", containers=None, for_="2m", threshold=50, windows=W, recorded=REC
    )
    rate = 'memwarden:container_memory_major_faults:rate1m{namespace="shop"}'
    assert faults.expr == f"{BY} (min_over_time({rate}[2m]) >= 50 and {rate} offset 2m)"
    psi = pressure_query(
        namespace="shop", containers=None, for_="30s", threshold=0.2, windows=W, recorded=REC
    )
    stall = 'memwarden:container_pressure_memory_waiting_seconds:rate1m{namespace="shop"}'
    assert psi.expr == f"{BY} (min_over_time({stall}[30s]) >= 0.2 and {stall} offset 30s)"
    oom = oom_events_query(namespace="shop", containers=None, windows=W, recorded=REC)
    assert oom.expr == f'{BY} (memwarden:container_oom_events:increase5m{{namespace="shop"}}) > 0'
    assert faults.recorded and psi.recorded and oom.recorded


def test_recorded_names_carry_the_rules_spelling_of_the_windows() -> None:
    spelled = Recorded(windows=Windows(regression="300s", rate="1m", oom="5m"), horizons=("600s",))
    query = time_to_limit_query(
        namespace="shop", containers=None, for_="2m", horizon="10m", windows=W, recorded=spelled
    )
    assert 'predict_linear300s{namespace="shop",horizon="600s"}' in query.expr


@pytest.mark.parametrize(
    ("recorded", "risk_fields", "expected"),
    [
        pytest.param(None, {}, [False, False, False], id="no-rules"),
        pytest.param(REC, {}, [True, True, True], id="rules-cover-for"),
        pytest.param(
            Recorded(windows=W, horizons=("10m",), seconds=119),
            {},
            [False, False, True],
            id="rules-younger-than-for",
        ),
        pytest.param(REC, {"timeToLimit": "30m"}, [True, False, True], id="horizon-not-recorded"),
        pytest.param(
            Recorded(windows=W, horizons=(), seconds=math.inf),
            {},
            [True, False, True],
            id="no-horizons",
        ),
    ],
)
def test_each_query_reads_the_rules_only_where_they_serve_it(
    recorded: Recorded | None, risk_fields: dict[str, object], expected: list[bool]
) -> None:
    """Younger than ``for``, the recorded series would shorten it: raw until they are old
    enough (OOM events have no ``for``); a horizon without a recorded prediction: raw."""
    queries = policy_queries(
        risk(**risk_fields), namespace="shop", containers=None, windows=W, recorded=recorded
    )
    assert [q.signal for q in queries] == ["usageRatio", "timeToLimit", "oomKilled"]
    assert [q.recorded for q in queries] == expected
    assert all(("memwarden:" in q.expr) == q.recorded for q in queries)


def test_policies_share_recorded_queries_and_split_where_the_forms_differ() -> None:
    policies = [
        PolicyRisk(name="a", risk=risk(), containers=("app",), min_limit=2 * 2**30),
        PolicyRisk(name="b", risk=risk(), containers=("worker",), min_limit=2**30),
        # Its 30m horizon is not recorded: its timeToLimit reads raw series, alone.
        PolicyRisk(name="far", risk=risk(timeToLimit="30m"), containers=None, min_limit=None),
    ]
    batched = namespace_queries(policies, namespace="shop", windows=W, recorded=REC)
    by_readers = {(q.signal, readers): q for q, readers in batched}
    assert sorted(by_readers) == [
        ("oomKilled", ("a", "b", "far")),
        ("timeToLimit", ("a", "b")),
        ("timeToLimit", ("far",)),
        ("usageRatio", ("a", "b", "far")),
    ]
    shared = by_readers[("timeToLimit", ("a", "b"))]
    assert shared.recorded and 'container=~"app|worker"' in shared.expr
    assert f">= {2**30}" in shared.expr  # the smallest limit of its readers
    assert not by_readers[("timeToLimit", ("far",))].recorded
    assert by_readers[("usageRatio", ("a", "b", "far"))].recorded
