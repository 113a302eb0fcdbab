"""Benchmark: time to find the governing policy for one pod, 1,000 policies, 10,000 pods.

Two layouts: the worst case (all 1,000 policies in the pod's namespace) and a spread one
(10 policies in each of 100 namespaces). Prints a table and writes
bench/results/selection.json.

    .venv/bin/python bench/selection_bench.py
"""

from __future__ import annotations

import json
import platform
import random
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "operator")]

from memwarden.api import MemoryPolicySpec  # noqa: E402
from memwarden.selection import Candidate, PolicyIndex  # noqa: E402

POLICIES = 1_000
PODS = 10_000


def build(namespaces: int) -> tuple[PolicyIndex, list[tuple[str, dict[str, str]]]]:
    rng = random.Random(42)
    index = PolicyIndex()
    per_ns = POLICIES // namespaces
    for n in range(namespaces):
        table = []
        for p in range(per_ns):
            spec = MemoryPolicySpec.model_validate(
                {
                    "selector": {
                        "matchLabels": {"app": f"app-{p}"},
                        "matchExpressions": [
                            {"key": "tier", "operator": "In", "values": ["web", "api"]}
                        ],
                    },
                    "priority": rng.randint(-5, 5),
                    "memory": {"request": "256Mi", "limit": "512Mi"},
                }
            )
            table.append(
                Candidate(
                    namespace=f"ns-{n}",
                    name=f"policy-{p}",
                    created=f"2026-11-{1 + p % 28:02d}T00:00:00Z",
                    spec=spec,
                )
            )
        index.swap_namespace(f"ns-{n}", table)
    pods = [
        (
            f"ns-{rng.randrange(namespaces)}",
            {
                "app": f"app-{rng.randrange(per_ns * 2)}",
                "tier": rng.choice(["web", "api", "batch"]),
                "pod-template-hash": f"{rng.getrandbits(32):08x}",
            },
        )
        for _ in range(PODS)
    ]
    return index, pods


def measure(namespaces: int) -> dict[str, float]:
    index, pods = build(namespaces)
    timings = []
    governed = 0
    for namespace, labels in pods:
        started = time.perf_counter_ns()
        selection = index.select(namespace=namespace, labels=labels, container_names=["app"])
        timings.append(time.perf_counter_ns() - started)
        governed += selection.winner is not None
    timings.sort()
    return {
        "namespaces": namespaces,
        "policies": len(index),
        "pods": len(pods),
        "governed_pods": governed,
        "mean_us": statistics.fmean(timings) / 1000,
        "p50_us": timings[len(timings) // 2] / 1000,
        "p99_us": timings[int(len(timings) * 0.99)] / 1000,
        "total_ms": sum(timings) / 1e6,
    }


def main() -> None:
    results = [measure(1), measure(100)]
    print(f"{'layout':30} {'mean µs':>10} {'p50 µs':>10} {'p99 µs':>10} {'10k pods ms':>12}")
    for r in results:
        layout = f"{r['policies']} policies / {r['namespaces']} ns"
        print(
            f"{layout:30} {r['mean_us']:10.1f} {r['p50_us']:10.1f} "
            f"{r['p99_us']:10.1f} {r['total_ms']:12.1f}"
        )
    out = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": __import__("os").cpu_count(),
        "results": results,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "selection.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
