"""Benchmark: a namespace's risk evaluation cycle over 10, 1,000 and 5,000 pods' series,
with the raw queries and with memwarden's recording rules, in the same run.

A real Prometheus (``/usr/bin/prometheus``) scrapes the test exporter serving every
pod's cAdvisor-style series (1% of the pods leak) and evaluates memwarden's recording
rules (``RuleSet``, every ``RULE_INTERVAL``; their cost is reported beside the cycles).
Each cycle is what the operator's ``evaluate_namespace`` does: join the pods to the
policy (pure), send the namespace's batched queries through the adapter (concurrently,
off the loop), evaluate (pure). Raw
and recorded cycles alternate, so both see the same load; both must find the same
containers. The query count must not move with the pod count. Prints a table and writes
bench/results/risk.json (``results``: raw, ``results_recording_rules``: recorded).
Bounded: about three minutes.

    .venv/bin/python bench/risk_bench.py
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import platform
import statistics
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "operator"), str(HERE.parent / "tests")]

from memwarden.api import OomRiskSpec  # noqa: E402
from memwarden.quantity import parse_duration  # noqa: E402
from memwarden.risk.adapters.prometheus import PrometheusClient  # noqa: E402
from memwarden.risk.promql import PolicyRisk, Recorded, Windows, namespace_queries  # noqa: E402
from memwarden.risk.rules import MARKER, RuleSet, find_recorded  # noqa: E402
from memwarden.risk.signals import evaluate, governed_by_policy, smallest_limit  # noqa: E402
from memwarden.status import pod_view  # noqa: E402
from memwarden_testing.builders import make_candidate, make_container, make_pod  # noqa: E402
from memwarden_testing.cluster import wait_for  # noqa: E402
from memwarden_testing.prometheus import (  # noqa: E402
    ContainerSeries,
    PrometheusServer,
    SeriesExporter,
    flat,
    rising,
)

SIZES = (10, 1_000, 5_000)
CYCLES = 15
"""Cycles per size and form (after one warm-up each): p99 of 15 is their maximum."""
GI = 2**30
MI = 2**20
FOR = "10s"
WINDOWS = Windows(regression="30s", rate="10s", oom="1m")
SCRAPE = "2s"
RULE_INTERVAL = "5s"
"""Half of ``for``, as the docs ask (at most ``for``). Time here runs about 15 times faster
than in a cluster (2 s scrapes for 30 s, 10 s ``for`` for 2 m), but a rule evaluation
costs the same CPU: at the scrape interval the group would take a core of this 2-core
machine from both forms' queries."""
RULES = RuleSet(windows=WINDOWS, horizons=("10m",), interval=RULE_INTERVAL)
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
    client: PrometheusClient,
    *,
    namespace: str,
    views: list[dict[str, Any]],
    recorded: Recorded | None,
) -> dict[str, Any]:
    """One namespace cycle as ``handlers.risk.evaluate_namespace`` runs it."""
    started = time.perf_counter()
    policy = make_candidate(namespace=namespace, match_labels={"app": "checkout"})
    governed = governed_by_policy([policy], pods=views)[policy.name]
    joined = time.perf_counter()
    risks = [
        PolicyRisk(name=policy.name, risk=RISK, containers=None, min_limit=smallest_limit(governed))
    ]
    batched = namespace_queries(risks, namespace=namespace, windows=WINDOWS, recorded=recorded)
    before = client.queries
    results = await asyncio.gather(*(client.aquery(q.expr) for q, _ in batched))
    queried = time.perf_counter()
    findings = evaluate(
        [(q, r) for (q, _), r in zip(batched, results, strict=True)],
        governed=governed,
        policy=policy.name,
    )
    done = time.perf_counter()
    return {
        "total_ms": (done - started) * 1000,
        "join_ms": (joined - started) * 1000,
        "query_ms": (queried - joined) * 1000,
        "evaluate_ms": (done - queried) * 1000,
        "queries": client.queries - before,
        "queries_on_rules": sum(1 for q, _ in batched if q.recorded),
        "series_returned": sum(len(r) for r in results),
        "findings": {(f.pod, f.signal) for f in findings},
        "exprs": [q.expr for q, _ in batched],
    }


