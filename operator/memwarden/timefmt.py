"""Times as Kubernetes writes them, and ages as kubectl shows them: the one place.

Pure and stdlib-only (the toolbox image imports it too). A timestamp without a zone is
read as UTC, as the API server means it; a malformed one is None, never a guess.
"""

from __future__ import annotations

import datetime as dt


def rfc3339(moment: dt.datetime) -> str:
    """UTC, second precision, ``Z``: the form Kubernetes writes."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def rfc3339_millis(moment: dt.datetime) -> str:
    """UTC with milliseconds and ``Z`` (artifact records, where seconds are too coarse)."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def parse_time(text: object) -> dt.datetime | None:
    """An RFC 3339 timestamp, or None when absent or malformed (the object is then aged
    by what else it has, never trusted blindly)."""
    if not isinstance(text, str) or not text:
        return None
    try:
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def seconds_since(text: object, now: dt.datetime) -> float:
    """Seconds from the timestamp ``text`` to ``now``; 0 when absent, malformed or ahead."""
    then = parse_time(text)
    return 0.0 if then is None else max(0.0, (now - then).total_seconds())


def format_age(seconds: float) -> str:
    """kubectl-style age: ``45s``, ``12m``, ``5h``, ``3d``."""
    s = max(0, int(seconds))
    if s < 120:
        return f"{s}s"
    if s < 120 * 60:
        return f"{s // 60}m"
    if s < 48 * 3600:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


__all__ = ["format_age", "parse_time", "rfc3339", "rfc3339_millis", "seconds_since"]
