"""``memwarden capture``: the evidence toolbox, run inside the ephemeral debug container.

Collects, from one Go process, pprof profiles (heap, allocs, goroutine and its text
dump), an execution trace, a core (``gcore``), ``/proc/PID/{status,smaps_rollup}`` and
the cgroup v2 memory files, and delivers them as ONE tar.gz bundle with a
``manifest.json`` (sha256 per member) to a file or an HTTP PUT.

Memory discipline: an ephemeral container has no limit of its own and counts against the
pod it is trying to save, so nothing here holds an artifact in memory. HTTP bodies and
/proc files are copied in 1 MiB chunks to temp files (hashed on the way), gcore writes its
own file, and the bundle is generated chunk by chunk from those files into the output
file or the chunked request body. Every step has its own timeout and its failure is
recorded in the manifest, never allowed to stop the other steps.

Standard library only (and memwarden's pure helpers): the toolbox image has no kopf,
no Kubernetes client and no pydantic.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import logging
import os
import re
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from types import FrameType
from typing import Any, BinaryIO
from urllib.parse import urlsplit

from memwarden.capture.plan import (
    ALL_ARTIFACTS,
    ENV_TARGET_PID,
    ENV_UPLOAD_CA,
    ENV_UPLOAD_TOKEN,
    ENV_UPLOAD_URL,
    PTRACE_SKIPPED_REASON,
)
from memwarden.evidence.tokens import UPLOAD_SIZE_HEADER, token_expiry
from memwarden.quantity import QuantityError, parse_bytes
from memwarden.timefmt import rfc3339_millis

__all__ = [
    "MANIFEST_MEMBER",
    "Entry",
    "Options",
    "add_arguments",
    "collect",
    "iter_bundle",
    "resolve_cgroup_dir",
    "run",
]

log = logging.getLogger("memwarden.capture")

#: Copy unit for every stream: big enough for throughput, small against a pod's limit.
CHUNK = 1 << 20
#: gzip level 1: several times faster than the default 6 and nearly as small on cores
#: (mostly zero pages) and profiles (already gzip); the toolbox competes for CPU with a
#: process that is already in trouble.
GZIP_LEVEL = 1
#: The kubelet keeps at most 4096 bytes of a termination message.
SUMMARY_LIMIT = 4096
MANIFEST_MEMBER = "manifest.json"
MANIFEST_SCHEMA = "memwarden.dev/evidence-bundle/v1"
DEFAULT_TERMINATION_LOG = Path("/dev/termination-log")
CGROUP_FILES = (
    "memory.current",
    "memory.max",
    "memory.high",
    "memory.low",
    "memory.min",
    "memory.events",
    "memory.stat",
    "memory.pressure",
)
#: Cheap, fragile snapshots first (the process may die any second), the heap profile
#: first of all; the trace takes --trace-seconds, and gcore last because it stops the
#: process while it writes the core.
COLLECTION_ORDER = ("heap", "goroutine", "smaps", "cgroup", "allocs", "trace", "gcore")
#: Upload retries back off from 1 s, doubling to at most 30 s apart, for as long as the
#: upload token is valid: the evidence API may be restarting or failing over, and the
#: bundle is regenerated from the temp files, so a retry is cheap. A token without a
#: readable expiry (or none): 5 minutes, the operator's default capture timeout.
UPLOAD_BACKOFF_FIRST = 1.0
UPLOAD_BACKOFF_MAX = 30.0
UPLOAD_RETRY_WITHOUT_EXPIRY = 300.0
#: Node simulator only (hack/nodesim): the address uploads leave from, standing in for
#: the pod's network namespace. On a real node the kernel gives the pod's IP by itself.
ENV_UPLOAD_SOURCE_ADDRESS = "MEMWARDEN_UPLOAD_SOURCE_ADDRESS"
_GCORE_GRACE_SECONDS = 5.0
_PROFILES: dict[str, tuple[tuple[str, str, str], ...]] = {
    # artifact -> (entry name, bundle member, pprof path)
    # gc=1: a GC cycle first, so in-use numbers are current, not as of the last cycle.
    "heap": (("heap", "heap.pb.gz", "/debug/pprof/heap?gc=1"),),
    "allocs": (("allocs", "allocs.pb.gz", "/debug/pprof/allocs"),),
    "goroutine": (
        ("goroutine", "goroutine.pb.gz", "/debug/pprof/goroutine"),
        ("goroutine-stacks", "goroutine-stacks.txt", "/debug/pprof/goroutine?debug=2"),
    ),
}


class StepError(Exception):
    """A step failed in a way worth one line in the manifest."""


class _Skip(Exception):
    """Raised by a step that should not (or cannot) run: recorded as skipped, with why."""


class DeliveryError(Exception):
    """The bundle could not be written or uploaded; ``status`` is the HTTP answer if any,
    ``final`` when retrying cannot help (an untrusted server certificate)."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        stored_sha256: str | None = None,
        final: bool = False,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.stored_sha256 = stored_sha256
        self.final = final


