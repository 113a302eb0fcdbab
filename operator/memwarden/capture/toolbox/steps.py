"""The collection steps (profiles, trace, smaps, cgroup files, gcore), each with its own timeout."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

from memwarden.capture.plan import (
    PTRACE_SKIPPED_REASON,
)
from memwarden.capture.toolbox.copying import _copy_file, _fetch, _hash_file
from memwarden.capture.toolbox.model import (
    _GCORE_GRACE_SECONDS,
    _PROFILES,
    CGROUP_FILES,
    COLLECTION_ORDER,
    MANIFEST_SCHEMA,
    Entry,
    Options,
    StepError,
    _Skip,
    _version,
    log,
)
from memwarden.timefmt import rfc3339_millis

# --- steps ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Context:
    options: Options
    workdir: Path


def _step(
    *,
    artifact: str,
    name: str,
    member: str,
    ctx: _Context,
    produce: Callable[[Path], tuple[int, str]],
) -> Entry:
    """Run one step into a temp file and time it; any failure becomes the entry's error."""
    path = ctx.workdir / ("member-" + member.replace("/", "_"))
    started = time.monotonic()
    try:
        size, sha256 = produce(path)
    except _Skip as exc:
        path.unlink(missing_ok=True)
        log.info("%s: skipped: %s", name, exc)
        return Entry(
            artifact=artifact,
            name=name,
            duration_seconds=time.monotonic() - started,
            skipped=str(exc),
        )
    except Exception as exc:  # one broken step must never cost the others: record it
        path.unlink(missing_ok=True)
        error = str(exc) if isinstance(exc, StepError) else f"{type(exc).__name__}: {exc}"
        log.warning("%s: failed: %s", name, error)
        return Entry(
            artifact=artifact,
            name=name,
            file=member,
            duration_seconds=time.monotonic() - started,
            error=error,
        )
    duration = time.monotonic() - started
    log.info("%s: %d bytes in %.2fs", name, size, duration)
    return Entry(
        artifact=artifact,
        name=name,
        file=member,
        path=path,
        size=size,
        sha256=sha256,
        duration_seconds=duration,
    )


def _profile_steps(ctx: _Context, artifact: str) -> list[Entry]:
    base = ctx.options.pprof.rstrip("/")
    return [
        _step(
            artifact=artifact,
            name=name,
            member=member,
            ctx=ctx,
            produce=partial(_fetch, base + path, timeout=ctx.options.timeout),
        )
        for name, member, path in _PROFILES[artifact]
    ]


def _trace_step(ctx: _Context) -> list[Entry]:
    seconds = ctx.options.trace_seconds
    url = f"{ctx.options.pprof.rstrip('/')}/debug/pprof/trace?seconds={seconds}"
    return [
        _step(
            artifact="trace",
            name="trace",
            member="trace.out",
            ctx=ctx,
            produce=lambda dest: _fetch(url, dest, timeout=seconds + ctx.options.timeout),
        )
    ]


def _smaps_steps(ctx: _Context) -> list[Entry]:
    proc = Path("/proc") / str(ctx.options.pid)
    return [
        _step(
            artifact="smaps",
            name=f"proc/{name}",
            member=f"proc/{name}",
            ctx=ctx,
            produce=partial(_copy_file, proc / name, timeout=ctx.options.timeout),
        )
        for name in ("status", "smaps_rollup")
    ]


_MOUNTINFO_ESCAPE = re.compile(r"\\([0-7]{3})")


def _cgroup2_mount(mountinfo: str) -> tuple[str, str] | None:
    """(root, mount point) of the first cgroup2 mount in a ``mountinfo`` text."""
    for line in mountinfo.splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        if right.split(" ", 1)[0] == "cgroup2" and len(fields) >= 5:
            root, point = (
                _MOUNTINFO_ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), f)
                for f in (fields[3], fields[4])
            )
            return root, point
    return None


def _cgroup2_path(cgroup: str) -> str | None:
    """The unified hierarchy's path in a ``/proc/PID/cgroup`` text (the ``0::`` line)."""
    for line in cgroup.splitlines():
        if line.startswith("0::"):
            return line[3:]
    return None


