"""The eviction gate: which drifted pod may be evicted now. Pure: pods, budgets and
``now`` in, a decision out; no clock, no I/O (an import-linter contract holds it to that).

It bounds what any policy, hostile or mistaken, can make memwarden do to running pods:

- at most ``per_minute`` evictions in any minute cluster-wide and ``per_policy_per_minute``
  per policy (sliding windows: the bound holds over *every* 60 s, not per calendar minute);
- one pod of a workload in flight at a time: from its eviction until the workload's pods
  are all Ready again, none terminating, as many Ready as before (the replacement is up).
  Where a PodDisruptionBudget selects the workload's pods, the budget says how many may
  be down at once instead (the API server enforces it; the gate does not ask while it
  allows none);
- never a pod without a controller (nothing would recreate it), nor one whose controller
  does not bring it back as it was (a Job's pod fails, a mirror pod's Node re-creates it
  unchanged).

Decisions are values with a reason (``Allowed``, ``RateLimited``, ``WorkloadBusy``,
``NoController``, ``NotRecreatable``), never exceptions; refusals are ``permanent``, the
rest say when to ask again. The eviction itself is ``eviction.py``'s.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from memwarden.api import LabelSelector
from memwarden.observability import metrics
from memwarden.selection import selector_matches
from memwarden.settings import Settings

#: The window of both rate limits.
WINDOW_SECONDS = 60.0

#: Controller kinds whose pods an eviction does not bring back as they were, and why.
NOT_RECREATED = {
    "Job": "an evicted Job pod fails and counts against the Job's backoffLimit; its "
    "replacement starts the work over",
    "Node": "a mirror (static) pod: the kubelet re-creates it from its manifest, never "
    "through admission",
}


def not_recreated_why(kind: str) -> str | None:
    """Why a pod whose controller is of ``kind`` must not be evicted, or None."""
    return NOT_RECREATED.get(kind)


@dataclass(frozen=True)
class Owner:
    """The workload a pod belongs to: its controller, a ReplicaSet resolved to the
    Deployment that made it."""

    kind: str
    name: str

    def __str__(self) -> str:
        return f"{self.kind}/{self.name}"


def controller_reference(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The pod's ownerReference with ``controller: true``, if any."""
    references = (pod.get("metadata") or {}).get("ownerReferences") or []
    return next((r for r in references if r.get("controller")), None)


def owner_of(pod: Mapping[str, Any]) -> Owner | None:
    """The pod's workload; None without a controller ownerReference.

    A ReplicaSet that a Deployment made is named ``<deployment>-<pod-template-hash>`` and
    its pods carry that hash as a label: such pods belong to the Deployment, so a rollout's
    old and new ReplicaSets count as one workload (no second pod in flight through the
    other one), without reading ReplicaSets (no permission for them). Grouping a bare
    ReplicaSet named that way with a Deployment that does not exist only makes the gate
    more careful. A reference without ``apiVersion`` (the update loop's slim pod views keep
    kind and name only) is taken as ``apps``.
    """
    reference = controller_reference(pod)
    if reference is None:
        return None
    kind, name = str(reference.get("kind") or ""), str(reference.get("name") or "")
    template_hash = ((pod.get("metadata") or {}).get("labels") or {}).get("pod-template-hash")
    if (
        kind == "ReplicaSet"
        and str(reference.get("apiVersion") or "apps/").startswith("apps/")
        and template_hash
        and name.endswith(f"-{template_hash}")
    ):
        return Owner("Deployment", name.removesuffix(f"-{template_hash}"))
    return Owner(kind, name)


@dataclass(frozen=True)
class WorkloadState:
    """A workload's pods as observed now (terminating ones included)."""

    owner: Owner
    #: uid of each of its pods, terminating or not.
    uids: frozenset[str] = frozenset()
    #: Names of its pods that are not terminating, and of those that are Ready.
    running: frozenset[str] = frozenset()
    ready: frozenset[str] = frozenset()
    terminating: frozenset[str] = frozenset()
    #: The PodDisruptionBudget selecting its pods (the most restrictive if several), and
    #: its ``status.disruptionsAllowed``; None when no budget selects them.
    budget: str | None = None
    disruptions_allowed: int | None = None

    @property
    def settled(self) -> bool:
        """Every pod up and Ready, none on its way out."""
        return not self.terminating and self.running == self.ready


