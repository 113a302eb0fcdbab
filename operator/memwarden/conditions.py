"""Status conditions, built one way for every kind: pure.

A condition's ``lastTransitionTime`` moves only when its status flips; a writer that owns
one condition type replaces that entry and keeps the others as they are (the policy's
status loop owns Ready/Feasible/Updated, the risk loop RiskEvaluation).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from memwarden.api import Condition


def _field(entry: Condition | Mapping[str, Any], name: str) -> Any:
    return getattr(entry, name) if isinstance(entry, Condition) else entry.get(name)


def build_condition(
    *,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
    previous: Iterable[Condition | Mapping[str, Any]],
) -> Condition:
    """The condition ``type_`` now; its transition time kept from ``previous`` unless the
    status changed."""
    text = "True" if status else "False"
    before = next((c for c in previous if _field(c, "type") == type_), None)
    kept = before is not None and _field(before, "status") == text
    since = (_field(before, "lastTransitionTime") if kept and before is not None else None) or now
    return Condition(
        type=type_,
        status=text,
        reason=reason,
        message=message,
        lastTransitionTime=since,
        observedGeneration=generation,
    )


def replace_condition(
    conditions: Sequence[Mapping[str, Any]], new: Condition
) -> list[dict[str, Any]] | None:
    """``conditions`` (as the API holds them) with ``new``'s type replaced by ``new``; None
    when that entry already says the same."""
    entry = new.model_dump(mode="json", exclude_none=True)
    before = next((c for c in conditions if c.get("type") == new.type), None)
    if before is not None and dict(before) == entry:
        return None
    return [*(dict(c) for c in conditions if c.get("type") != new.type), entry]


__all__ = ["build_condition", "replace_condition"]
