"""``memwarden analyze``: summarise a heap profile or an evidence bundle.

Reads the file with :mod:`memwarden.capture.adapters.bundles`, summarises it with
:mod:`memwarden.capture.analysis` and prints JSON or a table. Errors are one line on
stderr and exit code 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from memwarden.capture.adapters.bundles import EvidenceError, load_evidence
from memwarden.capture.analysis import DEFAULT_TOP, HeapDiff, Summary, TopReport, summarize
from memwarden.capture.profile import (
    ProfileError,
)
from memwarden.output import add_output_argument, render
from memwarden.quantity import approximate_bytes

__all__ = ["add_arguments", "render_table", "run"]


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
