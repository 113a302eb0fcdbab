"""The analysis of a stored bundle, out of the operator's process.

A bundle is tenant data. A crafted ``/debug/pprof/heap`` (a few KiB of gzip that inflate
into millions of samples) would grow the operator until the kernel killed it, and the
operator would parse the same bundle again after its restart: a crash loop that also takes
admission down. So the operator analyses in a child process that limits itself before it
reads anything: address space (``RLIMIT_AS``), CPU seconds (``RLIMIT_CPU``) and entries
per profile table; the parent adds a wall-clock timeout and reads a small JSON answer.

:func:`run` is the operator's side (blocking: call it from a thread); :func:`main` the
child's (``python -m memwarden.capture.adapters.analysis_worker BUNDLE ...``). The answer's shape
is defined here once, on both sides.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import resource
import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memwarden.api import Analysis, ArtifactRecord
from memwarden.capture.adapters.bundles import EvidenceError, EvidenceTooLarge, load_evidence
from memwarden.capture.analysis import summarize
from memwarden.capture.incident import AnalysisOutcome, analysis_of, artifact_records
from memwarden.capture.profile import ProfileError
from memwarden.quantity import approximate_bytes

__all__ = ["Limits", "analyse", "main", "run"]

log = logging.getLogger(__name__)

#: The child's exit code when it ran out of address space (a MemoryError it could catch).
EXIT_OUT_OF_MEMORY = 3
#: The child's niceness: it yields the CPU to the operator (admission) and the kubelet.
ANALYSIS_NICENESS = 10
#: Largest answer read from the child: the outcome is a dozen short records.
_MAX_ANSWER = 256 * 1024


@dataclass(frozen=True)
class Limits:
    """What one analysis may cost. Real heap profiles are a few MiB with thousands of
    samples and analyse in about a second in ~100 MiB; each limit is far above that."""

    memory_bytes: int = 1024 * 2**20
    """Address space of the child (interpreter included, ~60 MiB): a 500,000-sample
    profile fits; what does not fit is refused, never taken from the operator."""
    cpu_seconds: int = 60
    """CPU time of the child: a real profile needs about a second."""
    wall_seconds: float = 120.0
    """Wall-clock time, for a child stalled on I/O (a slow volume) rather than CPU."""
    max_entries: int = 500_000
    """Entries per profile table (samples, locations, functions, strings): 100 times a
    large Go service's heap profile; counted before each entry is decoded."""


def _without_path(message: str, bundle: Path) -> str:
    """Errors name the bundle's path on the operator's volume: the incident needs the member."""
    return message.replace(f"{bundle}:", "")


def analyse(bundle: Path, *, max_entries: int) -> AnalysisOutcome:
    """Summarise the bundle's heap profile and read its manifest (the child's work)."""
    try:
        loaded = load_evidence(bundle, max_entries=max_entries)
    except EvidenceTooLarge as exc:
        return AnalysisOutcome(refused=_without_path(str(exc), bundle))
    except EvidenceError as exc:
        return AnalysisOutcome(failed=_without_path(str(exc), bundle))
    artifacts = tuple(artifact_records(loaded.manifest))
    try:
        summary = summarize(loaded.heap, goroutine=loaded.goroutine)
    except ProfileError as exc:  # e.g. a "goroutine" member that is another kind of profile
        return AnalysisOutcome(artifacts=artifacts, failed=str(exc))
    return AnalysisOutcome(analysis=analysis_of(summary), artifacts=artifacts)


def _encode(outcome: AnalysisOutcome) -> str:
    return json.dumps(
        {
            "analysis": outcome.analysis.model_dump() if outcome.analysis else None,
            "artifacts": [a.model_dump() for a in outcome.artifacts],
            "failed": outcome.failed,
            "refused": outcome.refused,
        }
    )


