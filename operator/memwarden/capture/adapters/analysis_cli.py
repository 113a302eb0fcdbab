"""``memwarden analyze``: summarise a heap profile or an evidence bundle.

The I/O edge of :mod:`memwarden.capture.analysis`: reads files (a ``.pb.gz`` profile, or a
``.tar.gz`` bundle streamed member by member, never extracted to disk) and prints JSON or
a table. Errors are one line on stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from memwarden.capture.analysis import DEFAULT_TOP, HeapDiff, Summary, TopReport, summarize
from memwarden.capture.profile import (
    DEFAULT_MAX_BYTES,
    Profile,
    ProfileError,
    ProfileTooLarge,
    parse_profile,
)
from memwarden.output import add_output_argument, render
from memwarden.quantity import approximate_bytes

__all__ = ["Evidence", "EvidenceError", "EvidenceTooLarge", "add_arguments", "load_evidence", "run"]

#: Bundle members this command reads; anything else (trace, core, smaps) is skipped
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


# --- output -----------------------------------------------------------------------------


def _human(value: int, unit: str) -> str:
    return approximate_bytes(value) if unit == "bytes" else str(value)


def _percent(part: int, total: int) -> str:
    return f"{100 * part / total:.2f}%" if total else "-"


def _top_table(top: TopReport) -> list[str]:
    unit = top.unit
    lines = [
        f"{top.sample_type} ({unit}), total {_human(top.total, unit)}",
        f"{'flat':>10} {'flat%':>7} {'cum':>10} {'cum%':>7}  function",
    ]
    for f in top.functions:
        lines.append(
            f"{_human(f.flat, unit):>10} {_percent(f.flat, top.total):>7} "
            f"{_human(f.cum, unit):>10} {_percent(f.cum, top.total):>7}  {f.function}"
        )
    return lines


def _diff_table(diff: HeapDiff) -> list[str]:
    unit = diff.unit
    lines = [
        f"growth of {diff.sample_type} ({unit}): {_human(diff.base_total, unit)} -> "
        f"{_human(diff.total, unit)} ({'+' if diff.total_delta >= 0 else ''}"
        f"{_human(diff.total_delta, unit)})",
        f"{'flat diff':>10} {'cum diff':>10}  function",
    ]
    for f in diff.functions:
        lines.append(
            f"{_human(f.flat_delta, unit):>10} {_human(f.cum_delta, unit):>10}  {f.function}"
        )
    return lines


def render_table(summary: Summary) -> str:
    """The human form: pprof-like columns, byte values in binary units."""
    lines = _top_table(summary.top)
    if summary.goroutines is not None:
        lines += ["", f"goroutines: {summary.goroutines}"]
    if summary.diff is not None:
        lines += ["", *_diff_table(summary.diff)]
    return "\n".join(lines) + "\n"


# --- command ----------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``memwarden analyze`` arguments on the dispatcher's sub-parser."""
    parser.add_argument("file", type=Path, help="heap profile (.pb.gz) or evidence bundle")
    parser.add_argument(
        "--base", type=Path, help="an earlier heap profile or bundle: report growth since it"
    )
    parser.add_argument(
        "--sample-index",
        default=None,
        help="sample type by name or index (default: inuse_space for heap profiles)",
    )
    parser.add_argument(
        "--top", type=int, default=DEFAULT_TOP, help="functions to list (default %(default)s)"
    )
    add_output_argument(parser)


def run(args: argparse.Namespace) -> int:
    """Analyse ``args.file`` and print the summary; 0 on success, 2 on bad input."""
    try:
        if args.top < 0:
            raise EvidenceError("--top must not be negative")
        evidence = load_evidence(args.file)
        base = load_evidence(args.base).heap if args.base is not None else None
        summary = summarize(
            evidence.heap,
            goroutine=evidence.goroutine,
            base=base,
            sample_index=args.sample_index,
            limit=args.top,
        )
    except (EvidenceError, ProfileError) as exc:
        print(f"memwarden analyze: error: {exc}", file=sys.stderr)
        return 2
    out: dict[str, Any] = {"file": str(args.file), "bundle": evidence.is_bundle}
    out.update(summary.to_dict())
    sys.stdout.write(render(out, output=args.output, table=lambda _wide: render_table(summary)))
    return 0
