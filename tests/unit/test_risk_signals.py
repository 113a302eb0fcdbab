"""Signal math: results joined to governed containers and their limits, thresholds applied."""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import pytest

from memwarden.api import OomRiskSpec
from memwarden.risk.promql import Query, Sample, Windows, policy_queries
from memwarden.risk.signals import (
    Governed,
    evaluate,
    governed_by_policy,
    governed_containers,
    oom_killed,
    seconds_to_limit,
)
from memwarden.status import pod_view
from memwarden_testing.builders import make_candidate, make_container, make_pod

pytestmark = pytest.mark.unit

GI = 2**30
NS = "shop"
APP = Governed(namespace=NS, pod="p1", container="app", limit_bytes=GI)
NOLIMIT = Governed(namespace=NS, pod="p2", container="app", limit_bytes=None)
GOVERNED = {g.key: g for g in (APP, NOLIMIT)}


def sample(value: float, pod: str = "p1", container: str = "app", **extra: str) -> Sample:
    return Sample(
        labels={"namespace": NS, "pod": pod, "container": container, **extra}, value=value
    )


def run(query: Query, samples: list[Sample]) -> list[tuple[str, str, float | None]]:
    findings = evaluate([(query, samples)], governed=GOVERNED, policy="checkout")
    assert all(f.policy == "checkout" and f.source == "prometheus" for f in findings)
    return [(f.pod, f.signal, f.value) for f in findings]


USAGE = Query(signal="usageRatio", expr="", threshold=0.9)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param([sample(0.95 * GI)], [("p1", "usageRatio", 0.95)], id="above"),
        pytest.param([sample(0.9 * GI)], [("p1", "usageRatio", 0.9)], id="at-threshold"),
        pytest.param([sample(0.5 * GI)], [], id="below"),
        pytest.param([sample(2 * GI, pod="p2")], [], id="no-limit-no-ratio"),
        pytest.param([sample(GI, pod="stranger")], [], id="ungoverned-pod"),
        pytest.param([sample(GI, container="other")], [], id="ungoverned-container"),
        pytest.param([sample(math.nan)], [], id="nan"),
        pytest.param(
            [Sample(labels={"namespace": NS, "pod": "p1"}, value=GI)], [], id="no-container-label"
        ),
    ],
)
def test_usage_ratio(samples: list[Sample], expected: list[tuple[str, str, float]]) -> None:
    assert run(USAGE, samples) == expected


TTL = Query(signal="timeToLimit", expr="", threshold=600.0, parts=("held", "predicted", "slope"))
MIB = 2**20


def ttl(held: float, now: float, slope: float) -> list[Sample]:
    """The parts for a fit at ``now`` rising by ``slope``: Prometheus sends the prediction
    at the horizon (600 s), ``now + 600 × slope``."""
    return [
        sample(held, memwarden_part="held"),
        sample(now + 600 * slope, memwarden_part="predicted"),
        sample(slope, memwarden_part="slope"),
    ]


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param(
            ttl(held=GI + MIB, now=GI - 300 * MIB, slope=MIB),
            [("p1", "timeToLimit", 300.0)],
            id="300s-left",
        ),
        pytest.param(ttl(held=GI - 1, now=GI - 300 * MIB, slope=MIB), [], id="not-held"),
        pytest.param(
            ttl(held=GI, now=GI + 1, slope=0), [("p1", "timeToLimit", 0.0)], id="already-there"
        ),
        pytest.param(
            ttl(held=GI + 1, now=GI - 300 * MIB, slope=0),
            [("p1", "timeToLimit", 600.0)],
            id="flattened-since-capped-at-horizon",
        ),
        pytest.param(
            ttl(held=GI + 1, now=0, slope=MIB)[:1],
            [("p1", "timeToLimit", 600.0)],
            id="only-held-part-says-within-horizon",
        ),
    ],
)
def test_time_to_limit(samples: list[Sample], expected: list[tuple[str, str, float]]) -> None:
    assert run(TTL, samples) == expected


