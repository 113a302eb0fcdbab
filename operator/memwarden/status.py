"""A MemoryPolicy's status, computed from the pods of its namespace: pure.

``now`` and the pods come in; a status model comes out. The handler writes it only when
it changed, and logs what changed.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from memwarden.api import APPLIED_ANNOTATION, Condition, MemoryPolicyStatus, PodConflict
from memwarden.mutation import PodShapeError, plan_pod
from memwarden.selection import Candidate, container_names, select_policy
from memwarden.sizing import KubeletProfile

#: Lists in status are cut to this many entries: status is for people, not an inventory.
MAX_LISTED = 20


def pod_view(body: Mapping[str, Any]) -> dict[str, Any] | None:
    """The part of a pod that policies care about (kept in memory per pod: keep it small).

    None for pods that no longer run (Succeeded/Failed) or are being deleted.
    """
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    if status.get("phase") in {"Succeeded", "Failed"} or metadata.get("deletionTimestamp"):
        return None
    spec = body.get("spec") or {}

    def slim(container: Mapping[str, Any]) -> dict[str, Any]:
        kept = {
            k: container[k] for k in ("name", "resources", "env", "restartPolicy") if k in container
        }
        if "env" in kept:
            kept["env"] = [e for e in kept["env"] if e.get("name") in {"GOMEMLIMIT", "GOGC"}]
        return kept

    annotations = metadata.get("annotations") or {}
    oom_killed = _oom_killed_statuses(status)
    return {
        # Only containers whose (last) termination was the OOM killer: the risk loop
        # turns them into findings (risk/signals.py ``oom_killed``).
        **({"status": {"containerStatuses": oom_killed}} if oom_killed else {}),
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "labels": dict(metadata.get("labels") or {}),
            "annotations": {k: v for k, v in annotations.items() if k == APPLIED_ANNOTATION},
        },
        "spec": {
            "containers": [slim(c) for c in spec.get("containers") or []],
            "initContainers": [slim(c) for c in spec.get("initContainers") or []],
            **({"overhead": spec["overhead"]} if spec.get("overhead") else {}),
        },
    }


def _oom_killed_statuses(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """Container statuses trimmed to an OOMKilled termination (current or last)."""
    kept = []
    for entry in [
        *(status.get("containerStatuses") or []),
        *(status.get("initContainerStatuses") or []),
    ]:
        trimmed = {
            which: {"terminated": {k: terminated.get(k) for k in ("reason", "finishedAt")}}
            for which in ("state", "lastState")
            if (terminated := (entry.get(which) or {}).get("terminated") or {}).get("reason")
            == "OOMKilled"
        }
        if trimmed:
            kept.append({"name": entry.get("name"), **trimmed})
    return kept


def _condition(
    *,
    type_: str,
    status: bool,
    reason: str,
    message: str,
    generation: int | None,
    now: str,
    previous: Sequence[Condition],
) -> Condition:
    text = "True" if status else "False"
    before = next((c for c in previous if c.type == type_), None)
    since = before.lastTransitionTime if before and before.status == text else now
    return Condition(
        type=type_,
        status=text,
        reason=reason,
        message=message,
        lastTransitionTime=since,
        observedGeneration=generation,
    )


def policy_status(
    *,
    policy: Candidate,
    generation: int | None,
    pods: Iterable[Mapping[str, Any]],
    candidates: Sequence[Candidate],
    profile: KubeletProfile,
    now: str,
    previous: MemoryPolicyStatus | None = None,
) -> MemoryPolicyStatus:
    """Matched / compliant / drifted counts, conflicts and conditions for ``policy``."""
    matched = compliant = 0
    drifted: list[str] = []
    conflicts: list[PodConflict] = []
    infeasible: list[str] = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        name = str(metadata.get("name"))
        regular, sidecars = container_names(pod)
        selection = select_policy(
            labels=metadata.get("labels") or {},
            container_names=regular,
            sidecar_names=sidecars,
            candidates=candidates,
        )
        if selection.winner is None:
            continue
        involved = {selection.winner.name, *(c.name for c in selection.others)}
        if policy.name not in involved:
            continue
        if selection.others:
            conflicts.append(
                PodConflict(
                    pod=name,
                    winner=selection.winner.name,
                    others=[c.name for c in selection.others],
                    reason=selection.reason,
                )
            )
        if selection.winner.name != policy.name:
            continue
        matched += 1
        try:
            plan = plan_pod(pod=pod, selection=selection, profile=profile)
        except PodShapeError as exc:
            infeasible.append(f"{name}: {exc}")
            drifted.append(name)
            continue
        if plan.infeasible:
            infeasible.append(f"{name}: {plan.infeasible}")
            drifted.append(name)
        elif plan.drift:
            drifted.append(name)
        else:
            compliant += 1

    old_conditions = previous.conditions if previous else []
    conditions = [
        _condition(
            type_="Ready",
            status=True,
            reason="Reconciled",
            message=f"{matched} pods governed, {compliant} compliant, {len(drifted)} drifted",
            generation=generation,
            now=now,
            previous=old_conditions,
        ),
        _condition(
            type_="Feasible",
            status=not infeasible,
            reason="Infeasible" if infeasible else "Feasible",
            message="; ".join(infeasible[:3]) if infeasible else "every governed pod can be sized",
            generation=generation,
            now=now,
            previous=old_conditions,
        ),
    ]
    conditions += [c for c in old_conditions if c.type not in {"Ready", "Feasible"}]
    return MemoryPolicyStatus(
        observedGeneration=generation,
        conditions=conditions,
        matchedPods=matched,
        compliantPods=compliant,
        driftedPods=len(drifted),
        driftedPodNames=sorted(drifted)[:MAX_LISTED],
        conflicts=sorted(conflicts, key=lambda c: c.pod)[:MAX_LISTED],
        lastIncident=previous.lastIncident if previous else None,
    )


def describe_change(before: MemoryPolicyStatus | None, after: MemoryPolicyStatus) -> str | None:
    """One line saying what changed in the counts (None: nothing worth an Event)."""
    parts = []
    for field in ("matchedPods", "compliantPods", "driftedPods"):
        old = getattr(before, field) if before else 0
        new = getattr(after, field)
        if old != new:
            parts.append(f"{field.removesuffix('Pods')} {old} -> {new}")
    old_conflicts = {c.pod for c in before.conflicts} if before else set()
    new_conflicts = {c.pod for c in after.conflicts} - old_conflicts
    if new_conflicts:
        parts.append(f"conflicts on {', '.join(sorted(new_conflicts))}")
    return ", ".join(parts) or None
