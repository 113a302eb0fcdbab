"""The out-of-process analysis: real bundles summarised, hostile ones refused by a limit.

Each case runs the real child process (``python -m memwarden.capture.adapters.analysis_worker``)
with its real rlimits; nothing here is mocked.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Callable
from pathlib import Path

import pytest

from memwarden.capture.adapters.analysis_worker import ANALYSIS_NICENESS, Limits, run
from memwarden.capture.profile import DEFAULT_MAX_BYTES
from memwarden_testing.evidence import make_bundle
from memwarden_testing.profiles import gzip_bomb, make_goroutine_profile, make_profile, sample_flood

pytestmark = pytest.mark.unit

MI = 2**20
LEAK = "main.retainSessionBuffers"


def bundle(tmp_path: Path, heap: bytes, **members: bytes) -> Path:
    path = tmp_path / "bundle.tar.gz"
    path.write_bytes(make_bundle({"heap.pb.gz": heap, **members}))
    return path


def test_a_real_bundle_is_summarised(tmp_path: Path) -> None:
    heap = make_profile([([LEAK, "main.main"], 150 * MI), (["main.small"], MI)])
    goroutines = make_goroutine_profile([(["runtime.gopark"], 7)])

    outcome = run(bundle(tmp_path, heap, **{"goroutine.pb.gz": goroutines}))

    assert (outcome.failed, outcome.refused) == (None, None)
    assert outcome.analysis is not None
    assert outcome.analysis.top[0].function == LEAK
    assert outcome.analysis.top[0].flatBytes == 150 * MI
    assert outcome.analysis.goroutines == 7
    assert {a.name for a in outcome.artifacts} == {"heap.pb.gz", "goroutine.pb.gz"}


def analysers_niceness() -> set[int]:
    """The niceness of this process's analysis children running now (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if (
                int(fields[1]) == os.getpid()
                and b"analysis_worker" in (entry / "cmdline").read_bytes()
            ):
                found.add(int(fields[16]))
        except (OSError, IndexError, ValueError):
            continue
    return found


def test_the_analyser_yields_the_cpu_to_the_operator(tmp_path: Path) -> None:
    """Background work: when the CPU is short, the event loop serving admission goes first."""
    seen: set[int] = set()
    done = threading.Event()

    def watch() -> None:
        while not done.is_set():
            seen.update(analysers_niceness())
            done.wait(0.005)

    watcher = threading.Thread(target=watch, daemon=True)
    watcher.start()
    try:
        outcome = run(bundle(tmp_path, make_profile([([LEAK], MI)])))
    finally:
        done.set()
        watcher.join()
    assert outcome.analysis is not None
    assert ANALYSIS_NICENESS in seen, seen


@functools.cache
def bomb() -> bytes:
    """A little over the decompressed cap: about 256 KiB of gzip."""
    return gzip_bomb(DEFAULT_MAX_BYTES + MI)


HOSTILE = [
    pytest.param(
        bomb,
        Limits(),
        f"heap.pb.gz: profile larger than {DEFAULT_MAX_BYTES} bytes once decompressed",
        id="gzip-bomb",
    ),
    pytest.param(
        lambda: sample_flood(60_000),
        Limits(max_entries=50_000),
        "heap.pb.gz: more than 50000 samples",
        id="sample-flood",
    ),
    pytest.param(
        bomb,  # inflating up to the cap needs twice the cap: more than the child may map
        Limits(memory_bytes=300 * MI),
        "over the memory limit (300Mi)",
        id="over-the-memory-limit",
    ),
    pytest.param(
        lambda: sample_flood(3_000_000),
        Limits(memory_bytes=8 * 2**30, cpu_seconds=1, max_entries=10**9),
        "over the CPU limit (1s)",
        id="over-the-cpu-limit",
    ),
    pytest.param(
        lambda: make_profile([([LEAK], MI)]),
        Limits(wall_seconds=0.01),
        "took longer than 0s",
        id="over-the-time-limit",
    ),
]


@pytest.mark.parametrize(("heap", "limits", "refused"), HOSTILE)
def test_a_hostile_profile_is_refused_by_a_limit(
    tmp_path: Path, heap: Callable[[], bytes], limits: Limits, refused: str
) -> None:
    outcome = run(bundle(tmp_path, heap()), limits=limits)

    assert outcome.refused == refused
    assert outcome.analysis is None


def test_a_malformed_profile_is_a_failure_not_a_refusal(tmp_path: Path) -> None:
    outcome = run(bundle(tmp_path, b"\x1f\x8b not really gzip"))

    assert outcome.refused is None
    assert outcome.failed is not None and outcome.failed.startswith("heap.pb.gz: ")
    assert str(tmp_path) not in outcome.failed, "no operator path in the incident's message"