def p99(values: list[float]) -> float:
    """Nearest-rank 99th percentile (the maximum below 100 samples)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def row(
    size: int, runs: list[dict[str, Any]], *, mode: str, served: int, eval_ms: list[float]
) -> dict[str, Any]:
    totals = [r["total_ms"] for r in runs]
    last = runs[-1]
    return {
        "pods": size,
        "mode": mode,
        "series_served": served,
        "queries_per_cycle": last["queries"],
        "queries_on_rules": last["queries_on_rules"],
        "series_returned": last["series_returned"],
        "pods_with_findings": len({pod for pod, _ in last["findings"]}),
        "cycle_ms_p50": round(statistics.median(totals), 2),
        "cycle_ms_p99": round(p99(totals), 2),
        "cycle_ms_max": round(max(totals), 2),
        "join_ms_p50": round(statistics.median(r["join_ms"] for r in runs), 2),
        "query_ms_p50": round(statistics.median(r["query_ms"] for r in runs), 2),
        "evaluate_ms_p50": round(statistics.median(r["evaluate_ms"] for r in runs), 2),
        "prometheus_eval_ms_p50": round(statistics.median(eval_ms), 2),
    }


def prometheus_eval_ms(url: str, exprs: list[str]) -> float:
    """Prometheus' own evaluation time of ``exprs`` one after the other (``stats=all``):
    its work for one cycle, without the transfer and the client."""
    total = 0.0
    for expr in exprs:
        query = urllib.parse.urlencode({"query": expr, "stats": "all"})
        with urllib.request.urlopen(f"{url}/api/v1/query?{query}", timeout=60) as response:
            total += float(json.load(response)["data"]["stats"]["timings"]["evalTotalTime"])
    return total * 1000


def rule_group_seconds(url: str) -> float | None:
    """The last evaluation time of the recording group, as Prometheus reports it."""
    with urllib.request.urlopen(f"{url}/api/v1/rules?type=record", timeout=10) as response:
        groups = json.load(response)["data"]["groups"]
    return next((float(g["evaluationTime"]) for g in groups if g["name"] == RULES.name), None)


def main() -> int:
    exporter = SeriesExporter().start()
    workdir = Path(tempfile.mkdtemp(prefix="risk-bench-"))
    prometheus = PrometheusServer(
        workdir=workdir, targets=[exporter.target], scrape_interval=SCRAPE, recording=RULES
    )
    raw_rows, rule_rows, agreement, group_seconds, paired = [], [], {}, [], {}
    try:
        datasets = [pods_and_series(size) for size in SIZES]
        for _, _, series in datasets:
            exporter.set_many(series)
        prometheus.start()
        total = sum(SIZES)
        prometheus.wait_for_series("container_memory_working_set_bytes", count=total, timeout=60)
        client = PrometheusClient(prometheus.url, timeout=30)
        # ``for`` is evaluated by Prometheus: every series, raw and recorded, must have
        # existed for longer than it (the operator waits for the same, find_recorded).
        recorded = wait_for(
            lambda: (
                (found := find_recorded(client.query(MARKER), windows=WINDOWS, now=time.time()))
                and found.seconds > 2 * parse_duration(FOR)
                and found
            ),
            timeout=90,
            interval=1,
            what="recording rules older than twice `for`",
        )
        for (namespace, views, series), size in zip(datasets, SIZES, strict=True):
            served = len(series) * len(series[0].render(time.monotonic()))
            forms: dict[str, Recorded | None] = {"raw": None, "rules": recorded}
            for rules in forms.values():  # warm-up
                asyncio.run(cycle(client, namespace=namespace, views=views, recorded=rules))
            runs: dict[str, list[dict[str, Any]]] = {"raw": [], "rules": []}
            evals: dict[str, list[float]] = {"raw": [], "rules": []}
            for _ in range(CYCLES):
                for mode, rules in forms.items():
                    runs[mode].append(
                        asyncio.run(cycle(client, namespace=namespace, views=views, recorded=rules))
                    )
                for mode in forms:
                    evals[mode].append(prometheus_eval_ms(prometheus.url, runs[mode][-1]["exprs"]))
                seconds = rule_group_seconds(prometheus.url)
                if seconds is not None:
                    group_seconds.append(seconds)
            for rows, mode in ((raw_rows, "raw"), (rule_rows, "rules")):
                rows.append(row(size, runs[mode], mode=mode, served=served, eval_ms=evals[mode]))
            # Cycle i of each form ran back to back: their ratio cancels the load of the
            # moment (other work on this machine comes and goes).
            paired[str(size)] = round(
                statistics.median(
                    a["total_ms"] / b["total_ms"]
                    for a, b in zip(runs["raw"], runs["rules"], strict=True)
                ),
                2,
            )
            same = sum(
                a["findings"] == b["findings"]
                for a, b in zip(runs["raw"], runs["rules"], strict=True)
            )
            agreement[str(size)] = f"{same}/{CYCLES}"
        recorded_series = len(prometheus.query('{__name__=~"memwarden:.+"}'))
    finally:
        prometheus.stop()
        exporter.stop()
    for rows in (raw_rows, rule_rows):
        assert len({r["queries_per_cycle"] for r in rows}) == 1, "query count must not move"
    header = (
        "pods",
        "form",
        "queries",
        "on rules",
        "returned",
        "leaking",
        "p50 ms",
        "p99 ms",
        "join ms",
        "query ms",
        "prom ms",
    )
    print(" | ".join(f"{h:>9}" for h in header))
    for r in [x for pair in zip(raw_rows, rule_rows, strict=True) for x in pair]:
        values = (
            r["pods"],
            r["mode"],
            r["queries_per_cycle"],
            r["queries_on_rules"],
            r["series_returned"],
            r["pods_with_findings"],
            r["cycle_ms_p50"],
            r["cycle_ms_p99"],
            r["join_ms_p50"],
            r["query_ms_p50"],
            r["prometheus_eval_ms_p50"],
        )
        print(" | ".join(f"{v:>9}" for v in values))
    group_ms = round(statistics.median(group_seconds) * 1000, 1) if group_seconds else None
    print(f"raw / rules, median of back-to-back cycle pairs: {paired}")
    print(
        f"same findings both ways (cycle pairs): {agreement}; recording group: "
        f"{group_ms} ms an evaluation every {RULE_INTERVAL} for {total} containers, "
        f"{recorded_series} recorded series"
    )
    out = HERE / "results" / "risk.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "python": platform.python_version(),
                "machine": platform.machine(),
                "cpus": os.cpu_count(),
                "prometheus": f"2.42 (Debian), scrape interval {SCRAPE}, recording rules every "
                f"{RULE_INTERVAL}",
                "signals": [
                    "usageRatio",
                    "timeToLimit",
                    "majorFaultsPerSecond",
                    "pressureRatio",
                    "oomKilled",
                ],
                "for": FOR,
                "cycles": CYCLES,
                "results": raw_rows,
                "results_recording_rules": rule_rows,
                "recording_rules": {
                    "windows": {
                        "regression": WINDOWS.regression,
                        "rate": WINDOWS.rate,
                        "oom": WINDOWS.oom,
                    },
                    "horizons": list(RULES.horizons),
                    "containers": total,
                    "recorded_series": recorded_series,
                    "group_evaluation_ms_p50": group_ms,
                    "evaluation_interval": RULE_INTERVAL,
                },
                "same_findings_cycle_pairs": agreement,
                "speedup_paired_p50": paired,
                "speedup_p50": {
                    str(a["pods"]): round(a["cycle_ms_p50"] / b["cycle_ms_p50"], 2)
                    for a, b in zip(raw_rows, rule_rows, strict=True)
                },
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {out.relative_to(HERE.parent)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
