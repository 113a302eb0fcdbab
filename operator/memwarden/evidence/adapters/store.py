"""The evidence store: one tar.gz bundle per incident on a filesystem (a PVC in production).

Layout: ``<root>/<namespace>/<incident>/bundle.tar.gz`` and ``meta.json`` beside it.
``meta.json`` is the commit record: an incident counts as stored only once it exists, so
a crash mid-upload never leaves a bundle that looks complete. Directories are 0700 and
files 0600: evidence holds core dumps, which hold secrets.

Writes stream into a temporary file in the incident's directory while hashing, and are
renamed into place only when complete and within the size cap; a refused or failed upload
leaves nothing behind. Reads hand out a path, never the bundle's bytes: a bundle can be
gigabytes (a core dump).

Two stores implement :class:`BundleStore`: :class:`EvidenceStore` here (a filesystem, a
PVC in production) and ``S3EvidenceStore`` (``s3store.py``, S3-compatible object storage).
The evidence API, retention and deletion use only that protocol.

Disk space is accounted before an upload starts: ``admit_upload`` (pure) decides whether
its declared size fits under the total cap and its namespace's quota, counting what is
stored and what other uploads have reserved (:class:`Reservations`). Retention deletes by
age, and within a namespace over its own quota; it never deletes one namespace's bundle to
make room for another's (a full store refuses uploads instead).

What this module must not do: know about HTTP, tokens or Kubernetes. ``retention_plan``,
``admit_upload``, :class:`Reservations` and the name checks are pure; only
:class:`EvidenceStore`, ``volume_bytes`` and ``apply_retention`` touch the disk.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Protocol, Self

__all__ = [
    "BUNDLE_FILE",
    "META_FILE",
    "AlreadyStored",
    "BundleMeta",
    "BundleReader",
    "BundleStore",
    "BundleWriter",
    "DiskLimits",
    "Entry",
    "EvidenceStore",
    "InvalidName",
    "NotStored",
    "Reservations",
    "StoreError",
    "StoreUnavailable",
    "TooLarge",
    "UploadWriter",
    "admit_upload",
    "apply_retention",
    "default_total_cap",
    "retention_plan",
    "validate_incident_name",
    "validate_namespace",
    "volume_bytes",
]

log = logging.getLogger(__name__)

BUNDLE_FILE = "bundle.tar.gz"
META_FILE = "meta.json"
_TMP_PREFIX = ".upload-"
_DIR_MODE = 0o700

#: Kubernetes names: a namespace is a DNS-1123 label, an object name a DNS-1123 subdomain.
#: Neither can be empty, ``.``, ``..`` or hold ``/``: these checks are the traversal guard.
_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?")
_SUBDOMAIN_MAX = 253


class StoreError(Exception):
    """Base of the store's errors."""


class StoreUnavailable(StoreError):
    """The store cannot be reached or refuses the operator's credentials: the operator's
    outage, not the caller's fault (the evidence API answers 503)."""


class InvalidName(StoreError, ValueError):
    """A namespace or incident name that is not a valid Kubernetes name."""


class TooLarge(StoreError):
    """The bundle exceeds the per-bundle size cap; nothing was kept."""

    def __init__(self, limit: int) -> None:
        super().__init__(f"bundle exceeds the limit of {limit} bytes")
        self.limit = limit


class AlreadyStored(StoreError):
    """A bundle is already stored for this incident (uploads are write-once)."""


class NotStored(StoreError, LookupError):
    """No bundle is stored for this incident."""


def validate_namespace(namespace: str) -> str:
    """Return ``namespace`` if it is a DNS-1123 label, else raise :class:`InvalidName`."""
    if not isinstance(namespace, str) or not _LABEL.fullmatch(namespace):
        raise InvalidName(f"invalid namespace {namespace!r}: must be a DNS-1123 label")
    return namespace


