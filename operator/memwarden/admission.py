"""One pod admission, decided: AdmissionReview request in, AdmissionReview response out.

Pure: no kopf, no HTTP, no clock. The webhook server (``webhook.py``) parses the body,
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

import orjson

from memwarden.api import APPLIED_ANNOTATION
from memwarden.mutation import PodShapeError, admission_ops, plan_pod
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


class PlanCache:
    """Decisions by (policy, pod shape): the pods of one Deployment are alike, and sizing
    each again costs ~10x the look-up. Bounded; the oldest entry goes first.

    The key is the selection's policies (by identity: an updated policy is a new object,
    so its old entries are never hit again) and the bytes of every pod field a plan reads
    (containers' names, resources, env, restartPolicy; overhead; the applied annotation).
    """

    def __init__(self, size: int = 4096) -> None:
        self.size = size
        self._entries: dict[bytes, tuple[Selection, Decision]] = {}
        self.hits = self.misses = 0

    @staticmethod
    def shape_of(pod: Mapping[str, Any], *, dry_run: bool) -> bytes:
        """What a plan reads of ``pod``, as bytes."""
        spec = pod.get("spec") or {}
        annotations = (pod.get("metadata") or {}).get("annotations")

        def read(containers: Any) -> list[Any]:
            return [
                [c.get("name"), c.get("resources"), c.get("env"), c.get("restartPolicy")]
                for c in containers or ()
                if isinstance(c, Mapping)
            ]

        applied = annotations.get(APPLIED_ANNOTATION) if isinstance(annotations, Mapping) else None
        return orjson.dumps(
            [
                read(spec.get("containers")),
                read(spec.get("initContainers")),
                spec.get("overhead"),
                bool(annotations),
                applied,
                dry_run,
            ]
        )

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: bytes, selection: Selection) -> Decision | None:
        entry = self._entries.get(key)
        if entry is None or not _same_policies(entry[0], selection):
            self.misses += 1
            return None
        self.hits += 1
        return entry[1]

    def put(self, key: bytes, selection: Selection, decision: Decision) -> None:
        if len(self._entries) >= self.size:
            del self._entries[next(iter(self._entries))]
        self._entries[key] = (selection, decision)


def _same_policies(a: Selection, b: Selection) -> bool:
    return (
        a.winner is b.winner
        and len(a.others) == len(b.others)
        and all(x is y for x, y in zip(a.others, b.others, strict=True))
    )


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

    ``cache`` must belong to one ``profile``: decisions are cached per policy and pod shape.
    """
    if namespace is None or namespace in never_governed:
        return Decision("unchanged", detail="namespace not governed")
    labels = (pod.get("metadata") or {}).get("labels") or {}
    if not isinstance(labels, Mapping):
        return Decision("unchanged", detail="metadata.labels is not a map")
    regular, sidecars = container_names(pod)
    selection = index.select(
        namespace=namespace, labels=labels, container_names=regular, sidecar_names=sidecars
    )
    if selection.winner is None:
        return Decision("unchanged", detail=selection.reason)
    if cache is None:
        return _planned(pod=pod, selection=selection, profile=profile, dry_run=dry_run)
    key = PlanCache.shape_of(pod, dry_run=dry_run)
    decision = cache.get(key, selection)
    if decision is None:
        decision = _planned(pod=pod, selection=selection, profile=profile, dry_run=dry_run)
        cache.put(key, selection, decision)
    return decision


def _planned(
    *, pod: Mapping[str, Any], selection: Selection, profile: KubeletProfile, dry_run: bool
) -> Decision:
    winner = selection.winner
    assert winner is not None
    try:
        plan = plan_pod(pod=pod, selection=selection, profile=profile)
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
