"""Evidence read from files: a ``.pb.gz`` heap profile, or a ``.tar.gz`` bundle streamed
member by member (never extracted to disk), with size limits.

The file edge of :mod:`memwarden.capture.analysis`, shared by ``memwarden analyze``
(:mod:`memwarden.commands.analyze`) and the analysis worker process.
"""

from __future__ import annotations

import gzip
import json
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from memwarden.capture.profile import (
    DEFAULT_MAX_BYTES,
    Profile,
    ProfileError,
    ProfileTooLarge,
    parse_profile,
)

__all__ = ["Evidence", "EvidenceError", "EvidenceTooLarge", "load_evidence"]

#: Bundle members read here; anything else (trace, core, smaps) is skipped
#: without being read, so a multi-GiB core costs no memory here.
HEAP_MEMBER = "heap.pb.gz"
GOROUTINE_MEMBER = "goroutine.pb.gz"
MANIFEST_MEMBER = "manifest.json"

#: A manifest is a few KiB; refuse to hold anything much larger in memory.
_MAX_MANIFEST_BYTES = 16 * 1024 * 1024


class EvidenceError(Exception):
    """A file that is neither a readable profile nor a readable evidence bundle."""


class EvidenceTooLarge(EvidenceError):
    """A profile in the file exceeds a size limit: refused, not analysed."""


@dataclass(frozen=True, slots=True)
class Evidence:
    """The profiles found in one file: a bare heap profile, or a bundle's members."""

    heap: Profile
    goroutine: Profile | None = None
    manifest: dict[str, Any] | None = None
    is_bundle: bool = False


def _is_tar_gz(path: Path) -> bool:
    """True for a gzip-compressed tar (its first block says ``ustar`` at offset 257)."""
    try:
        with gzip.open(path, "rb") as stream:
            head = stream.read(512)
    except (gzip.BadGzipFile, EOFError, zlib.error):
        return False
    return len(head) == 512 and head[257:262] == b"ustar"


def _read_member(archive: tarfile.TarFile, member: tarfile.TarInfo, *, limit: int) -> bytes:
    if member.size > limit:
        raise EvidenceError(f"bundle member {member.name} is {member.size} bytes (limit {limit})")
    stream = archive.extractfile(member)
    if stream is None:
        raise EvidenceError(f"bundle member {member.name} is not a regular file")
    return stream.read()


def _load_bundle(path: Path, *, max_entries: int | None) -> Evidence:
    members: dict[str, bytes] = {}
    wanted = {
        HEAP_MEMBER: DEFAULT_MAX_BYTES,
        GOROUTINE_MEMBER: DEFAULT_MAX_BYTES,
        MANIFEST_MEMBER: _MAX_MANIFEST_BYTES,
    }
    # "r|gz" streams: members are read in archive order and nothing touches the disk.
    with tarfile.open(path, mode="r|gz") as archive:
        for member in archive:
            name = PurePosixPath(member.name).name
            if member.isfile() and name in wanted and name not in members:
                members[name] = _read_member(archive, member, limit=wanted[name])
                if len(members) == len(wanted):
                    # The toolbox writes these first: never inflate the GiB core after them.
                    break
    if HEAP_MEMBER not in members:
        raise EvidenceError(f"bundle has no {HEAP_MEMBER}")
    manifest: dict[str, Any] | None = None
    if MANIFEST_MEMBER in members:
        try:
            loaded = json.loads(members[MANIFEST_MEMBER])
        except (ValueError, UnicodeDecodeError) as exc:
            raise EvidenceError(f"{MANIFEST_MEMBER} is not valid JSON: {exc}") from exc
        manifest = loaded if isinstance(loaded, dict) else None
    return Evidence(
        heap=_parse(members[HEAP_MEMBER], what=f"{path}:{HEAP_MEMBER}", max_entries=max_entries),
        goroutine=_parse(
            members[GOROUTINE_MEMBER], what=f"{path}:{GOROUTINE_MEMBER}", max_entries=max_entries
        )
        if GOROUTINE_MEMBER in members
        else None,
        manifest=manifest,
        is_bundle=True,
    )


def _parse(data: bytes, *, what: str, max_entries: int | None) -> Profile:
    try:
        return parse_profile(data, max_entries=max_entries)
    except ProfileTooLarge as exc:
        raise EvidenceTooLarge(f"{what}: {exc}") from exc
    except ProfileError as exc:
        raise EvidenceError(f"{what}: {exc}") from exc


def load_evidence(path: Path, *, max_entries: int | None = None) -> Evidence:
    """Read a heap profile (``.pb.gz``) or an evidence bundle (``.tar.gz``) from disk;
    ``max_entries`` bounds each table of each profile (see ``parse_profile``)."""
    try:
        if _is_tar_gz(path):
            return _load_bundle(path, max_entries=max_entries)
        return Evidence(heap=_parse(path.read_bytes(), what=str(path), max_entries=max_entries))
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        raise EvidenceError(f"{path}: {exc}") from exc