@dataclass(frozen=True, slots=True)
class Options:
    """Everything one capture needs, resolved from flags and environment."""

    pid: int
    pprof: str
    artifacts: tuple[str, ...] = ALL_ARTIFACTS
    trace_seconds: int = 5
    max_core_bytes: int = 2 << 30
    #: Bytes the capture may write to the pod's writable layer (None: no pod limit).
    ephemeral_storage_allowance: int | None = None
    ptrace: bool = True
    cgroup_dir: Path | None = None
    timeout: float = 30.0
    gcore_timeout: float = 300.0
    incident: str | None = None


@dataclass(frozen=True, slots=True)
class Entry:
    """One collected file (a bundle member), or a step that failed or was skipped."""

    artifact: str
    name: str
    file: str | None = None
    path: Path | None = None
    size: int = 0
    sha256: str | None = None
    duration_seconds: float = 0.0
    error: str | None = None
    skipped: str | None = None

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return "skipped" if self.skipped is not None else "ok"

    def to_manifest(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "artifact": self.artifact,
            "status": self.status,
            "file": self.file,
            "bytes": self.size,
            "sha256": self.sha256,
            "durationSeconds": round(self.duration_seconds, 3),
        }
        if self.error is not None:
            out["error"] = self.error
        if self.skipped is not None:
            out["skipped"] = self.skipped
        return out