@pytest.mark.parametrize(
    ("fitted", "slope", "expected"),
    [
        pytest.param(GI - 600 * MIB, 2 * MIB, 300.0, id="rising"),
        pytest.param(GI, MIB, 0.0, id="at-limit"),
        pytest.param(GI / 2, 0.0, math.inf, id="flat"),
        pytest.param(GI / 2, -MIB, math.inf, id="falling"),
    ],
)
def test_seconds_to_limit(fitted: float, slope: float, expected: float) -> None:
    assert seconds_to_limit(fitted_now=fitted, slope=slope, limit=GI) == expected


@pytest.mark.parametrize(
    ("signal", "threshold", "value", "holds"),
    [
        pytest.param("majorFaultsPerSecond", 50.0, 75.5, True, id="faults-above"),
        pytest.param("majorFaultsPerSecond", 50.0, 49.9, False, id="faults-below"),
        pytest.param("pressureRatio", 0.2, 0.25, True, id="psi-above"),
        pytest.param("pressureRatio", 0.2, 0.0, False, id="psi-idle"),
        pytest.param("gcCPURatio", 0.5, 0.86, True, id="gc-spiral"),
        pytest.param("gcCPURatio", 0.5, 0.5, True, id="gc-at-threshold"),
        pytest.param("gcCPURatio", 0.5, 0.06, False, id="gc-busy-far-from-limit"),
    ],
)
def test_rates(signal: str, threshold: float, value: float, holds: bool) -> None:
    query = Query(signal=signal, expr="", threshold=threshold)  # type: ignore[arg-type]
    assert run(query, [sample(value)]) == ([("p1", signal, value)] if holds else [])


@pytest.mark.parametrize(
    ("increase", "expected"),
    [
        pytest.param(1.0, [("p2", "oomKilled", 1.0)], id="one-kill"),
        pytest.param(0.97, [("p2", "oomKilled", 1.0)], id="extrapolated-rounds-up"),
        pytest.param(2.4, [("p2", "oomKilled", 3.0)], id="partial-rounds-up"),
        pytest.param(0.0, [], id="none"),
    ],
)
def test_oom_events_need_no_limit(increase: float, expected: list[tuple[str, str, float]]) -> None:
    query = Query(signal="oomKilled", expr="", threshold=0.0)
    assert run(query, [sample(increase, pod="p2")]) == expected


GC = Query(signal="gcCPURatio", expr="", threshold=0.5)


@pytest.mark.parametrize(
    ("samples", "expected"),
    [
        pytest.param([sample(0.94)], [("p1", "gcCPURatio", 0.94)], id="spiral"),
        pytest.param([sample(0.9, pod="p2")], [("p2", "gcCPURatio", 0.9)], id="needs-no-limit"),
        pytest.param([sample(0.03)], [], id="busy-far-from-limit"),
        pytest.param([sample(0.99, pod="stranger")], [], id="ungoverned-pod"),
        pytest.param([sample(math.nan), sample(math.inf, pod="p2")], [], id="no-cpu-counted"),
    ],
)
def test_gc_cpu_ratio(samples: list[Sample], expected: list[tuple[str, str, float]]) -> None:
    """The share is a plain threshold, with or without a memory limit (GOMEMLIMIT, not the
    limit, is what the heap is near); a total CPU rate of 0 gives NaN or Inf: ignored."""
    assert run(GC, samples) == expected


def test_a_full_container_is_reported_as_full_before_its_gc_spiral() -> None:
    """Where both hold, the working set near the limit is the more certain news."""
    findings = evaluate(
        [(GC, [sample(0.9)]), (USAGE, [sample(0.95 * GI)])], governed=GOVERNED, policy="c"
    )
    assert [f.signal for f in findings] == ["usageRatio", "gcCPURatio"]


def test_findings_are_sorted_most_certain_first() -> None:
    results = [
        (USAGE, [sample(0.95 * GI)]),
        (Query(signal="oomKilled", expr="", threshold=0.0), [sample(1)]),
    ]
    findings = evaluate(results, governed=GOVERNED, policy="checkout")
    assert [f.signal for f in findings] == ["oomKilled", "usageRatio"]


def pods(count: int) -> list[dict[str, Any]]:
    views = []
    for i in range(count):
        pod = make_pod(
            f"checkout-{i}",
            namespace=NS,
            labels={"app": "checkout"},
            containers=[make_container(memory_limit="1Gi"), make_container("sidecar")],
        )
        view = pod_view(pod)
        assert view is not None
        views.append(view)
    return views