def resolve_cgroup_dir(pid: int, *, proc: Path = Path("/proc")) -> Path:
    """The directory of ``pid``'s cgroup v2, as seen from this process.

    First through our own cgroup2 mount (the path in ``/proc/PID/cgroup`` is relative to
    our cgroup namespace); when the target's cgroup is outside our namespace (a path with
    ``..``, as an ephemeral container in its own cgroup namespace sees its target), through
    the target's own root: its cgroup2 mount shows its own cgroup.
    """
    path = _cgroup2_path((proc / str(pid) / "cgroup").read_text())
    if path is None:
        raise StepError(f"no cgroup v2 entry in {proc}/{pid}/cgroup (cgroup v1 only?)")
    candidates: list[Path] = []
    own = _cgroup2_mount((proc / "self" / "mountinfo").read_text())
    if own is not None and ".." not in Path(path).parts:
        root, point = own
        relative = os.path.relpath(path, root)
        if not relative.startswith(".."):
            candidates.append(Path(point) / relative)
    try:
        theirs = _cgroup2_mount((proc / str(pid) / "mountinfo").read_text())
    except OSError:
        theirs = None
    if theirs is not None:
        candidates.append(proc / str(pid) / "root" / theirs[1].lstrip("/"))
    for candidate in candidates:
        if (candidate / "cgroup.procs").is_file():
            return Path(os.path.normpath(candidate))
    raise StepError(f"cgroup {path} of pid {pid} is not reachable (tried {candidates})")


def _cgroup_steps(ctx: _Context) -> tuple[list[Entry], Path | None]:
    started = time.monotonic()
    try:
        directory = ctx.options.cgroup_dir or resolve_cgroup_dir(ctx.options.pid)
    except (OSError, StepError) as exc:
        return [
            Entry(
                artifact="cgroup",
                name="cgroup",
                duration_seconds=time.monotonic() - started,
                error=str(exc),
            )
        ], None
    entries: list[Entry] = []
    for name in CGROUP_FILES:
        source = directory / name
        if not source.is_file():
            # Normal: memory.min/low/high/max do not exist at the root cgroup, PSI may be
            # off, and a v1/v2 hybrid host has no memory controller in v2 at all.
            entries.append(Entry(artifact="cgroup", name=f"cgroup/{name}", skipped="absent"))
            continue
        entries.append(
            _step(
                artifact="cgroup",
                name=f"cgroup/{name}",
                member=f"cgroup/{name}",
                ctx=ctx,
                produce=partial(_copy_file, source, timeout=ctx.options.timeout),
            )
        )
    return entries, directory


def _vm_sizes(pid: int) -> tuple[int, int]:
    """(VmRSS, VmSize) in bytes, from ``/proc/PID/status`` (readable without ptrace)."""
    found: dict[str, int] = {}
    for line in (Path("/proc") / str(pid) / "status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmSize"):
            found[key] = int(value.split()[0]) * 1024
    if len(found) != 2:
        raise StepError(f"pid {pid} has no VmRSS/VmSize (a kernel thread, or exiting)")
    return found["VmRSS"], found["VmSize"]


def _bytes_under(directory: Path) -> int:
    """Bytes of the files under ``directory`` (the capture's own temp files)."""
    total = 0
    for root, _, files in os.walk(directory):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(root, name)).st_size
    return total