@dataclass
class _Tally:
    """Counts and hashes the chunks passing through, for the bundle's size and sha256."""

    size: int = 0
    digest: Any = field(default_factory=hashlib.sha256)
    complete: bool = False

    def wrap(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        for chunk in chunks:
            self.digest.update(chunk)
            self.size += len(chunk)
            yield chunk
        self.complete = True

    @property
    def sha256(self) -> str:
        return str(self.digest.hexdigest())


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("memwarden")
    except PackageNotFoundError:
        return "0+unknown"


# --- copying with a deadline, hashing on the way -----------------------------------------


def _copy_stream(source: BinaryIO, dest: Path, *, deadline: float) -> tuple[int, str]:
    """Copy ``source`` to ``dest`` in chunks; (bytes, sha256). Never the whole body at once."""
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as out:
        while chunk := source.read(CHUNK):
            if time.monotonic() > deadline:
                raise StepError("timed out while reading")
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _fetch(url: str, dest: Path, *, timeout: float) -> tuple[int, str]:
    """GET ``url`` into ``dest``; ``timeout`` bounds the whole transfer, not one read."""
    deadline = time.monotonic() + timeout
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        raise StepError(f"HTTP {exc.code} from {url}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise StepError(f"{url}: {exc.reason}") from exc
    with response:
        return _copy_stream(response, dest, deadline=deadline)


def _copy_file(source: Path, dest: Path, *, timeout: float) -> tuple[int, str]:
    # /proc and cgroup files report size 0 until read: copy them to learn the real size.
    with source.open("rb") as stream:
        return _copy_stream(stream, dest, deadline=time.monotonic() + timeout)


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


# --- the bundle -----------------------------------------------------------------------


def _tar_member(name: str, path: Path, *, size: int, mtime: int) -> Iterator[bytes]:
    info = tarfile.TarInfo(name)
    info.size = size
    info.mtime = mtime
    info.mode = 0o644
    yield info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict")
    remaining = size
    with path.open("rb") as source:
        while remaining:
            chunk = source.read(min(CHUNK, remaining))
            if not chunk:
                raise DeliveryError(f"{path} shrank while being bundled")
            remaining -= len(chunk)
            yield chunk
    if size % tarfile.BLOCKSIZE:
        yield tarfile.NUL * (tarfile.BLOCKSIZE - size % tarfile.BLOCKSIZE)


def _tar_stream(members: Sequence[tuple[str, Path, int]], *, mtime: int) -> Iterator[bytes]:
    """A POSIX tar archive, generated member by member, chunk by chunk."""
    written = 0
    for name, path, size in members:
        for chunk in _tar_member(name, path, size=size, mtime=mtime):
            written += len(chunk)
            yield chunk
    # End of archive: two zero blocks, then zeros up to a whole record (as tar writes it).
    end = 2 * tarfile.BLOCKSIZE
    end += -(written + end) % tarfile.RECORDSIZE
    yield tarfile.NUL * end


def _members(manifest: Path, entries: Sequence[Entry]) -> list[tuple[str, Path, int]]:
    members = [(MANIFEST_MEMBER, manifest, manifest.stat().st_size)]
    members += [(e.file, e.path, e.size) for e in entries if e.path is not None and e.file]
    return members


def bundle_size_bound(manifest: Path, entries: Sequence[Entry], *, mtime: int) -> int:
    """The most bytes :func:`iter_bundle` can produce: the tar's exact size, plus zlib's
    worst case for incompressible input (``deflateBound``) and gzip's wrapper. Declared to
    the evidence store (``X-Bundle-Max-Bytes``), which reserves that much disk."""
    tar = 0
    for name, _, size in _members(manifest, entries):
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, mtime, 0o644
        tar += len(info.tobuf(format=tarfile.PAX_FORMAT, encoding="utf-8", errors="strict"))
        tar += -(-size // tarfile.BLOCKSIZE) * tarfile.BLOCKSIZE
    tar += 2 * tarfile.BLOCKSIZE
    tar += -tar % tarfile.RECORDSIZE
    return tar + (tar >> 12) + (tar >> 14) + (tar >> 25) + 7 + 18 + 64


def iter_bundle(manifest: Path, entries: Sequence[Entry], *, mtime: int) -> Iterator[bytes]:
    """The tar.gz bundle as gzip chunks: ``manifest.json`` first, then each collected file."""
    members = _members(manifest, entries)
    compressor = zlib.compressobj(GZIP_LEVEL, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    for raw in _tar_stream(members, mtime=mtime):
        if out := compressor.compress(raw):
            yield out
    yield compressor.flush()


# --- delivery -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the bundle went, its size and sha256; ``error`` when it did not get there."""

    destination: str
    size: int = 0
    sha256: str | None = None
    http_status: int | None = None
    error: str | None = None


def _write_file(chunks: Iterable[bytes], out: Path) -> _Tally:
    tally = _Tally()
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("wb") as sink:
            for chunk in tally.wrap(chunks):
                sink.write(chunk)
        partial.rename(out)  # a reader never sees half a bundle under the final name
    finally:
        partial.unlink(missing_ok=True)
    return tally


def _connection(url: str, *, ca_file: str | None, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.hostname is None:
        raise DeliveryError(f"upload URL has no host: {url!r}")
    source = os.environ.get(ENV_UPLOAD_SOURCE_ADDRESS) or None
    bind = (source, 0) if source else None
    if parts.scheme == "https":
        # The CA comes as a file path, or as PEM text in the env (the capture plan's way:
        # an ephemeral container cannot mount a new volume).
        if ca_file and ca_file.lstrip().startswith("-----BEGIN"):
            context = ssl.create_default_context(cadata=ca_file)
        else:
            context = ssl.create_default_context(cafile=ca_file or None)
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context, source_address=bind
        )
    if parts.scheme == "http":
        return http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=timeout, source_address=bind
        )
    raise DeliveryError(f"upload URL must be http(s): {url!r}")


def _put(
    url: str,
    chunks: Iterable[bytes],
    *,
    token: str | None,
    ca_file: str | None,
    timeout: float,
    size_bound: int | None = None,
) -> int:
    """One chunked, streaming PUT; the HTTP status. Raises DeliveryError on failure."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Content-Type": "application/gzip", "User-Agent": f"memwarden-capture/{_version()}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if size_bound is not None:
        headers[UPLOAD_SIZE_HEADER] = str(size_bound)
    where = f"PUT {_redact(url)}"
    connection = _connection(url, ca_file=ca_file, timeout=timeout)
    try:
        # The server may answer early (401, 413) and close: then read its answer below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request("PUT", target, body=chunks, headers=headers, encode_chunked=True)
        response = connection.getresponse()
        detail = response.read(1000).decode("utf-8", "replace").strip()
    except ssl.SSLCertVerificationError as exc:
        # Final: the CA the plan gave us will not start trusting this server on a retry,
        # and a bundle (a core dump) never goes to a server we cannot verify.
        raise DeliveryError(
            f"{where}: the evidence API's certificate is not trusted ({exc.verify_message}); "
            "nothing was sent",
            final=True,
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(f"{where}: {exc}") from exc
    finally:
        connection.close()
    if not 200 <= response.status < 300:
        raise DeliveryError(
            f"{where}: HTTP {response.status}: {detail[:300]}",
            status=response.status,
            stored_sha256=_stored_sha256(detail),
        )
    return response.status


def _stored_sha256(body: str) -> str | None:
    """``details.sha256`` of a Kubernetes-style Status body (the evidence store's 409)."""
    try:
        details = json.loads(body).get("details") or {}
    except (ValueError, AttributeError):
        return None
    sha256 = details.get("sha256") if isinstance(details, dict) else None
    return sha256 if isinstance(sha256, str) else None


def _redact(url: str) -> str:
    """The URL without its query: a query may carry a credential."""
    return urlsplit(url)._replace(query="").geturl()


def _retryable(error: DeliveryError) -> bool:
    """Connection failures, 5xx, 408, 429 and a 409 "upload in flight" (no stored bundle
    yet) may pass next time; other 4xx will not, nor an untrusted server certificate."""
    if error.final:
        return False
    if error.status == 409:
        return error.stored_sha256 is None
    return error.status is None or error.status >= 500 or error.status in (408, 429)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


def upload_deadline(token: str | None, *, now: float) -> float:
    """Until when (Unix seconds) to retry an upload: the token's expiry, read from it."""
    expiry = token_expiry(token) if token else None
    return float(expiry) if expiry is not None else now + UPLOAD_RETRY_WITHOUT_EXPIRY


def _upload(
    make_chunks: Callable[[], Iterable[bytes]],
    url: str,
    *,
    token: str | None,
    ca_file: str | None,
    timeout: float,
    deadline: float,
    size_bound: int | None = None,
) -> tuple[_Tally, int]:
    sent: _Tally | None = None  # an attempt whose whole body went out
    delay = UPLOAD_BACKOFF_FIRST
    attempt = 0
    while True:
        attempt += 1
        tally = _Tally()
        try:
            status = _put(
                url,
                tally.wrap(make_chunks()),
                token=token,
                ca_file=ca_file,
                timeout=timeout,
                size_bound=size_bound,
            )
        except DeliveryError as exc:
            if tally.complete:
                sent = tally
            if exc.status == 409 and sent is not None and exc.stored_sha256 == sent.sha256:
                # An earlier attempt landed but its answer was lost: the store holds
                # exactly our bundle (it is deterministic, so every attempt hashes alike).
                log.info("upload: already stored with our sha256 %s", sent.sha256)
                return sent, 409
            if not _retryable(exc) or time.time() + delay >= deadline:
                raise
            log.warning("upload attempt %d failed, retrying in %.0fs: %s", attempt, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, UPLOAD_BACKOFF_MAX)
            continue
        return tally, status


def deliver(
    make_chunks: Callable[[], Iterable[bytes]],
    *,
    out: Path | None,
    upload: str | None,
    token: str | None,
    ca_file: str | None,
    timeout: float,
    size_bound: int | None = None,
) -> Delivery:
    """Write the bundle to ``out`` and/or PUT it to ``upload``; streamed, never held.

    ``make_chunks`` regenerates the bundle (from the temp files) for each upload attempt,
    so a retry needs nothing kept in memory. With both, the file is written first and
    then uploaded from disk. ``size_bound`` (the most bytes the bundle can take) is
    declared to the evidence store, which reserves that much disk before the first byte.
    """
    if out is None and upload is None:
        raise ValueError("deliver: give out, upload or both")
    destination = " + ".join(x for x in (str(out or ""), _redact(upload or "")) if x)
    try:
        status: int | None = None
        source = make_chunks
        if out is not None:
            tally = _write_file(make_chunks(), out)
            written = out
            source = lambda: _file_chunks(written)  # noqa: E731
        if upload is not None:
            tally, status = _upload(
                source,
                upload,
                token=token,
                ca_file=ca_file,
                timeout=timeout,
                deadline=upload_deadline(token, now=time.time()),
                size_bound=size_bound,
            )
    except (DeliveryError, OSError) as exc:
        status = exc.status if isinstance(exc, DeliveryError) else None
        return Delivery(destination=destination, http_status=status, error=str(exc))
    return Delivery(
        destination=destination, size=tally.size, sha256=tally.sha256, http_status=status
    )


# --- summary --------------------------------------------------------------------------


def _peak_rss() -> dict[str, int]:
    """Peak RSS in bytes of this process (VmHWM) and of its largest child (gdb).

    Not ``getrusage(RUSAGE_SELF)`` for ourselves: Linux carries the parent's RSS at
    fork/vfork into the child's ``ru_maxrss`` across exec, so a big parent (pytest, the
    operator) would be counted as ours. VmHWM belongs to our own address space only.
    The children figure is ru_maxrss and may include our RSS at fork (an upper bound).
    """
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    with contextlib.suppress(OSError, ValueError, IndexError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                own = int(line.split()[1]) * 1024
    return {
        "self": own,
        "children": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024,
    }


def summarize(
    collection: Collection, delivery: Delivery, *, exit_code: int, pid: int
) -> dict[str, Any]:
    """The termination message: short enough for the kubelet (see :func:`render_summary`)."""
    entries = collection.entries
    return {
        "exitCode": exit_code,
        "pid": pid,
        "ok": [e.name for e in entries if e.status == "ok"],
        "failed": {e.name: e.error for e in entries if e.error is not None},
        "skipped": {e.name: e.skipped for e in entries if e.skipped is not None},
        "bundle": {
            "destination": delivery.destination,
            "bytes": delivery.size,
            "sha256": delivery.sha256,
            "httpStatus": delivery.http_status,
            "error": delivery.error,
        },
        "peakRssBytes": _peak_rss(),
    }


def render_summary(summary: dict[str, Any], *, limit: int = SUMMARY_LIMIT) -> str:
    """Compact JSON of at most ``limit`` bytes: reasons are cut shorter until it fits."""
    for width in (300, 120, 40, 0):
        shortened = dict(summary)
        for key in ("failed", "skipped"):
            shortened[key] = {k: str(v)[:width] for k, v in summary[key].items()}
        bundle = dict(summary["bundle"])
        if bundle.get("error"):
            bundle["error"] = str(bundle["error"])[: max(width, 80)]
        shortened["bundle"] = bundle
        text = json.dumps(shortened, separators=(",", ":"))
        if len(text.encode()) <= limit:
            return text
    minimal = {
        "exitCode": summary["exitCode"],
        "ok": len(summary["ok"]),
        "failed": sorted(summary["failed"])[:20],
        "skipped": len(summary["skipped"]),
        "bundle": {k: summary["bundle"].get(k) for k in ("bytes", "sha256")},
    }
    return json.dumps(minimal, separators=(",", ":"))[:limit]


# --- command --------------------------------------------------------------------------


def _artifact_list(text: str) -> tuple[str, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_ARTIFACTS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown artifacts {unknown} (choose from {', '.join(ALL_ARTIFACTS)})"
        )
    return tuple(a for a in ALL_ARTIFACTS if a in names)


def _byte_size(text: str) -> int:
    try:
        return parse_bytes(text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _default_termination_log() -> Path | None:
    configured = os.environ.get("MEMWARDEN_TERMINATION_LOG")
    if configured:
        return Path(configured)
    if DEFAULT_TERMINATION_LOG.exists() and os.access(DEFAULT_TERMINATION_LOG, os.W_OK):
        return DEFAULT_TERMINATION_LOG
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``memwarden capture`` arguments on the dispatcher's sub-parser."""
    parser.add_argument(
        "--pid",
        type=int,
        default=int(os.environ.get(ENV_TARGET_PID) or 1),
        help=f"target process (default ${ENV_TARGET_PID}, else 1: the target container's "
        "first process in a shared PID namespace)",
    )
    parser.add_argument(
        "--pprof",
        default=None,
        help="net/http/pprof base URL (default http://$MEMWARDEN_PPROF_HOST:PORT, "
        "host 127.0.0.1: the pod shares one network namespace)",
    )
    parser.add_argument("--pprof-port", type=int, default=6060, help="default %(default)s")
    parser.add_argument(
        "--artifacts",
        type=_artifact_list,
        default=ALL_ARTIFACTS,
        help=f"comma-separated subset of {','.join(ALL_ARTIFACTS)} (default: all)",
    )
    parser.add_argument("--trace-seconds", type=int, default=5, help="default %(default)s")
    parser.add_argument(
        "--max-core-bytes",
        type=_byte_size,
        default=2 << 30,
        help="skip gcore above this VmRSS; bytes or a quantity like 2Gi (default 2Gi)",
    )
    parser.add_argument(
        "--ephemeral-storage-allowance",
        type=_byte_size,
        default=None,
        help="skip gcore when the core (about VmSize) and the capture's other files would "
        "pass this many bytes: the pod's ephemeral-storage limit less its containers' "
        "requests (default: no pod limit)",
    )
    parser.add_argument(
        "--no-ptrace",
        dest="ptrace",
        action="store_false",
        help=f"record gcore as skipped: {PTRACE_SKIPPED_REASON}",
    )
    parser.add_argument(
        "--cgroup-dir", type=Path, default=None, help="the target's cgroup v2 directory"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="temp files go in a fresh directory under this (on disk, not tmpfs: a core "
        "in tmpfs is memory); removed at the end",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the bundle to this file")
    parser.add_argument(
        "--upload",
        default=os.environ.get(ENV_UPLOAD_URL) or None,
        help=f"PUT the bundle here (default ${ENV_UPLOAD_URL}); bearer token from "
        f"${ENV_UPLOAD_TOKEN}, CA (a file path or PEM text) from ${ENV_UPLOAD_CA}",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=_default_termination_log(),
        help="write the JSON summary here too (default $MEMWARDEN_TERMINATION_LOG, "
        "else /dev/termination-log when writable)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per step (default %(default)s)"
    )
    parser.add_argument(
        "--gcore-timeout", type=float, default=300.0, help="seconds for gcore (default %(default)s)"
    )
    parser.add_argument("--incident", default=None, help="recorded in the manifest")


def _options(args: argparse.Namespace) -> Options:
    host = os.environ.get("MEMWARDEN_PPROF_HOST") or "127.0.0.1"
    return Options(
        pid=args.pid,
        pprof=args.pprof or f"http://{host}:{args.pprof_port}",
        artifacts=tuple(args.artifacts),
        trace_seconds=args.trace_seconds,
        max_core_bytes=args.max_core_bytes,
        ephemeral_storage_allowance=args.ephemeral_storage_allowance,
        ptrace=args.ptrace,
        cgroup_dir=args.cgroup_dir,
        timeout=args.timeout,
        gcore_timeout=args.gcore_timeout,
        incident=args.incident,
    )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`: temp files are removed


def _succeeded(collection: Collection, options: Options, delivery: Delivery) -> bool:
    """The heap profile is the evidence that matters; without it asked for, any artifact."""
    if delivery.error is not None:
        return False
    ok = {e.artifact for e in collection.entries if e.status == "ok"}
    return "heap" in ok if "heap" in options.artifacts else bool(ok)


def run(args: argparse.Namespace) -> int:
    """Collect, bundle, deliver, report; 0 when the heap profile got delivered, else 1."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="capture: %(message)s", stream=sys.stderr)
    if args.out is None and args.upload is None:
        print(
            f"memwarden capture: give --out FILE or --upload URL (${ENV_UPLOAD_URL})",
            file=sys.stderr,
        )
        return 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    options = _options(args)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="memwarden-capture-", dir=args.workdir))
    try:
        log.info(
            "pid %d, pprof %s, artifacts %s",
            options.pid,
            options.pprof,
            ",".join(options.artifacts),
        )
        collection = collect(options, workdir=workdir)
        manifest = workdir / MANIFEST_MEMBER
        manifest.write_text(json.dumps(build_manifest(options, collection), indent=2) + "\n")
        mtime = int(time.time())
        delivery = deliver(
            lambda: iter_bundle(manifest, collection.entries, mtime=mtime),
            out=args.out,
            upload=args.upload,
            token=os.environ.get(ENV_UPLOAD_TOKEN) or None,
            ca_file=os.environ.get(ENV_UPLOAD_CA) or None,
            timeout=max(args.timeout, 60.0),
            size_bound=bundle_size_bound(manifest, collection.entries, mtime=mtime),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    code = 0 if _succeeded(collection, options, delivery) else 1
    text = render_summary(summarize(collection, delivery, exit_code=code, pid=options.pid))
    print(text)
    if args.termination_log is not None:
        try:
            args.termination_log.write_text(text)
        except OSError as exc:
            log.warning("cannot write the termination message to %s: %s", args.termination_log, exc)
    return code
