"""Benchmark: ``memwarden recommend`` over N workloads x 7 days of 30 s samples.

The history (one pod per workload, a daily cycle each, 1 % leaking) is generated as
OpenMetrics by the test generator (tests/memwarden_testing/history.py), backfilled with
``promtool tsdb create-blocks-from openmetrics`` into a fresh Prometheus (Debian's 2.42),
and ``recommend`` runs against it in this process (``commands/recommend.compute``: the
four namespace queries, then the pure math) ``RUNS`` times. Prints and writes
bench/results/recommend.json: the wall time of each run, the Prometheus queries per run
(must not move with N), and the time the preparation took.

    .venv/bin/python bench/recommend_bench.py                 # 1,000 workloads
    .venv/bin/python bench/recommend_bench.py --workloads 100 --output recommend_100.json
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent / "operator"), str(HERE.parent / "tests")]

from memwarden.commands import recommend as command  # noqa: E402
from memwarden.history import history_queries  # noqa: E402
from memwarden.risk.adapters.prometheus import PrometheusClient  # noqa: E402
from memwarden_testing.history import (  # noqa: E402
    DAY,
    MIB,
    Workload,
    backfill,
    daily_cycle,
    growing,
    write_openmetrics,
)
from memwarden_testing.prometheus import PrometheusServer  # noqa: E402

NAMESPACE = "bench"
RUNS = 3
INTERVAL = 30.0


def workloads(count: int) -> list[Workload]:
    """``count`` one-pod Deployments of 100-1,099 MiB with a daily cycle; 1 % leak."""
    result = []
    for i in range(count):
        name = f"svc{i:05d}"
        if i % 100 == 99:
            curve = growing(start=100 * MIB + i * 1024, per_hour=2 * MIB)
        else:
            curve = daily_cycle(base=(100 + i % 1000) * MIB, amplitude=(10 + i % 50) * MIB)
        result.append(Workload(kind="Deployment", name=name, curve=curve))
    return result


def prepare(
    workdir: Path, *, options: argparse.Namespace, end: int, prepared: dict[str, float]
) -> int:
    """Generate the OpenMetrics text and backfill it into ``workdir/data``; samples written."""
    text = workdir / "history.om.txt"
    started = time.perf_counter()
    written = write_openmetrics(
        text,
        workloads(options.workloads),
        namespace=NAMESPACE,
        start=end - options.days * DAY,
        end=end,
        interval=INTERVAL,
    )
    prepared["generate_s"] = time.perf_counter() - started
    prepared["openmetrics_mib"] = text.stat().st_size / MIB
    print(
        f"generated {written:,} working-set samples"
        f" ({prepared['openmetrics_mib']:.0f} MiB) in {prepared['generate_s']:.1f} s",
        flush=True,
    )
    started = time.perf_counter()
    backfill(text, workdir / "data", timeout=6 * 3600)
    prepared["backfill_s"] = time.perf_counter() - started
    text.unlink()
    print(f"promtool backfill: {prepared['backfill_s']:.1f} s", flush=True)
    return written


def _rss_mib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workloads", type=int, default=1000)
    parser.add_argument("--days", type=int, default=7)
    parser.add_argument("--output", default="recommend.json")
    parser.add_argument(
        "--data",
        type=Path,
        help="keep the backfilled Prometheus data here, and reuse it when it is there"
        " (the backfill is most of the run: 11 min for 1,000 workloads here)",
    )
    options = parser.parse_args()
    window = options.days * DAY
    per_query: dict[str, float] = {}
    end = (int(time.time()) // 3600 - 1) * 3600
    prepared: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="recommend-bench-") as tmp:
        workdir = options.data or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        stamp = workdir / "end.json"
        if stamp.exists():
            kept = json.loads(stamp.read_text())
            end, written = kept["end"], kept["written"]
            if kept["workloads"] != options.workloads or kept["days"] != options.days:
                parser.error(
                    f"--data {workdir} holds {kept['workloads']} workloads x {kept['days']} d"
                )
            print(f"reusing {workdir} (history ending {end})", flush=True)
        else:
            written = prepare(workdir, options=options, end=end, prepared=prepared)
            stamp.write_text(
                json.dumps(
                    {
                        "end": end,
                        "written": written,
                        "workloads": options.workloads,
                        "days": options.days,
                    }
                )
            )
        server = PrometheusServer(workdir=workdir, targets=[], retention="400d")
        started = time.perf_counter()
        server.start(timeout=1800)
        prepared["prometheus_start_s"] = time.perf_counter() - started
        runs: list[dict[str, Any]] = []
        try:
            args = command_args(server.url, end=end, days=options.days)
            for run in range(RUNS + 1):  # the first warms Prometheus' page cache
                started = time.perf_counter()
                cpu = resource.getrusage(resource.RUSAGE_SELF)
                found, history = command.compute(args)
                after = resource.getrusage(resource.RUSAGE_SELF)
                wall = time.perf_counter() - started
                entry = {
                    "warmup": run == 0,
                    "wall_s": round(wall, 3),
                    "client_cpu_s": round(
                        (after.ru_utime - cpu.ru_utime) + (after.ru_stime - cpu.ru_stime), 3
                    ),
                    "queries": history.queries,
                    "workloads": len(found),
                    "leaking": sum(1 for w in found if w.leaking),
                    "prometheus_rss_mib": round(_rss_mib(server.process.pid), 1)
                    if server.process
                    else None,
                    "load1": round(os.getloadavg()[0], 2),
                }
                runs.append(entry)
                print(json.dumps(entry), flush=True)
            per_query = time_each_query(server.url, end=end, window=window)
            print(f"seconds per query: {per_query}", flush=True)
        finally:
            server.stop()
    measured = [r for r in runs if not r["warmup"]]
    result = {
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cpus": os.cpu_count(),
        "prometheus": "2.42 (Debian), backfilled with promtool, 24h blocks",
        "workloads": options.workloads,
        "pods_per_workload": 1,
        "days": options.days,
        "sample_interval_s": INTERVAL,
        "working_set_samples": written,
        "prepare": {k: round(v, 1) for k, v in prepared.items()},
        "runs": runs,
        "wall_s_median": round(statistics.median(r["wall_s"] for r in measured), 3),
        "queries_per_run": measured[0]["queries"],
        "seconds_per_query": per_query,
        "note": "other engineers' work shared the 2 cores: load1 is the load average at each run",
    }
    out = HERE / "results" / options.output
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"{options.workloads} workloads x {options.days} d: recommend {result['wall_s_median']} s"
        f" (median of {RUNS}), {result['queries_per_run']} Prometheus queries; wrote {out}"
    )
    return 0


def time_each_query(url: str, *, end: int, window: float) -> dict[str, float]:
    """Each of recommend's queries alone (the same PromQL, through the same adapter)."""
    client = PrometheusClient(url, timeout=600)
    at = dt.datetime.fromtimestamp(end, dt.UTC)
    result = {}
    try:
        for name, expr in history_queries(NAMESPACE, window=window).items():
            started = time.perf_counter()
            if name == "hourly":
                start = at - dt.timedelta(seconds=window - 3600)
                client.query_range(expr, start=start, end=at, step=3600)
            else:
                client.query(expr, time=at)
            result[name] = round(time.perf_counter() - started, 3)
    finally:
        client.close()
    return result


def command_args(url: str, *, end: int, days: int) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    return parser.parse_args(
        [
            "--prometheus",
            url,
            "-n",
            NAMESPACE,
            "--end",
            str(end),
            "--window",
            f"{days}d",
            "--timeout",
            "600",
        ]
    )


if __name__ == "__main__":
    sys.exit(main())