def test_governed_containers_carry_limits() -> None:
    policy = make_candidate(namespace=NS, containers=["app"])
    governed = governed_containers(policy, pods=pods(2), candidates=[policy])
    assert sorted(governed) == [(NS, "checkout-0", "app"), (NS, "checkout-1", "app")]
    assert {g.limit_bytes for g in governed.values()} == {GI}


def test_pods_of_a_winning_policy_are_not_governed_by_the_loser() -> None:
    loser = make_candidate("loser", namespace=NS, priority=0)
    winner = make_candidate("winner", namespace=NS, priority=10)
    assert governed_containers(loser, pods=pods(1), candidates=[loser, winner]) == {}
    assert governed_containers(winner, pods=pods(1), candidates=[loser, winner])


@pytest.mark.parametrize("count", [pytest.param(10, id="10-pods"), pytest.param(1000, id="1000")])
def test_query_count_ignores_pod_count(count: int) -> None:
    """The queries of a cycle depend on the policy only: the pods are joined client-side."""
    policy = make_candidate(namespace=NS)
    governed = governed_containers(policy, pods=pods(count), candidates=[policy])
    assert len(governed) == 2 * count
    risk = OomRiskSpec(majorFaultsPerSecond=10, pressureRatio=0.5, gcCPURatio=0.5)
    queries = policy_queries(risk, namespace=NS, containers=None, windows=Windows())
    assert len(queries) == 6
    assert not any(f"checkout-{i}" in q.expr for q in queries for i in range(count))


NOW = dt.datetime(2026, 11, 25, 18, 0, tzinfo=dt.UTC)


def oom_pod(
    *, finished: str, reason: str = "OOMKilled", which: str = "lastState"
) -> dict[str, Any]:
    pod = make_pod("p1", namespace=NS, labels={"app": "checkout"})
    pod["status"] = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "app",
                "restartCount": 3,
                which: {"terminated": {"reason": reason, "finishedAt": finished, "exitCode": 137}},
                "image": "x",
            }
        ],
    }
    view = pod_view(pod)
    assert view is not None
    return view


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        pytest.param(oom_pod(finished="2026-11-25T17:58:00Z"), 1, id="recent-kill"),
        pytest.param(oom_pod(finished="2026-11-25T17:58:00Z", which="state"), 1, id="terminated"),
        pytest.param(oom_pod(finished="2026-11-25T17:00:00Z"), 0, id="old-kill"),
        pytest.param(oom_pod(finished="2026-11-25T17:58:00Z", reason="Error"), 0, id="not-oom"),
        pytest.param(oom_pod(finished="garbage"), 0, id="bad-time"),
    ],
)
def test_oom_killed_from_pod_status(pod: dict[str, Any], expected: int) -> None:
    governed = {APP.key: APP}
    found = oom_killed(
        [pod], governed=governed, policy="checkout", now=NOW, within=dt.timedelta(minutes=5)
    )
    assert len(found) == expected
    assert all(
        (f.source, f.signal, f.container) == ("oomkilled", "oomKilled", "app") for f in found
    )


def test_pod_view_keeps_only_oom_statuses() -> None:
    view = oom_pod(finished="2026-11-25T17:58:00Z")
    assert view["status"] == {
        "containerStatuses": [
            {
                "name": "app",
                "lastState": {
                    "terminated": {"reason": "OOMKilled", "finishedAt": "2026-11-25T17:58:00Z"}
                },
            }
        ]
    }
    assert "status" not in oom_pod(finished="2026-11-25T17:58:00Z", reason="Error")


def test_one_pass_gives_every_policy_what_governed_containers_gives_it() -> None:
    loser = make_candidate("loser", namespace=NS, priority=0)
    winner = make_candidate("winner", namespace=NS, priority=10, containers=["app"])
    other = make_candidate("other", namespace=NS, match_labels={"app": "batch"})
    policies = [loser, winner, other]
    everything = governed_by_policy(policies, pods=pods(3))
    for policy in policies:
        assert everything[policy.name] == governed_containers(
            policy, pods=pods(3), candidates=policies
        )
    assert len(everything["winner"]) == 3 and everything["loser"] == {}
