"""The run's summary: what was collected, delivered and skipped, and the toolbox's peak RSS."""

from __future__ import annotations

import contextlib
import json
import resource
from pathlib import Path
from typing import Any

from memwarden.capture.toolbox.delivery import Delivery
from memwarden.capture.toolbox.model import SUMMARY_LIMIT
from memwarden.capture.toolbox.steps import Collection

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
