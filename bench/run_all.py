"""Run every benchmark in turn (``make bench``); each writes bench/results/<name>.json."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = (
    "selection_bench.py",
    "admission_bench.py",
    "admission_busy_bench.py",
    "admission_runtimes_bench.py",
    "scale_bench.py",
    "risk_bench.py",
    "capture_bench.py",
    "update_bench.py",
    "recommend_bench.py",
    "rolling_restart_bench.py",
)


def main() -> int:
    failed = []
    for name in BENCHMARKS:
        print(f"\n== {name}", flush=True)
        if subprocess.run([sys.executable, str(HERE / name)], check=False).returncode != 0:
            failed.append(name)
    if failed:
        print(f"failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