def _stop_group(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM gcore's process group (gdb detaches on it), then SIGKILL if it lingers."""
    for sig, wait in ((signal.SIGTERM, _GCORE_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            return
        try:
            process.wait(timeout=wait)
            return
        except subprocess.TimeoutExpired:
            continue


def _run_gcore(ctx: _Context, dest: Path) -> tuple[int, str]:
    gcore = shutil.which("gcore")
    if gcore is None:
        raise StepError("gcore not found on PATH (install gdb)")
    pid = ctx.options.pid
    prefix = ctx.workdir / "gcore"
    output = ctx.workdir / "gcore.log"
    with output.open("wb") as sink:
        process = subprocess.Popen(
            [gcore, "-o", str(prefix), str(pid)],
            stdin=subprocess.DEVNULL,
            stdout=sink,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # so a timeout stops gdb too, not just the script
        )
        try:
            code = process.wait(timeout=ctx.options.gcore_timeout)
        except BaseException:
            _stop_group(process)
            # gdb killed mid-attach can leave the target stopped by its SIGSTOP.
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGCONT)
            raise
    text = output.read_bytes()[-4000:].decode("utf-8", "replace")
    core = Path(f"{prefix}.{pid}")
    if code != 0 or not core.is_file():
        if "Operation not permitted" in text:
            raise _Skip(f"{PTRACE_SKIPPED_REASON}: ptrace(2) returned EPERM")
        last = [line for line in text.splitlines() if line.strip()][-3:]
        raise StepError(f"gcore exited {code}: {' | '.join(last)}")
    core.rename(dest)
    return _hash_file(dest)


def _gcore_step(ctx: _Context) -> list[Entry]:
    def produce(dest: Path) -> tuple[int, str]:
        if not ctx.options.ptrace:
            raise _Skip(PTRACE_SKIPPED_REASON)
        rss, size = _vm_sizes(ctx.options.pid)
        limit = ctx.options.max_core_bytes
        if rss > limit:
            # gdb stops the process for as long as it reads and writes its memory.
            raise _Skip(f"VmRSS {rss} bytes is above --max-core-bytes {limit}")
        # gdb writes every mapping, untouched ones as zeros (a Go heap's reserved arenas
        # make the file several times RSS, though it compresses to about RSS): a core
        # that cannot fit must not fill the container's disk and get the pod evicted.
        free = shutil.disk_usage(ctx.workdir).free
        if size > free:
            raise _Skip(f"the core may take VmSize {size} bytes; {free} free in the workdir")
        allowance = ctx.options.ephemeral_storage_allowance
        if allowance is not None:
            # The node's free disk is not the pod's: past its ephemeral-storage limit the
            # kubelet evicts the pod, and the core sits in our writable layer.
            written = _bytes_under(ctx.workdir)
            if size + written > allowance:
                raise _Skip(
                    f"the core may take VmSize {size} bytes; the pod's ephemeral-storage "
                    f"allowance is {allowance} bytes, {written} already written by this "
                    "capture: writing it could get the pod evicted"
                )
        return _run_gcore(ctx, dest)

    return [_step(artifact="gcore", name="gcore", member="core", ctx=ctx, produce=produce)]


@dataclass(frozen=True, slots=True)
class Collection:
    """What :func:`collect` gathered: entries in bundle order, and when."""

    entries: tuple[Entry, ...]
    started_at: str
    finished_at: str
    cgroup_dir: Path | None


def collect(options: Options, *, workdir: Path) -> Collection:
    """Run every requested step, in :data:`COLLECTION_ORDER`, into temp files in ``workdir``."""
    ctx = _Context(options=options, workdir=workdir)
    started_at = rfc3339_millis(datetime.now(UTC))
    entries: list[Entry] = []
    cgroup_dir: Path | None = None
    for artifact in COLLECTION_ORDER:
        if artifact not in options.artifacts:
            continue
        if artifact in _PROFILES:
            entries += _profile_steps(ctx, artifact)
        elif artifact == "trace":
            entries += _trace_step(ctx)
        elif artifact == "smaps":
            entries += _smaps_steps(ctx)
        elif artifact == "cgroup":
            found, cgroup_dir = _cgroup_steps(ctx)
            entries += found
        elif artifact == "gcore":
            entries += _gcore_step(ctx)
    return Collection(
        entries=tuple(entries),
        started_at=started_at,
        finished_at=rfc3339_millis(datetime.now(UTC)),
        cgroup_dir=cgroup_dir,
    )


def build_manifest(options: Options, collection: Collection) -> dict[str, Any]:
    """The bundle's ``manifest.json``: what was asked, what came of each step."""
    return {
        "schema": MANIFEST_SCHEMA,
        "toolboxVersion": _version(),
        "incident": options.incident,
        "pid": options.pid,
        "pprof": options.pprof,
        "cgroupDir": str(collection.cgroup_dir) if collection.cgroup_dir else None,
        "requested": list(options.artifacts),
        "traceSeconds": options.trace_seconds,
        "maxCoreBytes": options.max_core_bytes,
        "ephemeralStorageAllowance": options.ephemeral_storage_allowance,
        "ptrace": options.ptrace,
        "startedAt": collection.started_at,
        "finishedAt": collection.finished_at,
        "artifacts": [e.to_manifest() for e in collection.entries],
    }
