"""Benchmark: the Go GC's CPU share before and during a GC death spiral (oomRisk.gcCPURatio).

Runs the leaky workload (``hack/build-leaky.sh``, or ``$MEMWARDEN_LEAKY_BIN``) one
scenario at a time, each with GOMEMLIMIT=140MiB (the e2e's: 70% of a 200Mi limit), and
reads its own /metrics twice, ``--seconds`` apart, after a warm-up:

- ``idle``: pattern none (0.5 MiB/s of request garbage, 8 MiB live);
- ``busy-far``: the spiral's garbage rate with a 40 MiB live heap (far from the limit);
- ``spiral``: the live heap at 90% of GOMEMLIMIT, the same garbage rate.

For each: the GC CPU share as gcCPURatio computes it (rate of
``go_cpu_classes_gc_total_cpu_seconds_total`` / rate of
``go_cpu_classes_total_cpu_seconds_total``), the share without idle mark workers, the heap
goal and live heap as shares of GOMEMLIMIT, RSS, and the process's CPU (cores).

    .venv/bin/python bench/gc_spiral.py    # writes bench/results/gc_spiral.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
LIMIT = 140 * 2**20

SCENARIOS: dict[str, dict[str, str]] = {
    "idle": {"LEAKY_PATTERN": "none"},
    "busy-far": {"LEAKY_PATTERN": "spiral", "LEAKY_MAX": "40Mi"},
    "spiral": {"LEAKY_PATTERN": "spiral"},
}


def leaky_binary() -> str:
    explicit = os.environ.get("MEMWARDEN_LEAKY_BIN")
    if explicit:
        return explicit
    built = subprocess.run(
        [str(REPO / "hack" / "build-leaky.sh")], capture_output=True, text=True, check=True
    )
    return built.stdout.strip()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def metrics(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {m[1]: float(m[2]) for m in re.finditer(r"^(\w+) (\S+)$", text, re.MULTILINE)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wait_listening(port: int, deadline: float) -> None:
    while True:
        try:
            metrics(port)
            return
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def measure(
    binary: str, env: dict[str, str], *, procs: int, rate: str, warmup: float, seconds: float
) -> dict[str, Any]:
    port = free_port()
    process = subprocess.Popen(
        [binary],
        env={
            **os.environ,
            **env,
            "GOMEMLIMIT": f"{LIMIT}",
            "GOMAXPROCS": str(procs),
            "LEAKY_RATE": rate,
            "LEAKY_LISTEN": f"127.0.0.1:{port}",
        },
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_listening(port, time.monotonic() + 30)
        time.sleep(warmup)
        before, cpu_before, t0 = metrics(port), cpu_seconds(process.pid), time.monotonic()
        time.sleep(seconds)
        after, cpu_after, t1 = metrics(port), cpu_seconds(process.pid), time.monotonic()
    finally:
        process.terminate()
        process.wait(timeout=10)

    def delta(name: str) -> float:
        return after[name] - before[name]

    total = delta("go_cpu_classes_total_cpu_seconds_total")
    gc = delta("go_cpu_classes_gc_total_cpu_seconds_total")
    idle = delta("go_cpu_classes_gc_mark_idle_cpu_seconds_total")
    return {
        "gomaxprocs": procs,
        "garbage_rate": rate,
        "gc_cpu_share": round(gc / total, 3) if total else None,
        "gc_cpu_share_without_idle_marking": round((gc - idle) / total, 3) if total else None,
        "gc_cycles_per_second": round(delta("go_gc_cycles_total_gc_cycles_total") / (t1 - t0), 1),
        "heap_goal_of_gomemlimit": round(after["go_gc_heap_goal_bytes"] / LIMIT, 3),
        "live_heap_of_gomemlimit": round(after["go_gc_heap_live_bytes"] / LIMIT, 3),
        "rss_mib": round(after["process_resident_memory_bytes"] / 2**20, 1),
        "process_cpu_cores": round((cpu_after - cpu_before) / (t1 - t0), 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=10.0, help="measured window")
    parser.add_argument("--warmup", type=float, default=3.0)
    parser.add_argument("--rate", action="append", help="garbage rates (default 3Mi, 32Mi)")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "gc_spiral.json")
    args = parser.parse_args()
    binary = leaky_binary()
    runs = []
    for procs in (1, 2):
        for rate in args.rate or ["3Mi", "32Mi"]:
            for name, env in SCENARIOS.items():
                if name == "idle" and rate != (args.rate or ["3Mi"])[0]:
                    continue  # idle ignores the rate: once per GOMAXPROCS
                row = {"scenario": name} | measure(
                    binary,
                    env,
                    procs=procs,
                    rate=rate,
                    warmup=args.warmup,
                    seconds=args.seconds,
                )
                runs.append(row)
                print(json.dumps(row))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "gomemlimit_bytes": LIMIT,
                "seconds": args.seconds,
                "machine": {"cpus": os.cpu_count(), "platform": platform.platform()},
                "go": subprocess.run(
                    ["go", "version"], capture_output=True, text=True, check=False
                ).stdout.strip(),
                "runs": runs,
            },
            indent=2,
        )
        + "\n"
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
