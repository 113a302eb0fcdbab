"""Our profile reader and analysis against real profiles of the leaky workload, checked
number for number against ``go tool pprof`` on the same files.

Needs the Go toolchain (it builds ``examples/leaky`` with ``hack/build-leaky.sh``); no
cluster. The leak is capped, so the process stays small and the profiles stable.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from memwarden.capture.analysis import (
    diff_profiles,
    function_stats,
    goroutine_count,
    top_functions,
)
from memwarden.capture.profile import parse_profile
from memwarden_testing.leaky import (
    LEAK_FUNCTION,
    Leaky,
    MiB,
    listening_url,
    run_leaky,
    start_leaky,
    stop,
    wait_leaked,
)

pytestmark = pytest.mark.integration

PARKED_GOROUTINES = 40
ENV = {
    "GOMEMLIMIT": "300MiB",
    "GOGC": "100",
    "LEAKY_RATE": "64Mi",
    "LEAKY_PATTERN": "steady",
    "LEAKY_MAX": "96Mi",
    "LEAKY_GOROUTINES": str(PARKED_GOROUTINES),
}


@pytest.fixture(scope="module")
def leaky(leaky_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leaky]:
    with run_leaky(leaky_binary, workdir=tmp_path_factory.mktemp("leaky"), env=ENV) as running:
        yield running


_ROW = re.compile(
    r"^\s*(?P<flat>-?\d+)B?\s+-?[\d.]+%\s+-?[\d.]+%\s+(?P<cum>-?\d+)B?\s+-?[\d.]+%\s+(?P<name>.+?)"
    r"(?: \((?:partial-)?inline\))?$"
)


def pprof_top(
    go: str, profile: Path, *, extra: tuple[str, ...] = ()
) -> tuple[int, list[tuple[str, int, int]]]:
    """``go tool pprof -top`` in exact units: (total, [(function, flat, cum)])."""
    result = subprocess.run(
        [
            go,
            "tool",
            "pprof",
            "-top",
            "-unit=B",
            "-nodecount=10",
            "-nodefraction=0",
            "-symbolize=none",
            *extra,
            str(profile),
        ],
        env={**os.environ, "PPROF_TMPDIR": str(profile.parent)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    total = re.search(r" of (-?\d+)B? total", result.stdout)
    assert total, result.stdout
    rows = [
        (m["name"], int(m["flat"]), int(m["cum"]))
        for m in map(_ROW.match, result.stdout.splitlines())
        if m
    ]
    assert rows, result.stdout
    return int(total.group(1)), rows


def test_metrics_report_runtime_settings_and_resident_leak(leaky: Leaky) -> None:
    metrics = wait_leaked(leaky, 32 * MiB)

    assert metrics["go_gc_gomemlimit_bytes"] == 300 * MiB
    assert metrics["go_gc_gogc_percent"] == 100
    for name in (
        "go_gc_heap_live_bytes",
        "go_cpu_classes_gc_total_cpu_seconds_total",
        "go_gc_limiter_last_enabled_gc_cycle",
        "go_memory_classes_heap_objects_bytes",
    ):
        assert name in metrics
    assert metrics["go_sched_goroutines_goroutines"] >= PARKED_GOROUTINES
    # Touched, so resident: RSS covers the leak.
    assert metrics["process_resident_memory_bytes"] >= metrics["leaky_leaked_bytes"]
    assert "GOMEMLIMIT=314572800 GOGC=100" in leaky.stderr.read_text()
    assert leaky.get("/healthz") == b"ok\n"


def test_heap_analysis_matches_go_tool_pprof(leaky: Leaky, go: str, tmp_path: Path) -> None:
    wait_leaked(leaky, 32 * MiB)
    base = tmp_path / "base.pb.gz"
    base.write_bytes(leaky.get("/debug/pprof/heap?gc=1"))
    wait_leaked(leaky, 96 * MiB)  # the cap: the leak has stopped growing
    heap = tmp_path / "heap.pb.gz"
    heap.write_bytes(leaky.get("/debug/pprof/heap?gc=1"))

    profile = parse_profile(heap.read_bytes())
    report = top_functions(profile, sample_index="inuse_space")
    assert report.functions[0].function == LEAK_FUNCTION
    assert report.functions[0].flat > 64 * MiB  # an estimate from sampling, not exact
    assert "main.buildLookupTable" in [f.function for f in report.functions]
    # alloc_* also hold the freed garbage and inlined frames: more rows to compare.
    for sample_index in ("inuse_space", "alloc_space", "alloc_objects"):
        ours = top_functions(profile, sample_index=sample_index)
        pprof_total, pprof_rows = pprof_top(go, heap, extra=(f"-sample_index={sample_index}",))
        assert ours.total == pprof_total, sample_index
        assert [(f.function, f.flat, f.cum) for f in ours.functions] == pprof_rows, sample_index

    diff = diff_profiles(parse_profile(base.read_bytes()), profile, limit=10_000)
    _, pprof_diff_rows = pprof_top(go, heap, extra=(f"-diff_base={base}",))
    deltas = {d.function: (d.flat_delta, d.cum_delta) for d in diff.functions}
    assert diff.functions[0].function == LEAK_FUNCTION
    assert "main.buildLookupTable" not in deltas  # retained, but not growing
    for name, flat, cum in pprof_diff_rows:
        assert deltas.get(name, (0, 0)) == (flat, cum), name


def test_goroutine_count_matches_go_tool_pprof(leaky: Leaky, go: str, tmp_path: Path) -> None:
    goroutine = tmp_path / "goroutine.pb.gz"
    goroutine.write_bytes(leaky.get("/debug/pprof/goroutine"))

    count = goroutine_count(parse_profile(goroutine.read_bytes()))
    pprof_total, _ = pprof_top(go, goroutine)

    assert count == pprof_total
    assert count > PARKED_GOROUTINES
    stats = function_stats(parse_profile(goroutine.read_bytes()))
    parked = next(f for f in stats if f.function == "main.parkIdleWorker")
    assert parked.cum == PARKED_GOROUTINES


def test_sigterm_exits_cleanly(leaky_binary: Path, tmp_path: Path) -> None:
    process = start_leaky(leaky_binary, workdir=tmp_path, env={"LEAKY_PATTERN": "none"})
    try:
        listening_url(tmp_path / "leaky.stderr", process)
    finally:
        code = stop(process)
    assert code == 0
    assert "shutting down" in (tmp_path / "leaky.stderr").read_text()
