"""A MemoryPolicy's status, computed from the pods of its namespace: pure.

``now`` and the pods come in; a status model comes out. The handler writes it only when
it changed, and logs what changed.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from memwarden.api import (
    APPLIED_ANNOTATION,
    Condition,
    MemoryPolicyStatus,
    PendingUpdate,
    PodConflict,
)
from memwarden.conditions import build_condition
from memwarden.mutation import PlanCache, PodShapeError, planned
from memwarden.runtime_options import JAVA_TOOL_OPTIONS, NODE_OPTIONS
from memwarden.selection import Candidate, NamespacePolicies
from memwarden.sizing import KubeletProfile
from memwarden.updates import PodUpdate, UpdateInputs, decide

#: The update planner's inputs for a pod, by pod name (the handler knows refusals, working
#: sets and the kill switch); None: defaults at ``now``.
InputsFor = Callable[[str], UpdateInputs]

#: The env variables memwarden sets (kept in pod views: stale after an in-place resize).
RUNTIME_VARIABLES = frozenset({"GOMEMLIMIT", "GOGC", JAVA_TOOL_OPTIONS, NODE_OPTIONS})

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
            k: container[k]
            for k in ("name", "resources", "env", "restartPolicy", "resizePolicy")
            if k in container
        }
        if "env" in kept:
            kept["env"] = [e for e in kept["env"] if e.get("name") in RUNTIME_VARIABLES]
        return kept

    annotations = metadata.get("annotations") or {}
    oom_killed = _oom_killed_statuses(status)
    return {
        "update": update_view(body),
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


#: Pod conditions the update modes follow (KEP-1287).
_RESIZE_CONDITIONS = ("PodResizePending", "PodResizeInProgress")


def update_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the update modes read of a pod besides its spec (updates.py): where it runs,
    its QoS class, its controller, its resize conditions and restart counts. Small: a
    few dozen bytes on a pod at rest."""
    metadata = body.get("metadata") or {}
    status = body.get("status") or {}
    owner = next(
        (
            f"{ref.get('kind')}/{ref.get('name')}"
            for ref in metadata.get("ownerReferences") or []
            if ref.get("controller")
        ),
        None,
    )
    view: dict[str, Any] = {
        "uid": metadata.get("uid"),
        "phase": status.get("phase"),
        "node": (body.get("spec") or {}).get("nodeName"),
        "qos": status.get("qosClass"),
        "owner": owner,
    }
    resize = [
        {k: c.get(k) for k in ("type", "reason", "message")}
        | {"since": c.get("lastTransitionTime")}
        for c in status.get("conditions") or []
        if c.get("type") in _RESIZE_CONDITIONS and c.get("status") == "True"
    ]
    if resize:
        view["resize"] = resize
    restarts = {
        str(c.get("name")): int(c.get("restartCount") or 0)
        for c in status.get("containerStatuses") or []
        if c.get("restartCount")
    }
    if restarts:
        view["restarts"] = restarts
    return view


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


@dataclass
class _Tally:
    """One policy's pods, counted in the single pass over its namespace."""

    matched: int = 0
    compliant: int = 0
    drifted: list[str] = field(default_factory=list)
    conflicts: list[PodConflict] = field(default_factory=list)
    infeasible: list[str] = field(default_factory=list)
    updated: int = 0
    pending: list[PendingUpdate] = field(default_factory=list)
    stuck: list[str] = field(default_factory=list)
    stale: list[str] = field(default_factory=list)


def _count_pod(
    pod: Mapping[str, Any],
    *,
    table: NamespacePolicies,
    tallies: Mapping[str, _Tally],
    profile: KubeletProfile,
    cache: PlanCache | None,
    inputs_for: InputsFor,
) -> None:
    name = str((pod.get("metadata") or {}).get("name"))
    selection = table.select_pod(pod)
    winner = selection.winner
    if winner is None:
        return
    if selection.others:
        conflict = PodConflict(
            pod=name,
            winner=winner.name,
            others=[c.name for c in selection.others],
            reason=selection.reason,
        )
        for involved in (winner, *selection.others):
            tallies[involved.name].conflicts.append(conflict)
    tally = tallies[winner.name]
    tally.matched += 1
    try:
        plan = planned(pod=pod, selection=selection, profile=profile, cache=cache)
    except PodShapeError as exc:
        tally.infeasible.append(f"{name}: {exc}")
        tally.drifted.append(name)
        return
    if plan.infeasible:
        tally.infeasible.append(f"{name}: {plan.infeasible}")
        tally.drifted.append(name)
    elif plan.drift:
        tally.drifted.append(name)
    else:
        tally.compliant += 1
    if winner.spec.update != "Initial":  # the status of Initial policies costs what it did
        _count_update(name, decide(view=pod, plan=plan, inputs=inputs_for(name)), tally)