def validate_incident_name(name: str) -> str:
    """Return ``name`` if it is a DNS-1123 subdomain, else raise :class:`InvalidName`."""
    if (
        not isinstance(name, str)
        or not 0 < len(name) <= _SUBDOMAIN_MAX
        or not all(_LABEL.fullmatch(part) for part in name.split("."))
    ):
        raise InvalidName(f"invalid incident name {name!r}: must be a DNS-1123 subdomain")
    return name


@dataclass(frozen=True, slots=True)
class BundleMeta:
    """What ``meta.json`` records about a stored bundle."""

    uid: str
    bytes: int
    sha256: str
    stored_at: dt.datetime

    def to_json(self) -> dict[str, Any]:
        return {
            "uid": self.uid,
            "bytes": self.bytes,
            "sha256": self.sha256,
            "stored_at": self.stored_at.isoformat(),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> BundleMeta:
        stored_at = dt.datetime.fromisoformat(str(data["stored_at"]))
        if stored_at.tzinfo is None:
            raise ValueError("stored_at has no time zone")
        return cls(
            uid=str(data["uid"]),
            bytes=int(data["bytes"]),
            sha256=str(data["sha256"]),
            stored_at=stored_at,
        )


@dataclass(frozen=True, slots=True)
class Entry:
    """One stored bundle: where it belongs and its meta."""

    namespace: str
    incident: str
    meta: BundleMeta

    @property
    def bytes(self) -> int:
        return self.meta.bytes

    @property
    def stored_at(self) -> dt.datetime:
        return self.meta.stored_at


def retention_plan(
    entries: Sequence[Entry],
    *,
    now: dt.datetime,
    max_age: dt.timedelta | None,
    namespace_max_bytes: int | None = None,
) -> list[Entry]:
    """The entries to delete, oldest first: every one older than ``max_age``, then, in each
    namespace holding more than ``namespace_max_bytes``, that namespace's oldest until the
    rest fits. ``None`` disables a limit.

    Pure. There is no total cap here on purpose: a namespace's bundles are never deleted
    to make room for another namespace's (uploads that do not fit are refused instead,
    see :func:`admit_upload`). Ties in age are broken by namespace and name.
    """
    ordered = sorted(entries, key=lambda e: (e.stored_at, e.namespace, e.incident))
    doomed: list[Entry] = []
    kept: list[Entry] = []
    for entry in ordered:
        if max_age is not None and now - entry.stored_at > max_age:
            doomed.append(entry)
        else:
            kept.append(entry)
    if namespace_max_bytes is not None:
        totals: dict[str, int] = {}
        for entry in kept:
            totals[entry.namespace] = totals.get(entry.namespace, 0) + entry.bytes
        for entry in kept:
            if totals[entry.namespace] > namespace_max_bytes:
                doomed.append(entry)
                totals[entry.namespace] -= entry.bytes
    return sorted(doomed, key=lambda e: (e.stored_at, e.namespace, e.incident))


@dataclass(frozen=True, slots=True)
class DiskLimits:
    """What the store may hold: ``total_bytes`` in all (None: no total cap, an object
    store's default), ``namespace_bytes`` per namespace (None: no quota beyond the total)."""

    total_bytes: int | None
    namespace_bytes: int | None = None


def default_total_cap(volume: int, *, fraction: float = 0.8) -> int:
    """The total cap when none is configured: ``fraction`` of the evidence volume, so the
    filesystem never fills (partial files, ``meta.json`` and the filesystem's own
    reserve live in the rest)."""
    return int(volume * fraction)


def admit_upload(
    *,
    namespace: str,
    size: int,
    stored: Mapping[str, int],
    in_flight: Mapping[str, int],
    limits: DiskLimits,
) -> str | None:
    """Why an upload of ``size`` bytes to ``namespace`` cannot be accepted now, or None.

    ``stored`` and ``in_flight`` are bytes per namespace: stored bundles, and what other
    uploads have reserved (not this one). Pure.
    """
    if limits.namespace_bytes is not None:
        mine = stored.get(namespace, 0) + in_flight.get(namespace, 0)
        if mine + size > limits.namespace_bytes:
            return (
                f"namespace {namespace} is over its evidence quota: {mine} bytes stored or "
                f"being uploaded, {size} more would exceed {limits.namespace_bytes}"
            )
    held = sum(stored.values()) + sum(in_flight.values())
    if limits.total_bytes is not None and held + size > limits.total_bytes:
        return (
            f"the evidence store is full: {held} bytes stored or being uploaded, "
            f"{size} more would exceed its cap of {limits.total_bytes}"
        )
    return None


class Reservations:
    """Bytes reserved by uploads in flight, per namespace: an upload holds its declared
    size from before its first byte until it is committed or fails, so concurrent uploads
    cannot together overrun the caps. Pure bookkeeping; not thread-safe (the evidence API
    uses it from its event loop only)."""

    def __init__(self) -> None:
        self._held: dict[int, tuple[str, int]] = {}
        self._next = 0

    def hold(self, namespace: str, size: int) -> int:
        """Reserve ``size`` bytes; returns the ticket to :meth:`release`."""
        self._next += 1
        self._held[self._next] = (namespace, size)
        return self._next

    def release(self, ticket: int) -> None:
        self._held.pop(ticket, None)

    def by_namespace(self, *, excluding: int | None = None) -> dict[str, int]:
        """Reserved bytes per namespace, without the ticket ``excluding``."""
        totals: dict[str, int] = {}
        for ticket, (namespace, size) in self._held.items():
            if ticket != excluding:
                totals[namespace] = totals.get(namespace, 0) + size
        return totals


#: ``list`` is a method name in the stores: their annotations use this alias.
_Entries = list[Entry]


class UploadWriter(Protocol):
    """One upload in progress (``BundleStore.open_upload``): ``write`` chunks (blocking),
    then ``commit``; ``abort`` (idempotent; also on leaving the ``with`` block uncommitted)
    leaves nothing behind."""

    @property
    def bytes_written(self) -> int: ...

    def write(self, chunk: bytes) -> None: ...

    def commit(self, *, now: dt.datetime) -> BundleMeta: ...

    def abort(self) -> None: ...

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.abort()


class BundleReader(Protocol):
    """A stored bundle opened for reading (``BundleStore.open_bundle``): its ``size`` as
    stored (what is served as the Content-Length: the bytes themselves, not the meta's
    record of them, so a damaged bundle is served as it is and fails the reader's sha256
    check), blocking ``read`` of at most ``size`` bytes (b"" at the end), then ``close``."""

    @property
    def size(self) -> int: ...

    def read(self, size: int) -> bytes: ...

    def close(self) -> None: ...


class BundleStore(Protocol):
    """What the evidence API, retention and deletion need from a store. Every method
    blocks (call it from a thread in async code) and validates names first."""

    def open_upload(
        self, namespace: str, incident: str, *, uid: str, max_bytes: int
    ) -> UploadWriter: ...

    def exists(self, namespace: str, incident: str) -> bool: ...

    def holds(self, namespace: str, incident: str, *, uid: str) -> bool: ...

    def meta(self, namespace: str, incident: str) -> BundleMeta: ...

    def open_bundle(self, namespace: str, incident: str) -> BundleReader: ...

    def download_url(self, namespace: str, incident: str) -> str | None:
        """A short-lived URL the reader may fetch the bundle from directly (a presigned
        GET), or None: the API streams it."""
        ...

    def local_bundle(
        self, namespace: str, incident: str
    ) -> contextlib.AbstractContextManager[Path]:
        """The bundle as a local file while the context lasts (the analysis reads a file)."""
        ...

    def list(self, namespace: str) -> _Entries: ...

    def entries(self) -> _Entries: ...

    def usage(self) -> dict[str, int]: ...

    def delete(self, namespace: str, incident: str) -> bool: ...

    def sweep_partial(self, *, now: dt.datetime, older_than: dt.timedelta) -> Sequence[object]: ...


def volume_bytes(path: Path) -> int:
    """The size of the filesystem holding ``path`` (statvfs): the evidence volume's."""
    stats = os.statvfs(path)
    return stats.f_blocks * stats.f_frsize


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``directory``: commit and delete are atomic with
    respect to each other, across processes sharing the volume."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock


def _make_private_dir(path: Path) -> None:
    """``mkdir`` with mode 0700 whatever the umask; an existing directory is tightened."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=_DIR_MODE)
    if path.is_symlink() or not path.is_dir():
        raise StoreError(f"{path} is not a directory")
    if path.stat().st_mode & 0o777 != _DIR_MODE:
        path.chmod(_DIR_MODE)


def _rmdir_if_empty(path: Path) -> None:
    try:
        path.rmdir()
    except OSError as exc:
        if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST, errno.ENOENT):
            raise


class BundleWriter(UploadWriter):
    """One upload in progress: ``write`` chunks, then ``commit``; a context manager that
    removes the partial file unless committed. Not thread-safe; use one per upload."""

    def __init__(
        self, *, store: EvidenceStore, namespace: str, incident: str, uid: str, max_bytes: int
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._incident = incident
        self._uid = uid
        self._max_bytes = max_bytes
        self._hash = hashlib.sha256()
        self._size = 0
        self._directory = store.incident_dir(namespace, incident)
        fd, name = self._temporary_file(store.root / namespace)
        self._tmp = Path(name)  # mkstemp creates it 0600
        self._file = os.fdopen(fd, "wb")
        self._done = False

    def _temporary_file(self, namespace_dir: Path) -> tuple[int, str]:
        """The upload's file in its incident's directory. Retention removes directories
        it empties (``_rmdir_if_empty``), so one can vanish between the ``mkdir`` here and
        the file's creation: make them again, a few times."""
        for attempt in range(3):
            try:
                _make_private_dir(namespace_dir)
                _make_private_dir(self._directory)
                return tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".tmp", dir=self._directory)
            except FileNotFoundError:
                if attempt == 2:
                    raise
        raise AssertionError("unreachable")

    @property
    def bytes_written(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; raise :class:`TooLarge` (and discard everything) past the cap."""
        if self._done:
            raise StoreError("writer already finished")
        if self._size + len(chunk) > self._max_bytes:
            self.abort()
            raise TooLarge(self._max_bytes)
        self._file.write(chunk)
        self._hash.update(chunk)
        self._size += len(chunk)

    def commit(self, *, now: dt.datetime) -> BundleMeta:
        """Make the bundle visible atomically; :class:`AlreadyStored` if another won."""
        if self._done:
            raise StoreError("writer already finished")
        meta = BundleMeta(
            uid=self._uid, bytes=self._size, sha256=self._hash.hexdigest(), stored_at=now
        )
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            meta_tmp = self._write_meta_tmp(meta)
            try:
                with _locked(self._directory):
                    if (self._directory / META_FILE).exists():
                        raise AlreadyStored(f"{self._namespace}/{self._incident} is already stored")
                    # The bundle first, then the commit record: a crash in between leaves
                    # a bundle without meta, which counts as not stored (and is swept).
                    os.replace(self._tmp, self._directory / BUNDLE_FILE)
                    os.replace(meta_tmp, self._directory / META_FILE)
                    _fsync_dir(self._directory)
            finally:
                meta_tmp.unlink(missing_ok=True)
        except AlreadyStored:
            self.abort()
            raise
        except OSError as exc:
            self.abort()
            raise StoreError(f"cannot store {self._namespace}/{self._incident}: {exc}") from exc
        self._done = True
        return meta

    def _write_meta_tmp(self, meta: BundleMeta) -> Path:
        fd, name = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".meta", dir=self._directory)
        with os.fdopen(fd, "w", encoding="utf-8") as stream:
            json.dump(meta.to_json(), stream)
            stream.flush()
            os.fsync(stream.fileno())
        return Path(name)

    def abort(self) -> None:
        """Discard the partial upload, and the directories it created if now empty."""
        if self._done:
            return
        self._done = True
        self._file.close()
        self._tmp.unlink(missing_ok=True)
        _rmdir_if_empty(self._directory)
        _rmdir_if_empty(self._directory.parent)


_Paths = list[Path]


class _FileReader:
    """A bundle file open for reading, with its size (of the open file, not the path)."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream
        self.size = os.fstat(stream.fileno()).st_size

    def read(self, size: int) -> bytes:
        data: bytes = self._stream.read(size)
        return data

    def close(self) -> None:
        self._stream.close()


class EvidenceStore:
    """Bundles under ``root``; every public method validates names first."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        if not self.root.exists():
            # An existing root (a PVC's mount point) keeps the mode its owner gave it.
            self.root.mkdir(parents=True, mode=_DIR_MODE)
            self.root.chmod(_DIR_MODE)

    def incident_dir(self, namespace: str, incident: str) -> Path:
        return self.root / validate_namespace(namespace) / validate_incident_name(incident)

    def open_upload(
        self, namespace: str, incident: str, *, uid: str, max_bytes: int
    ) -> BundleWriter:
        """Start an upload for the incident with UID ``uid``. A bundle stored for an
        earlier incident of the same name (another UID) is stale, and deleted first."""
        if self.exists(namespace, incident):
            if self.meta(namespace, incident).uid == uid:
                raise AlreadyStored(f"{namespace}/{incident} is already stored")
            log.info("deleting the stale bundle of an earlier %s/%s", namespace, incident)
            self.delete(namespace, incident)
        return BundleWriter(
            store=self, namespace=namespace, incident=incident, uid=uid, max_bytes=max_bytes
        )

    def exists(self, namespace: str, incident: str) -> bool:
        return (self.incident_dir(namespace, incident) / META_FILE).is_file()

    def holds(self, namespace: str, incident: str, *, uid: str) -> bool:
        """Whether the bundle of the incident with UID ``uid`` is stored (not the bundle of
        an earlier incident of the same name)."""
        try:
            return self.meta(namespace, incident).uid == uid
        except NotStored:
            return False

    def meta(self, namespace: str, incident: str) -> BundleMeta:
        """The stored bundle's meta; :class:`NotStored` if there is none."""
        path = self.incident_dir(namespace, incident) / META_FILE
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            return BundleMeta.from_json(data)
        except FileNotFoundError as exc:
            raise NotStored(f"no bundle stored for {namespace}/{incident}") from exc
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"unreadable meta for {namespace}/{incident}: {exc}") from exc

    def bundle_path(self, namespace: str, incident: str) -> Path:
        """The stored bundle's path, to stream from; :class:`NotStored` if there is none."""
        self.meta(namespace, incident)
        path = self.incident_dir(namespace, incident) / BUNDLE_FILE
        if not path.is_file():
            raise NotStored(f"no bundle stored for {namespace}/{incident}")
        return path

    def open_bundle(self, namespace: str, incident: str) -> BundleReader:
        """The stored bundle opened for reading; :class:`NotStored` if there is none."""
        try:
            return _FileReader(self.bundle_path(namespace, incident).open("rb"))
        except FileNotFoundError as exc:  # deleted between the check and the open
            raise NotStored(f"no bundle stored for {namespace}/{incident}") from exc

    def download_url(self, namespace: str, incident: str) -> str | None:
        """None: a volume has no URL of its own; the API streams the file."""
        return None

    @contextlib.contextmanager
    def local_bundle(self, namespace: str, incident: str) -> Iterator[Path]:
        """The bundle's own file: it is local already."""
        yield self.bundle_path(namespace, incident)

    def list(self, namespace: str) -> _Entries:
        """Stored bundles of ``namespace``, by incident name; unreadable ones are skipped."""
        directory = self.root / validate_namespace(namespace)
        entries: _Entries = []
        try:
            children = sorted(directory.iterdir())
        except FileNotFoundError:
            return []
        for child in children:
            if not child.is_dir() or child.is_symlink():
                continue
            try:
                validate_incident_name(child.name)
                entries.append(Entry(namespace, child.name, self.meta(namespace, child.name)))
            except NotStored:
                continue
            except StoreError as exc:
                log.warning("skipping %s: %s", child, exc)
        return entries

    def entries(self) -> _Entries:
        """Every stored bundle, all namespaces (for retention)."""
        result: _Entries = []
        for child in sorted(self.root.iterdir()):
            if not child.is_dir() or child.is_symlink():
                continue
            try:
                result.extend(self.list(child.name))
            except InvalidName:
                continue
        return result

    def usage(self) -> dict[str, int]:
        """Stored bytes per namespace (what :func:`admit_upload` counts)."""
        totals: dict[str, int] = {}
        for entry in self.entries():
            totals[entry.namespace] = totals.get(entry.namespace, 0) + entry.bytes
        return totals

    def delete(self, namespace: str, incident: str) -> bool:
        """Delete the incident's bundle; False if there was none."""
        directory = self.incident_dir(namespace, incident)
        try:
            with _locked(directory):
                had_meta = (directory / META_FILE).exists()
                # The commit record goes first: readers stop seeing the bundle at once.
                (directory / META_FILE).unlink(missing_ok=True)
                shutil.rmtree(directory)
        except FileNotFoundError:
            return False
        _rmdir_if_empty(directory.parent)
        return had_meta

    def sweep_partial(self, *, now: dt.datetime, older_than: dt.timedelta) -> _Paths:
        """Remove leftovers of crashed uploads (temporary files, bundles without meta)
        untouched for ``older_than``; an upload in progress keeps its file's mtime fresh."""
        removed: _Paths = []
        cutoff = (now - older_than).timestamp()
        for ns_dir in sorted(p for p in self.root.iterdir() if p.is_dir()):
            for incident_dir in sorted(p for p in ns_dir.iterdir() if p.is_dir()):
                stored = (incident_dir / META_FILE).exists()
                for path in incident_dir.iterdir():
                    partial = path.name.startswith(_TMP_PREFIX) or (
                        not stored and path.name == BUNDLE_FILE
                    )
                    with contextlib.suppress(FileNotFoundError):
                        if partial and path.stat().st_mtime < cutoff:
                            path.unlink()
                            removed.append(path)
                _rmdir_if_empty(incident_dir)
            _rmdir_if_empty(ns_dir)
        return removed


def apply_retention(
    store: BundleStore,
    *,
    now: dt.datetime,
    max_age: dt.timedelta | None,
    namespace_max_bytes: int | None = None,
    partial_max_age: dt.timedelta = dt.timedelta(hours=1),
) -> list[Entry]:
    """Delete what :func:`retention_plan` says, and stale partial uploads; returns the
    deleted entries. Blocking I/O: call it from a thread in async code."""
    plan = retention_plan(
        store.entries(), now=now, max_age=max_age, namespace_max_bytes=namespace_max_bytes
    )
    deleted = [e for e in plan if store.delete(e.namespace, e.incident)]
    for entry in deleted:
        log.info(
            "evidence %s/%s deleted by retention (%d bytes, stored %s)",
            entry.namespace,
            entry.incident,
            entry.bytes,
            entry.stored_at.isoformat(),
        )
    for path in store.sweep_partial(now=now, older_than=partial_max_age):
        log.info("removed partial upload %s", path)
    return deleted