def _decode(text: bytes) -> AnalysisOutcome:
    data: dict[str, Any] = json.loads(text)
    analysis = data.get("analysis")
    return AnalysisOutcome(
        analysis=Analysis.model_validate(analysis) if analysis is not None else None,
        artifacts=tuple(ArtifactRecord.model_validate(a) for a in data.get("artifacts") or []),
        failed=data.get("failed"),
        refused=data.get("refused"),
    )


def _limit_self(*, memory_bytes: int, cpu_seconds: int) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    # SIGXCPU at the soft limit, SIGKILL a little later if it were ignored.
    resource.setrlimit(resource.RLIMIT_CPU, (cpu_seconds, cpu_seconds + 5))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # a dump of tenant data helps no one


def main(argv: list[str] | None = None) -> int:
    """The child: limit this process, analyse, print the outcome as one JSON line."""
    parser = argparse.ArgumentParser(prog="python -m memwarden.capture.adapters.analysis_worker")
    parser.add_argument("bundle", type=Path)
    parser.add_argument("--max-memory-bytes", type=int, required=True)
    parser.add_argument("--max-cpu-seconds", type=int, required=True)
    parser.add_argument("--max-entries", type=int, required=True)
    args = parser.parse_args(argv)
    _limit_self(memory_bytes=args.max_memory_bytes, cpu_seconds=args.max_cpu_seconds)
    try:
        answer = _encode(analyse(args.bundle, max_entries=args.max_entries))
    except MemoryError:
        return EXIT_OUT_OF_MEMORY
    sys.stdout.write(answer + "\n")
    return 0


def _refusal(returncode: int, limits: Limits) -> str:
    if returncode == EXIT_OUT_OF_MEMORY or returncode == -signal.SIGSEGV:
        return f"over the memory limit ({approximate_bytes(limits.memory_bytes)})"
    if returncode in (-signal.SIGXCPU, -signal.SIGKILL):
        return f"over the CPU limit ({limits.cpu_seconds}s)"
    return f"the analyser exited with code {returncode}"


def run(bundle: Path, *, limits: Limits | None = None) -> AnalysisOutcome:
    """Analyse ``bundle`` in a limited child process; blocking. Never raises for what the
    bundle holds: a refusal or a failure is in the outcome."""
    limits = limits or Limits()
    command = [
        sys.executable,
        "-m",
        "memwarden.capture.adapters.analysis_worker",
        str(bundle),
        f"--max-memory-bytes={limits.memory_bytes}",
        f"--max-cpu-seconds={limits.cpu_seconds}",
        f"--max-entries={limits.max_entries}",
    ]
    # A group of its own, so the timeout kills the child whatever it started.
    with subprocess.Popen(
        command,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        process_group=0,
    ) as child:
        # Background work: the admission webhook on the operator's event loop comes first
        # when the CPU is short (bench/admission_busy_bench.py). Set from here, not by a
        # preexec_fn (unsafe with threads); the child has barely started.
        with contextlib.suppress(OSError):
            os.setpriority(os.PRIO_PROCESS, child.pid, ANALYSIS_NICENESS)
        try:
            answer, errors = child.communicate(timeout=limits.wall_seconds)
        except subprocess.TimeoutExpired:
            os.killpg(child.pid, signal.SIGKILL)
            child.communicate()
            return AnalysisOutcome(refused=f"took longer than {limits.wall_seconds:.0f}s")
    if child.returncode != 0:
        log.warning(
            "analysis of %s: the analyser exited with code %s: %s",
            bundle,
            child.returncode,
            errors[-2000:].decode("utf-8", "replace").strip() or "(nothing on stderr)",
        )
        return AnalysisOutcome(refused=_refusal(child.returncode, limits))
    if len(answer) > _MAX_ANSWER:
        return AnalysisOutcome(failed="the analyser's answer is too long")
    try:
        return _decode(answer)
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        return AnalysisOutcome(failed=f"the analyser's answer is unreadable: {exc}")


if __name__ == "__main__":
    sys.exit(main())