def _count_update(name: str, update: PodUpdate, tally: _Tally) -> None:
    tally.updated += update.updated
    if update.stale_runtime:
        tally.stale.append(name)
    if update.pending:
        action = {"resize": "Resize", "evict": "Evict"}.get(update.action, "Wait")
        tally.pending.append(PendingUpdate(pod=name, action=action, reason=update.reason[:1024]))
    if update.stuck:
        tally.stuck.append(f"{name}: {update.reason}")


def namespace_statuses(
    *,
    policies: Sequence[Candidate],
    pods: Iterable[Mapping[str, Any]],
    profile: KubeletProfile,
    now: str,
    generations: Mapping[str, int | None],
    previous: Mapping[str, MemoryPolicyStatus | None],
    cache: PlanCache | None = None,
    inputs_for: InputsFor | None = None,
) -> dict[str, MemoryPolicyStatus]:
    """Every policy's status in one namespace, by name, from one pass over its pods.

    Each pod is selected and planned once (not once per policy): the cost is the
    namespace's pods, whatever the number of its policies; with ``cache``, pods of one
    shape share a plan.
    """
    table = NamespacePolicies.build(policies)
    tallies = {name: _Tally() for name in table.by_name}
    if inputs_for is None:
        at = UpdateInputs(now=dt.datetime.fromisoformat(now.replace("Z", "+00:00")))
        inputs_for = lambda _name: at  # noqa: E731 - the same inputs for every pod
    for pod in pods:
        _count_pod(
            pod, table=table, tallies=tallies, profile=profile, cache=cache, inputs_for=inputs_for
        )
    return {
        name: _status(
            tally,
            policy=table.by_name[name],
            generation=generations.get(name),
            now=now,
            previous=previous.get(name),
        )
        for name, tally in tallies.items()
    }


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
    return namespace_statuses(
        policies=candidates,
        pods=pods,
        profile=profile,
        now=now,
        generations={policy.name: generation},
        previous={policy.name: previous},
    )[policy.name]


def _update_condition(
    tally: _Tally,
    *,
    policy: Candidate,
    generation: int | None,
    now: str,
    previous: Sequence[Condition],
) -> Condition:
    """``Updated``: True when no pod waits for the update mode; False with reason Stuck when
    one waits on what will not change by itself (QoS class, infeasible, refused), Audit
    when nothing may change, else InProgress."""
    pending, stuck = tally.pending, tally.stuck
    if not pending:
        status, reason, message = True, "UpToDate", f"no pod waits for update {policy.spec.update}"
    elif policy.spec.mode == "Audit":
        status, reason = False, "Audit"
        message = f"mode Audit: {len(pending)} pods would be updated; nothing is changed"
    elif stuck:
        status, reason = False, "Stuck"
        message = f"{len(stuck)} pods cannot be updated: " + "; ".join(stuck[:3])
    else:
        status, reason = False, "InProgress"
        message = f"{len(pending)} pods to update"
    return build_condition(
        type_="Updated",
        status=status,
        reason=reason,
        message=message[:2048],
        generation=generation,
        now=now,
        previous=previous,
    )


