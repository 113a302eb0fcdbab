"""Benchmark: one policy's risk evaluation cycle over 10, 1,000 and 5,000 pods' series.

A real Prometheus (``/usr/bin/prometheus``) scrapes the test exporter serving every
pod's cAdvisor-style series (1% of the pods leak). Each cycle is what the operator does:
join the pods to the policy (pure), send the policy's queries through the adapter
(concurrently, off the loop), evaluate (pure). The query count must not move with the
pod count. Prints a table and writes bench/results/risk.json. Bounded: about a minute.

    .venv/bin/python bench/risk_bench.py
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "operator"), str(HERE.parent / "tests")]

from memwarden.api import OomRiskSpec  # noqa: E402
from memwarden.risk.prometheus import PrometheusClient  # noqa: E402
from memwarden.risk.promql import Windows, policy_queries  # noqa: E402
from memwarden.risk.signals import evaluate, governed_containers, smallest_limit  # noqa: E402
from memwarden.status import pod_view  # noqa: E402
from memwarden_testing.builders import make_candidate, make_container, make_pod  # noqa: E402
from memwarden_testing.prometheus import (  # noqa: E402
    ContainerSeries,
    PrometheusServer,
    SeriesExporter,
    flat,
    rising,
)

SIZES = (10, 1_000, 5_000)
CYCLES = 7
GI = 2**30
MI = 2**20
FOR = "10s"
WINDOWS = Windows(regression="30s", rate="10s", oom="1m")
RISK = OomRiskSpec.model_validate(
    {
        "usageRatio": 0.9,
        "timeToLimit": "10m",
        "majorFaultsPerSecond": 100,
        "pressureRatio": 0.5,
        "for": FOR,
    }
)


def pods_and_series(size: int) -> tuple[str, list[dict[str, Any]], list[ContainerSeries]]:
    namespace = f"bench-{size}"
    views, series = [], []
    for i in range(size):
        name = f"checkout-{i:05d}"
        pod = make_pod(
            name,
            namespace=namespace,
            labels={"app": "checkout"},
            containers=[make_container(memory_request="512Mi", memory_limit="1Gi")],
        )
        view = pod_view(pod)
        assert view is not None
        views.append(view)
        leaking = i % 100 == 0
        curve = rising(GI / 2, 2 * MI, until=GI) if leaking else flat(GI / 3)
        series.append(
            ContainerSeries(namespace, name, "app", working_set=curve, major_faults_per_second=1.0)
        )
    return namespace, views, series


async def cycle(
    client: PrometheusClient, *, namespace: str, views: list[dict[str, Any]]
) -> dict[str, Any]:
    started = time.perf_counter()
    policy = make_candidate(namespace=namespace, match_labels={"app": "checkout"})
    governed = governed_containers(policy, pods=views, candidates=[policy])
    joined = time.perf_counter()
    queries = policy_queries(
        RISK,
        namespace=namespace,
        containers=None,
        windows=WINDOWS,
        min_limit=smallest_limit(governed),
    )
    before = client.queries
    results = await asyncio.gather(*(client.aquery(q.expr) for q in queries))
    queried = time.perf_counter()
    findings = evaluate(zip(queries, results, strict=True), governed=governed, policy="checkout")
    done = time.perf_counter()
    return {
        "total_ms": (done - started) * 1000,
        "join_ms": (joined - started) * 1000,
        "query_ms": (queried - joined) * 1000,
        "evaluate_ms": (done - queried) * 1000,
        "queries": client.queries - before,
        "series_returned": sum(len(r) for r in results),
        "findings": len(findings),
        "pods_with_findings": len({f.pod for f in findings}),
    }


def main() -> int:
    exporter = SeriesExporter().start()
    workdir = Path(tempfile.mkdtemp(prefix="risk-bench-"))
    prometheus = PrometheusServer(workdir=workdir, targets=[exporter.target], scrape_interval="2s")
    rows = []
    try:
        datasets = [pods_and_series(size) for size in SIZES]
        for _, _, series in datasets:
            exporter.set_many(series)
        prometheus.start()
        total = sum(SIZES)
        prometheus.wait_for_series("container_memory_working_set_bytes", count=total, timeout=60)
        # ``for`` is evaluated by Prometheus: let every series exist for longer than it.
        time.sleep(15)
        client = PrometheusClient(prometheus.url, timeout=30)
        for (namespace, views, _), size in zip(datasets, SIZES, strict=True):
            asyncio.run(cycle(client, namespace=namespace, views=views))  # warm-up
            runs = [
                asyncio.run(cycle(client, namespace=namespace, views=views)) for _ in range(CYCLES)
            ]
            totals = sorted(r["total_ms"] for r in runs)
            last = runs[-1]
            rows.append(
                {
                    "pods": size,
                    "series_served": size * len(datasets[0][2][0].render(time.monotonic())),
                    "queries_per_cycle": last["queries"],
                    "series_returned": last["series_returned"],
                    "pods_with_findings": last["pods_with_findings"],
                    "cycle_ms_p50": round(statistics.median(totals), 2),
                    "cycle_ms_max": round(totals[-1], 2),
                    "join_ms_p50": round(statistics.median(r["join_ms"] for r in runs), 2),
                    "query_ms_p50": round(statistics.median(r["query_ms"] for r in runs), 2),
                    "evaluate_ms_p50": round(statistics.median(r["evaluate_ms"] for r in runs), 2),
                }
            )
    finally:
        prometheus.stop()
        exporter.stop()
    assert len({r["queries_per_cycle"] for r in rows}) == 1, "query count must not depend on pods"
    header = (
        "pods",
        "queries",
        "returned",
        "leaking",
        "cycle p50 ms",
        "max ms",
        "join ms",
        "query ms",
        "eval ms",
    )
    print(" | ".join(f"{h:>12}" for h in header))
    for r in rows:
        values = (
            r["pods"],
            r["queries_per_cycle"],
            r["series_returned"],
            r["pods_with_findings"],
            r["cycle_ms_p50"],
            r["cycle_ms_max"],
            r["join_ms_p50"],
            r["query_ms_p50"],
            r["evaluate_ms_p50"],
        )
        print(" | ".join(f"{v:>12}" for v in values))
    out = HERE / "results" / "risk.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "prometheus": "2.42 (Debian), scrape interval 2s",
                "signals": [
                    "usageRatio",
                    "timeToLimit",
                    "majorFaultsPerSecond",
                    "pressureRatio",
                    "oomKilled",
                ],
                "for": FOR,
                "cycles": CYCLES,
                "results": rows,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
