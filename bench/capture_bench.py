"""Benchmark: ``memwarden capture`` against leaky with ~100 MiB and ~1 GiB of live heap.

For each size: wall time per artifact (from the bundle's manifest), the time spent
streaming the bundle, the bundle's size, and the toolbox's peak memory: what the
toolbox reports (its own VmHWM; ru_maxrss of its largest child, gdb) and the peak summed
RSS of its process tree polled from /proc every 20 ms. An ephemeral container's memory
counts against the pod it is saving, so these must stay flat as the target grows.
(Not ``wait4``'s ru_maxrss: Linux carries the parent's RSS at fork into the child's
maxrss across exec, so it would measure this benchmark's own interpreter.)

    .venv/bin/python bench/capture_bench.py     # writes bench/results/capture.json

Bounded: each run has a deadline, the whole benchmark takes under 3 minutes.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests")]

from memwarden_testing.leaky import MiB, build_leaky, find_go, run_leaky, wait_leaked  # noqa: E402

SIZES = (("100MiB", 100 * MiB), ("1GiB", 1024 * MiB))
LEAK_RATE = "2Gi"  # per second: 1 GiB in well under a second of leaking, plus page touching
TRACE_SECONDS = 2
RUN_TIMEOUT = 75.0
PAGE = os.sysconf("SC_PAGE_SIZE")


def tree_rss(root: int) -> int:
    """Summed RSS of ``root`` and its descendants, from /proc (0 once it has exited)."""
    children: dict[int, list[int]] = {}
    rss: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            statm = Path(f"/proc/{entry}/statm").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry))
        rss[int(entry)] = int(statm.split()[1]) * PAGE
    total, stack = 0, [root]
    while stack:
        pid = stack.pop()
        total += rss.get(pid, 0)
        stack += children.get(pid, [])
    return total


def read_manifest(bundle: Path) -> dict[str, Any]:
    """The first member only: the streaming reader stops there, whatever follows."""
    with tarfile.open(bundle, mode="r|gz") as archive:
        member = archive.next()
        assert member is not None and member.name == "manifest.json"
        stream = archive.extractfile(member)
        assert stream is not None
        manifest: dict[str, Any] = json.loads(stream.read())
        return manifest


def proc_status(pid: int) -> dict[str, int]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmSize"):
            out[key] = int(value.split()[0]) * 1024
    return out


def capture_once(*, pid: int, port: int, workdir: Path) -> dict[str, Any]:
    bundle = workdir / "bundle.tar.gz"
    started = time.monotonic()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "memwarden.cli",
            "capture",
            f"--pid={pid}",
            f"--pprof-port={port}",
            f"--trace-seconds={TRACE_SECONDS}",
            "--max-core-bytes=2Gi",
            f"--out={bundle}",
            f"--workdir={workdir}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    peak = 0
    done = threading.Event()

    def poll() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_rss(process.pid))
            done.wait(0.02)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    deadline = time.monotonic() + RUN_TIMEOUT
    try:
        process.wait(timeout=max(deadline - time.monotonic(), 0))
    except subprocess.TimeoutExpired:
        process.kill()
        raise
    wall = time.monotonic() - started
    done.set()
    poller.join()
    assert process.stdout is not None
    summary = json.loads(process.stdout.read().decode().strip().splitlines()[-1])
    process.stdout.close()
    manifest = read_manifest(bundle)
    artifacts = {
        a["name"]: {"seconds": a["durationSeconds"], "bytes": a["bytes"], "status": a["status"]}
        for a in manifest["artifacts"]
        if a["status"] != "skipped" or a["artifact"] != "cgroup"
    }
    collect = sum(a["durationSeconds"] for a in manifest["artifacts"])
    return {
        "exitCode": process.returncode,
        "wallSeconds": round(wall, 2),
        "collectSeconds": round(collect, 2),
        "bundleSeconds": round(wall - collect, 2),  # streaming + gzip, and interpreter start
        "bundleBytes": summary["bundle"]["bytes"],
        "artifacts": artifacts,
        "peakRssBytes": {
            "toolbox": summary["peakRssBytes"]["self"],
            "gdb": summary["peakRssBytes"]["children"],
            "treePolled": peak,
        },
    }


def run(binary: Path, *, label: str, live: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="capture-bench-") as tmp:
        workdir = Path(tmp)
        env = {"LEAKY_RATE": LEAK_RATE, "LEAKY_MAX": str(live), "LEAKY_GOROUTINES": "100"}
        with run_leaky(binary, workdir=workdir, env=env) as leaky:
            metrics = wait_leaked(leaky, live, timeout=60)
            target = proc_status(leaky.pid)
            result = capture_once(pid=leaky.pid, port=leaky.port, workdir=workdir)
    return {
        "liveHeap": label,
        "leakedBytes": int(metrics["leaky_leaked_bytes"]),
        "targetRssBytes": target["VmRSS"],
        "targetVmSizeBytes": target["VmSize"],
        **result,
    }


def mib(n: float) -> str:
    return f"{n / MiB:,.1f}"


def size(n: int) -> str:
    return f"{n / MiB:,.1f}Mi" if n >= MiB else f"{n / 1024:,.1f}Ki"


def print_table(runs: list[dict[str, Any]]) -> None:
    names = list(dict.fromkeys(n for r in runs for n in r["artifacts"]))
    header = f"{'artifact':<24}" + "".join(f"{r['liveHeap']:>22}" for r in runs)
    print(header)
    print(f"{'':<24}" + "".join(f"{'seconds':>10} {'bytes':>11}" for _ in runs))
    for name in names:
        cells = ""
        for r in runs:
            a = r["artifacts"].get(name)
            cells += f"{a['seconds']:>10.2f} {size(a['bytes']):>11}" if a else f"{'-':>22}"
        print(f"{name:<24}{cells}")
    rows = [
        ("target RSS MiB", lambda r: mib(r["targetRssBytes"])),
        ("target VmSize MiB", lambda r: mib(r["targetVmSizeBytes"])),
        ("collect s", lambda r: f"{r['collectSeconds']:.2f}"),
        ("bundle+start s", lambda r: f"{r['bundleSeconds']:.2f}"),
        ("wall s", lambda r: f"{r['wallSeconds']:.2f}"),
        ("bundle MiB (tar.gz)", lambda r: mib(r["bundleBytes"])),
        ("peak RSS toolbox MiB", lambda r: mib(r["peakRssBytes"]["toolbox"])),
        ("peak RSS gdb MiB", lambda r: mib(r["peakRssBytes"]["gdb"])),
        ("peak RSS tree MiB", lambda r: mib(r["peakRssBytes"]["treePolled"])),
        ("exit code", lambda r: str(r["exitCode"])),
    ]
    print()
    for label, cell in rows:
        print(f"{label:<24}" + "".join(f"{cell(r):>22}" for r in runs))


def main() -> int:
    go = find_go()
    if go is None:
        print("the Go toolchain is required", file=sys.stderr)
        return 2
    binary = build_leaky(go)
    started = time.monotonic()
    runs = [run(binary, label=label, live=live) for label, live in SIZES]
    gdb = subprocess.run(["gdb", "--version"], capture_output=True, text=True, check=False)
    go_version = subprocess.run([go, "version"], capture_output=True, text=True, check=False)
    result = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "kernel": platform.release(),
        "go": go_version.stdout.strip(),
        "gdb": gdb.stdout.splitlines()[0] if gdb.stdout else None,
        "traceSeconds": TRACE_SECONDS,
        "benchSeconds": round(time.monotonic() - started, 1),
        "runs": runs,
    }
    out = HERE / "results" / "capture.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print_table(runs)
    print(f"\nwritten {out.relative_to(REPO)} in {result['benchSeconds']}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
