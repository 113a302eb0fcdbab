"""The toolbox's constants, options and manifest entries, shared by its sections."""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memwarden.capture.plan import (
    ALL_ARTIFACTS,
)

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