def _ready(pod: Mapping[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def _finished(pod: Mapping[str, Any]) -> bool:
    return (pod.get("status") or {}).get("phase") in {"Succeeded", "Failed"}


def workload_state(
    owner: Owner, *, pods: Iterable[Mapping[str, Any]], budgets: Iterable[Mapping[str, Any]] = ()
) -> WorkloadState:
    """The state of ``owner``'s workload from its namespace's pods and budgets."""
    mine = [p for p in pods if owner_of(p) == owner and not _finished(p)]
    uids, running, ready, terminating = set(), set(), set(), set()
    for pod in mine:
        metadata = pod.get("metadata") or {}
        name = str(metadata.get("name"))
        uids.add(str(metadata.get("uid")))
        if metadata.get("deletionTimestamp"):
            terminating.add(name)
            continue
        running.add(name)
        if _ready(pod):
            ready.add(name)
    budget, allowed = None, None
    for pdb in budgets:
        selector = (pdb.get("spec") or {}).get("selector")
        if selector is None:  # policy/v1: a null selector selects nothing
            continue
        parsed = LabelSelector.model_validate(selector)
        labels = [(p.get("metadata") or {}).get("labels") or {} for p in mine]
        if not any(selector_matches(parsed, pod_labels) for pod_labels in labels):
            continue
        count = int((pdb.get("status") or {}).get("disruptionsAllowed") or 0)
        if allowed is None or count < allowed:
            budget, allowed = str((pdb.get("metadata") or {}).get("name")), count
    return WorkloadState(
        owner=owner,
        uids=frozenset(uids),
        running=frozenset(running),
        ready=frozenset(ready),
        terminating=frozenset(terminating),
        budget=budget,
        disruptions_allowed=allowed,
    )


# --- decisions -----------------------------------------------------------------------


@dataclass(frozen=True)
class Allowed:
    """Evict now: the gate counted it (``release`` it if the eviction does not happen)."""

    reason: Literal["Allowed"] = "Allowed"
    permanent: bool = False
    retry_after: float = 0.0

    @property
    def message(self) -> str:
        return "eviction allowed"


@dataclass(frozen=True)
class RateLimited:
    """Too many evictions in the last minute, cluster-wide or by this policy."""

    retry_after: float
    scope: Literal["cluster", "policy"]
    limit: int
    reason: Literal["RateLimited"] = "RateLimited"
    permanent: bool = False

    @property
    def message(self) -> str:
        who = "cluster-wide" if self.scope == "cluster" else "for this policy"
        return f"{self.limit} evictions per minute {who} reached; next in {self.retry_after:.0f}s"


@dataclass(frozen=True)
class WorkloadBusy:
    """Another pod of the workload is still being replaced (or its budget allows none)."""

    owner: Owner
    why: str
    retry_after: float
    reason: Literal["WorkloadBusy"] = "WorkloadBusy"
    permanent: bool = False

    @property
    def message(self) -> str:
        return f"{self.owner}: {self.why}"


@dataclass(frozen=True)
class NoController:
    """A bare pod: evicted, nothing would bring it back."""

    reason: Literal["NoController"] = "NoController"
    permanent: bool = True
    retry_after: float | None = None

    @property
    def message(self) -> str:
        return (
            "no controller ownerReference: an evicted pod would not come back; recreate it yourself"
        )


@dataclass(frozen=True)
class NotRecreatable:
    """A controller that does not recreate the pod as it was (``NOT_RECREATED``)."""

    owner: Owner
    why: str
    reason: Literal["NotRecreatable"] = "NotRecreatable"
    permanent: bool = True
    retry_after: float | None = None

    @property
    def message(self) -> str:
        return f"owned by {self.owner}: {self.why}"


Decision = Allowed | RateLimited | WorkloadBusy | NoController | NotRecreatable

#: The ``outcome`` label of ``memwarden_evictions`` for an eviction the gate held back.
HELD = {
    "RateLimited": "rate_limited",
    "WorkloadBusy": "workload_busy",
    "NoController": "no_controller",
    "NotRecreatable": "not_recreatable",
}


@dataclass
class _InFlight:
    """A pod the gate let through, until its workload has settled again."""

    uid: str
    ready_before: int
    at: float


@dataclass(frozen=True)
class _Busy:
    """A workload last seen busy: when, why, and the pods that made it so (empty: the
    whole workload, e.g. a budget that allows no disruption)."""

    at: float
    why: str
    blockers: frozenset[str] = frozenset()


_IN_FLIGHT = "a pod evicted earlier is still being replaced"

#: Remembered busy workloads and in-flight records beyond this many are pruned of the
#: stale ones (a cluster's workloads, not its pods: small).
_PRUNE_ABOVE = 1000


@dataclass
class EvictionGate:
    """Who may be evicted now. Pure: ``now`` (monotonic seconds) is passed in.

    ``precheck`` answers what needs no look at the workload (refusals, rate limits, a
    workload seen busy moments ago, or being looked at for another of its pods), so a
    hundred pods waiting on one Deployment cost one read of their namespace per
    ``busy_retry``, not a hundred; ``admit`` decides from the workload observed just
    before. ``admit`` counts an allowed eviction at once (so
    concurrent callers cannot both pass the last slot); ``release`` gives the slot back
    when the eviction did not happen (a 429, the pod already gone, an error): only real
    disruptions count.
    """

    per_minute: int
    per_policy_per_minute: int
    #: An in-flight record is dropped this long after the eviction even if the workload
    #: never got back as many Ready pods (it was scaled down meanwhile); a replacement
    #: still not Ready keeps the workload busy through the observation itself.
    settle_timeout: float = 600.0
    #: How soon to look at a busy workload again: a replacement takes seconds.
    busy_retry: float = 5.0
    _cluster: deque[float] = field(default_factory=deque, init=False, repr=False)
    _policies: dict[str, deque[float]] = field(default_factory=dict, init=False, repr=False)
    _in_flight: dict[tuple[str, Owner], _InFlight] = field(
        default_factory=dict, init=False, repr=False
    )
    _busy_seen: dict[tuple[str, Owner], _Busy] = field(default_factory=dict, init=False, repr=False)
    _looking: dict[tuple[str, Owner], float] = field(default_factory=dict, init=False, repr=False)

    def __post_init__(self) -> None:
        if self.per_minute < 1 or self.per_policy_per_minute < 1:
            raise ValueError("eviction rate limits must be at least 1 per minute")

    @classmethod
    def from_settings(cls, settings: Settings) -> EvictionGate:
        return cls(
            per_minute=settings.updates.evictions_per_minute,
            per_policy_per_minute=settings.updates.evictions_per_minute_per_policy,
        )

    def precheck(self, pod: Mapping[str, Any], *, policy: str, now: float) -> Decision | None:
        """A held-back decision that needs no look at the workload, or None: then observe
        the workload (``observe_workload``) and ``admit``. Never ``Allowed``."""
        owner = owner_of(pod)
        refusal = self._refusal(owner)
        if refusal is not None or owner is None:
            return self._count(refusal or NoController())
        metadata = pod.get("metadata") or {}
        key = (str(metadata.get("namespace")), owner)
        seen = self._busy_seen.get(key)
        if (
            seen is not None
            and now - seen.at < self.busy_retry
            and not (seen.blockers and seen.blockers <= {str(metadata.get("name"))})
        ):
            wait = seen.at + self.busy_retry - now
            return self._count(WorkloadBusy(owner=owner, why=seen.why, retry_after=wait))
        looking = self._looking.get(key)
        if looking is not None and now - looking < self.busy_retry:
            why = "another of its pods is being looked at"
            return self._count(WorkloadBusy(owner=owner, why=why, retry_after=self.busy_retry))
        limited = self._limited(policy, now)
        if limited is not None:
            return self._count(limited)
        self._looking[key] = now  # until ``admit``: one look per workload at a time
        return None

    def admit(
        self,
        pod: Mapping[str, Any],
        *,
        policy: str,
        workload: WorkloadState | None,
        now: float,
    ) -> Decision:
        """May ``pod`` (governed by ``policy``, "namespace/name") be evicted now?

        ``workload`` is its owner's state observed just before (``observe_workload``);
        None only for a pod without an owner. An ``Allowed`` is counted at once.
        """
        owner = owner_of(pod)
        refusal = self._refusal(owner)
        if refusal is not None or owner is None:
            return self._count(refusal or NoController())
        if workload is None or workload.owner != owner:
            raise ValueError(f"admit needs the state of {owner}'s workload")
        metadata = pod.get("metadata") or {}
        namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
        key = (namespace, owner)
        self._looking.pop(key, None)
        self._prune_memory(now)
        busy = self._busy(candidate=name, key=key, workload=workload, now=now)
        if busy is not None:
            self._busy_seen[key] = busy
            return self._count(WorkloadBusy(owner=owner, why=busy.why, retry_after=self.busy_retry))
        self._busy_seen.pop(key, None)
        limited = self._limited(policy, now)
        if limited is not None:
            return self._count(limited)
        self._cluster.append(now)
        self._policies.setdefault(policy, deque()).append(now)
        uid = str(metadata.get("uid"))
        self._in_flight[key] = _InFlight(uid=uid, ready_before=len(workload.ready), at=now)
        if workload.budget is None:  # in flight now: no need to look for a while
            self._busy_seen[key] = _Busy(at=now, why=_IN_FLIGHT)
        return self._count(Allowed())

    def release(self, pod: Mapping[str, Any], *, policy: str, now: float) -> None:
        """The eviction ``admit`` allowed did not happen: give its slots back."""
        owner = owner_of(pod)
        if owner is None:
            return
        namespace = str((pod.get("metadata") or {}).get("namespace"))
        uid = str((pod.get("metadata") or {}).get("uid"))
        record = self._in_flight.get((namespace, owner))
        if record is None or record.uid != uid:
            return
        del self._in_flight[(namespace, owner)]
        self._busy_seen.pop((namespace, owner), None)
        for window in (self._cluster, self._policies.get(policy)):
            if window is not None and record.at in window:
                window.remove(record.at)

    @staticmethod
    def _refusal(owner: Owner | None) -> NoController | NotRecreatable | None:
        if owner is None:
            return NoController()
        why = not_recreated_why(owner.kind)
        return None if why is None else NotRecreatable(owner=owner, why=why)

    def _limited(self, policy: str, now: float) -> RateLimited | None:
        cluster = self._prune(self._cluster, now)
        if len(cluster) >= self.per_minute:
            wait = cluster[0] + WINDOW_SECONDS - now
            return RateLimited(retry_after=wait, scope="cluster", limit=self.per_minute)
        mine = self._prune(self._policies.get(policy, deque()), now)
        if len(mine) >= self.per_policy_per_minute:
            wait = mine[0] + WINDOW_SECONDS - now
            return RateLimited(retry_after=wait, scope="policy", limit=self.per_policy_per_minute)
        return None

    def _busy(
        self, *, candidate: str, key: tuple[str, Owner], workload: WorkloadState, now: float
    ) -> _Busy | None:
        """Why the workload cannot lose a pod now, or None."""
        if workload.budget is not None:
            # The budget counts unready pods itself, and the API server enforces it.
            self._in_flight.pop(key, None)
            if (workload.disruptions_allowed or 0) <= 0:
                why = f"PodDisruptionBudget {workload.budget} allows no disruption now"
                return _Busy(at=now, why=why)
            return None
        record = self._in_flight.get(key)
        if record is not None:
            replaced = (
                record.uid not in workload.uids
                and workload.settled
                and len(workload.ready) >= record.ready_before
            )
            if replaced or now - record.at >= self.settle_timeout:
                del self._in_flight[key]
            else:
                return _Busy(at=now, why=_IN_FLIGHT)
        if workload.terminating:
            why = f"pod {min(workload.terminating)} is terminating"
            return _Busy(at=now, why=why, blockers=workload.terminating)
        # An unready pod of its own may go: evicting it costs no availability (a pod
        # crash-looping out of memory is what a new policy is often for).
        unready = workload.running - workload.ready
        if unready - {candidate}:
            why = f"pod {min(unready - {candidate})} is not Ready"
            return _Busy(at=now, why=why, blockers=frozenset(unready))
        return None

    def _prune_memory(self, now: float) -> None:
        """Forget workloads no longer busy and records past their timeout (rarely run)."""
        if len(self._looking) > _PRUNE_ABOVE:
            for key in [k for k, at in self._looking.items() if now - at >= self.busy_retry]:
                del self._looking[key]
        if len(self._busy_seen) > _PRUNE_ABOVE:
            for key in [k for k, b in self._busy_seen.items() if now - b.at >= self.busy_retry]:
                del self._busy_seen[key]
        if len(self._in_flight) > _PRUNE_ABOVE:
            old = [k for k, r in self._in_flight.items() if now - r.at >= self.settle_timeout]
            for key in old:
                del self._in_flight[key]
        for policy in [p for p, w in self._policies.items() if not self._prune(w, now)]:
            del self._policies[policy]

    @staticmethod
    def _prune(window: deque[float], now: float) -> deque[float]:
        while window and window[0] <= now - WINDOW_SECONDS:
            window.popleft()
        return window

    @staticmethod
    def _count(decision: Decision) -> Decision:
        if not isinstance(decision, Allowed):
            metrics.EVICTIONS.labels(outcome=HELD[decision.reason]).inc()
        return decision


__all__ = [
    "HELD",
    "NOT_RECREATED",
    "WINDOW_SECONDS",
    "Allowed",
    "Decision",
    "EvictionGate",
    "NoController",
    "NotRecreatable",
    "Owner",
    "RateLimited",
    "WorkloadBusy",
    "WorkloadState",
    "controller_reference",
    "not_recreated_why",
    "owner_of",
    "workload_state",
]
