"""One pod admission, decided: AdmissionReview request in, AdmissionReview response out.

Pure: no kopf, no HTTP, no clock. The webhook server (``webhook/server.py``) parses the body,
calls :func:`admit`, and sends back :func:`review_response`. The JSONPatch is the plan's
own operations (``mutation.plan_pod``), not a diff of a copy of the pod: nothing is
copied and nothing is diffed.

Never refuses a pod: every outcome is ``allowed: true``. A pod that cannot be read or a
policy that cannot be applied admits the pod unchanged, with a warning where the user
should hear of it.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from memwarden.mutation import PlanCache, PodShapeError, admission_ops, planned
from memwarden.selection import PolicyIndex, Selection, container_names
from memwarden.sizing import KubeletProfile

Outcome = Literal["mutated", "unchanged", "audit", "infeasible", "error"]


@dataclass(frozen=True)
class Decision:
    """What admission does to one pod, and what to tell about it."""

    outcome: Outcome
    ops: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    policy: str | None = None
    """``namespace/name`` of the governing policy, if any."""
    detail: str = ""
    """One line for the log: what changed, or why nothing did."""


def pod_label(pod: Mapping[str, Any], namespace: str) -> str:
    """``namespace/name`` of a pod being created (``generateName*`` when it has no name yet)."""
    metadata = pod.get("metadata") or {}
    name = metadata.get("name") or f"{metadata.get('generateName', '')}*"
    return f"{namespace}/{name}"


def admit(
    *,
    pod: Mapping[str, Any],
    namespace: str | None,
    index: PolicyIndex,
    profile: KubeletProfile,
    never_governed: frozenset[str],
    dry_run: bool,
    cache: PlanCache | None = None,
) -> Decision:
    """Apply the governing policy's plan to a pod being created (see module doc).

    With ``cache``, plans are shared by pods of the same shape (``mutation.PlanCache``).
    """
    if namespace is None or namespace in never_governed:
        return Decision("unchanged", detail="namespace not governed")
    metadata = pod.get("metadata") or {}
    if not isinstance(metadata, Mapping):
        return Decision("unchanged", detail="metadata is not a map")
    labels = metadata.get("labels") or {}
    if not isinstance(labels, Mapping) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in labels.items()
    ):
        return Decision("unchanged", detail="metadata.labels is not a map of strings")
    regular, sidecars = container_names(pod)
    selection = index.select(
        namespace=namespace, labels=labels, container_names=regular, sidecar_names=sidecars
    )
    if selection.winner is None:
        return Decision("unchanged", detail=selection.reason)
    return _planned(pod=pod, selection=selection, profile=profile, dry_run=dry_run, cache=cache)


def _planned(
    *,
    pod: Mapping[str, Any],
    selection: Selection,
    profile: KubeletProfile,
    dry_run: bool,
    cache: PlanCache | None,
) -> Decision:
    winner = selection.winner
    assert winner is not None
    try:
        plan = planned(pod=pod, selection=selection, profile=profile, cache=cache)
    except PodShapeError as exc:
        return Decision("unchanged", policy=winner.key, detail=f"pod not readable: {exc}")
    if plan.infeasible:
        message = f"memwarden: policy {winner.name} not applied: {plan.infeasible}"
        return Decision("infeasible", warnings=[message], policy=winner.key, detail=plan.infeasible)
    warnings = []
    if selection.others:
        warnings.append(f"memwarden: policy {winner.name} governs this pod: {selection.reason}")
    ops = admission_ops(plan, dry_run=dry_run)
    if winner.spec.mode == "Audit":
        warnings.extend(f"memwarden (audit, policy {winner.name}): {d}" for d in plan.drift)
        return Decision("audit", warnings=warnings, policy=winner.key, detail="audit only")
    if not ops:
        detail = "dry run" if dry_run else "already compliant"
        return Decision("unchanged", warnings=warnings, policy=winner.key, detail=detail)
    return Decision(
        "mutated",
        ops=ops,
        warnings=warnings,
        policy=winner.key,
        detail="; ".join(plan.drift) or "annotation only",
    )


def review_response(
    review: Mapping[str, Any],
    decision: Decision,
    *,
    dumps: Callable[[Any], bytes] = lambda value: json.dumps(value).encode(),
) -> dict[str, Any]:
    """The AdmissionReview answering ``review``: allowed, with the decision's patch."""
    response: dict[str, Any] = {"uid": review["request"]["uid"], "allowed": True}
    if decision.ops:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(dumps(decision.ops)).decode("ascii")
    if decision.warnings:
        response["warnings"] = decision.warnings
    return {"apiVersion": review["apiVersion"], "kind": "AdmissionReview", "response": response}