def _status(
    tally: _Tally,
    *,
    policy: Candidate,
    generation: int | None,
    now: str,
    previous: MemoryPolicyStatus | None,
) -> MemoryPolicyStatus:
    matched, compliant, drifted = tally.matched, tally.compliant, tally.drifted
    infeasible, conflicts = tally.infeasible, tally.conflicts
    old_conditions = previous.conditions if previous else []
    counts = f"{matched} pods governed, {compliant} compliant, {len(drifted)} drifted"
    conditions = [
        # Ready follows Feasible: a policy that cannot size some of its pods is not ready
        # (GitOps tools and ``kubectl wait --for=condition=Ready`` read Ready alone).
        build_condition(
            type_="Ready",
            status=not infeasible,
            reason="Infeasible" if infeasible else "Reconciled",
            message=f"{counts}; {len(infeasible)} cannot be sized (see Feasible)"
            if infeasible
            else counts,
            generation=generation,
            now=now,
            previous=old_conditions,
        ),
        build_condition(
            type_="Feasible",
            status=not infeasible,
            reason="Infeasible" if infeasible else "Feasible",
            message="; ".join(infeasible[:3]) if infeasible else "every governed pod can be sized",
            generation=generation,
            now=now,
            previous=old_conditions,
        ),
    ]
    if policy.spec.update != "Initial":
        conditions.append(
            _update_condition(
                tally, policy=policy, generation=generation, now=now, previous=old_conditions
            )
        )
    conditions += [c for c in old_conditions if c.type not in {"Ready", "Feasible", "Updated"}]
    return MemoryPolicyStatus(
        observedGeneration=generation,
        conditions=conditions,
        matchedPods=matched,
        compliantPods=compliant,
        driftedPods=len(drifted),
        driftedPodNames=sorted(drifted)[:MAX_LISTED],
        conflicts=sorted(conflicts, key=lambda c: c.pod)[:MAX_LISTED],
        updatedPods=tally.updated,
        pendingPods=len(tally.pending),
        pendingUpdates=sorted(tally.pending, key=lambda p: p.pod)[:MAX_LISTED],
        staleRuntimePods=len(tally.stale),
        staleRuntimePodNames=sorted(tally.stale)[:MAX_LISTED],
        lastIncident=previous.lastIncident if previous else None,
    )


def describe_change(before: MemoryPolicyStatus | None, after: MemoryPolicyStatus) -> str | None:
    """One line saying what changed in the counts (None: nothing worth an Event)."""
    parts = []
    for name in (
        "matchedPods",
        "compliantPods",
        "driftedPods",
        "updatedPods",
        "pendingPods",
        "staleRuntimePods",
    ):
        old = getattr(before, name) if before else 0
        new = getattr(after, name)
        if old != new:
            parts.append(f"{name.removesuffix('Pods')} {old} -> {new}")
    old_conflicts = {c.pod for c in before.conflicts} if before else set()
    new_conflicts = {c.pod for c in after.conflicts} - old_conflicts
    if new_conflicts:
        parts.append(f"conflicts on {', '.join(sorted(new_conflicts))}")
    return ", ".join(parts) or None


@dataclass(frozen=True)
class Observed:
    """A policy's status as last seen, with what a conditional write needs."""

    generation: int | None
    resource_version: str | None
    status: Mapping[str, Any]
    uid: str | None = None


def _older(version: str | None, than: str | None) -> bool:
    """True when resourceVersion ``version`` is older than ``than``. Kubernetes makes them
    comparable as integers (KEP-5504); anything else counts as not older."""
    if not (version and than and version.isdigit() and than.isdigit()):
        return False
    return int(version) < int(than)


class StatusBook:
    """What status work is due: namespaces whose pods or policies changed since their
    policies' status was last computed, and the status each policy has now.

    Fed by the watches (a pod or policy event touches its namespace); drained by the
    status loop, which recomputes only the touched namespaces. Pure bookkeeping, no I/O.
    """

    def __init__(self) -> None:
        self._dirty: set[str] = set()
        self.ready = False
        """True once the watches have filled the indexes: statuses computed before that
        would count pods not yet listed."""
        self.current: dict[tuple[str, str], Observed] = {}
        """(namespace, name) -> the policy as last seen or written."""

    def touch(self, namespace: str) -> None:
        self._dirty.add(namespace)

    def touch_all(self, namespaces: Iterable[str]) -> None:
        self._dirty.update(namespaces)

    def take(self) -> list[str]:
        """The namespaces due, in order; they are no longer due afterwards."""
        due, self._dirty = sorted(self._dirty), set()
        return due

    def observe(self, policy: Mapping[str, Any]) -> None:
        """Remember a policy object as the watch (or a write, or a read) returned it.

        An older version never replaces a newer one: a write's answer can arrive after
        the watch has already delivered a later change (kopf's own patch, say), and
        remembering the older one would make every conditional write after it conflict.
        """
        metadata = policy.get("metadata") or {}
        key = (str(metadata.get("namespace")), str(metadata.get("name")))
        known = self.current.get(key)
        if (
            known is not None
            and known.uid == metadata.get("uid")
            and _older(metadata.get("resourceVersion"), known.resource_version)
        ):
            return
        self.current[key] = Observed(
            generation=metadata.get("generation"),
            resource_version=metadata.get("resourceVersion"),
            status=dict(policy.get("status") or {}),
            uid=metadata.get("uid"),
        )

    def forget(self, *, namespace: str, name: str) -> None:
        self.current.pop((namespace, name), None)
