"""The GC death spiral: a Go heap held just under GOMEMLIMIT, the GC running nearly
nonstop, the working set flat under the container limit. No OOM kill is coming, so no
other signal speaks; ``oomRisk.gcCPURatio`` opens the incident and the capture records a
trace of the spiral.

Real parts as in test_closed_loop.py; Prometheus also scrapes the workload's own Go
runtime metrics, labelled as the pod scrape job of docs/risk.md labels them.
"""

from __future__ import annotations

import tarfile
import time
from pathlib import Path
from typing import Any

from kubernetes import client

from memwarden.api import OomRiskSpec
from memwarden.risk.adapters.prometheus import PrometheusClient
from memwarden.risk.promql import Windows, policy_queries
from memwarden.risk.signals import Governed, evaluate
from memwarden_testing.loop import (
    LIMIT_MI,
    SCRAPED,
    Loop,
    apply,
    collected,
    deployment,
    download_bundle,
    incidents,
    policy,
    running_pod,
)

#: GOMEMLIMIT at 70% of the 200Mi limit: the spiral's heap (and RSS) stays near 140Mi,
#: well under usageRatio's 0.9.
GO_LIMIT = "70%"
GC_RATIO = 0.5
#: The spiral's live heap is retained here (examples/leaky/spiral.go).
HOARDING_FUNCTION = "main.hoardSessionIndex"
#: One P: the spiral burns one core at most on the shared test machine.
ONE_CORE = {"GOMAXPROCS": "1"}


def spiral_policy(namespace: str) -> dict[str, Any]:
    """The scenarios' policy with gcCPURatio on, beside usageRatio and the fault signals.

    timeToLimit is off: the spiral fills its heap at start, and a 5-minute linear fit
    reads that step as a leak for minutes (a start-up fill, not what this test is about).
    """
    body = policy(namespace, oom_risk=False, artifacts=["heap", "goroutine", "trace"])
    body["spec"]["runtime"]["go"]["memoryLimit"] = GO_LIMIT
    body["spec"]["oomRisk"] = {
        "usageRatio": 0.9,
        "timeToLimit": "0s",
        "majorFaultsPerSecond": 50,
        "pressureRatio": 0.2,
        "gcCPURatio": GC_RATIO,
        "for": "3s",
    }
    return body


def other_signals_holding(loop: Loop, namespace: str, pod: str) -> list[Any]:
    """What the policy's other signals (usage, faults, PSI, OOM events) find on ``pod``
    now, through memwarden's own queries and signal maths."""
    spec = spiral_policy(namespace)["spec"]["oomRisk"]
    others = OomRiskSpec.model_validate({**spec, "gcCPURatio": None})
    queries = policy_queries(others, namespace=namespace, containers=None, windows=Windows())
    prometheus = PrometheusClient(loop.prometheus_url)
    try:
        results = [(q, prometheus.query(q.expr)) for q in queries]
    finally:
        prometheus.close()
    governed = {
        (namespace, pod, "app"): Governed(namespace, pod, "app", limit_bytes=LIMIT_MI * 2**20)
    }
    return evaluate(results, governed=governed, policy="go-services")


def test_a_gc_death_spiral_opens_an_incident_on_gc_cpu_ratio_alone(
    loop: Loop, namespace: str, tmp_path: Path
) -> None:
    apply(loop, spiral_policy(namespace))
    apps = client.AppsV1Api(loop.kube)
    for name, pattern in (("spiral", "spiral"), ("calm", "none")):
        body = deployment(loop, name, pattern=pattern, env=ONE_CORE, annotations=SCRAPED)
        apps.create_namespaced_deployment(namespace, body)
    spiral, calm = running_pod(loop, namespace, "spiral"), running_pod(loop, namespace, "calm")
    loop.scrape(spiral)
    loop.scrape(calm)
    name = spiral["metadata"]["name"]

    started = time.monotonic()
    incident = collected(loop, namespace, name, timeout=120)
    print(f"gc spiral: incident collected {time.monotonic() - started:.1f}s after Running,")

    trigger = incident["spec"]["trigger"]
    assert (trigger["source"], trigger["signal"]) == ("prometheus", "gcCPURatio")
    assert trigger["value"] >= GC_RATIO and trigger["threshold"] == GC_RATIO
    print(f"gc spiral: GC CPU share {trigger['value']} held for 3s (threshold {GC_RATIO})")
    # No other signal holds: the working set stayed under usageRatio all along.
    assert other_signals_holding(loop, namespace, name) == []
    highest = query_value(
        loop,
        f'max_over_time(container_memory_working_set_bytes{{namespace="{namespace}",'
        f'pod="{name}",container="app"}}[10m])',
    )
    assert 0 < highest < 0.9 * LIMIT_MI * 2**20, highest
    # The calm pod, scraped the same way under the same policy, opened nothing.
    calm_gc = f'go_cpu_classes_gc_total_cpu_seconds_total{{pod="{calm["metadata"]["name"]}"}}'
    assert query_value(loop, f"count({calm_gc})") == 1
    assert [i["spec"]["pod"] for i in incidents(loop, namespace)] == [name]

    # The evidence: a trace of the spiral, and a heap profile naming what holds the heap.
    status = incident["status"]
    records = {a["name"]: a for a in status["artifacts"]}
    assert records["trace"].get("error") is None and records["trace"]["bytes"] > 0
    assert status["analysis"]["top"][0]["function"] == HOARDING_FUNCTION
    bundle = download_bundle(loop, namespace, incident["metadata"]["name"], tmp_path)
    with tarfile.open(bundle) as archive:
        members = {Path(m.name).name: m for m in archive.getmembers()}
        assert {"manifest.json", "heap.pb.gz", "trace.out"} <= set(members)
        trace = archive.extractfile(members["trace.out"])
        assert trace is not None and trace.read(16).startswith(b"go 1.")


def query_value(loop: Loop, expr: str) -> float:
    """One instant query's single value (0 when it returns nothing)."""
    prometheus = PrometheusClient(loop.prometheus_url)
    try:
        samples = prometheus.query(expr)
    finally:
        prometheus.close()
    return samples[0].value if samples else 0.0
