"""The bundle: a tar.gz generated chunk by chunk from the collected files."""

from __future__ import annotations

import tarfile
import zlib
from collections.abc import Iterator, Sequence
from pathlib import Path

from memwarden.capture.toolbox.model import CHUNK, GZIP_LEVEL, MANIFEST_MEMBER, DeliveryError, Entry

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
