"""The node's allocation book: the resources each pod was given (the kubelet's allocation manager).

Test infrastructure. A pod is allocated its spec's resources when the simulator first
runs it; a resize (a changed spec through ``pods/resize``) is allocated only when
``resize.admit_resize`` says the node has room beside the other pods' *allocated*
requests, else it waits as ``PodResizePending`` (``Infeasible`` or ``Deferred``).
Deferred resizes are retried, in the kubelet's order, when room may have appeared: a pod
left the node (deleted or terminal) or a resize lowered a pod's requests. The pod worker
reads its allocation here and makes it take effect (``pods.PodWorker._actuate``).

Thread-safe: pod workers call in from their own threads. Decisions are in ``resize``.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from nodesim import resize
from nodesim.resize import Pending, PodRequest, Resources

log = logging.getLogger("nodesim.allocation")

ContainerResources = Mapping[str, Mapping[str, Any]]


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _resizable(spec: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    """Regular containers and sidecars: the containers a resize may change."""
    sidecars = [c for c in spec.get("initContainers") or [] if c.get("restartPolicy") == "Always"]
    return [*sidecars, *(spec.get("containers") or [])]


def _requested(spec: Mapping[str, Any]) -> dict[str, Mapping[str, Any]]:
    return {
        str(c["name"]): {k: v for k, v in (c.get("resources") or {}).items() if k != "claims"}
        for c in _resizable(spec)
    }


def _same(a: ContainerResources, b: ContainerResources) -> bool:
    return a.keys() == b.keys() and all(Resources.of(a[k]) == Resources.of(b[k]) for k in a)


def _generation(pod: Mapping[str, Any]) -> int:
    return int((pod.get("metadata") or {}).get("generation") or 0)


@dataclass(frozen=True)
class Allocation:
    """What a pod worker needs to know about its pod's allocation."""

    #: Allocated ``resources`` per resizable container.
    containers: ContainerResources
    #: The resize that waits, if any; with the generation it was last evaluated at.
    pending: Pending | None = None
    pending_generation: int = 0
    pending_since: dt.datetime | None = None
    #: Counts accepted resizes: a new value means "start PodResizeInProgress afresh".
    accepted: int = 0
    accepted_generation: int = 0


@dataclass
class _Entry:
    pod: Mapping[str, Any]
    containers: ContainerResources
    wake: Callable[[], None]
    #: (generation, requested resources) last evaluated, so an unchanged pod is not re-judged.
    evaluated: tuple[int, ContainerResources] | None = None
    pending: Pending | None = None
    pending_generation: int = 0
    pending_since: dt.datetime | None = None
    accepted: int = 0
    accepted_generation: int = 0
    released: bool = False

    def request(self) -> PodRequest:
        return resize.pod_request(self.pod.get("spec") or {}, self.containers)

    def view(self) -> Allocation:
        return Allocation(
            containers=dict(self.containers),
            pending=self.pending,
            pending_generation=self.pending_generation,
            pending_since=self.pending_since,
            accepted=self.accepted,
            accepted_generation=self.accepted_generation,
        )


class AllocationBook:
    """The allocated resources of every pod running on the node."""

    def __init__(self, *, allocatable: PodRequest) -> None:
        self._allocatable = allocatable
        self._lock = threading.Lock()
        self._pods: dict[str, _Entry] = {}
        #: Why deferred resizes should be judged again (set under the lock), or "".
        self._room_freed = ""

    def admit(self, uid: str, pod: Mapping[str, Any], *, wake: Callable[[], None]) -> None:
        """Record the resources a pod starts with: its spec's, or — for a pod adopted after a
        simulator restart — those its status says were in effect (``containerStatuses[].
        resources``), so a resize that was pending before the restart is judged again."""
        spec = pod.get("spec") or {}
        containers = _requested(spec)
        statuses = {
            s.get("name"): s
            for key in ("containerStatuses", "initContainerStatuses")
            for s in (pod.get("status") or {}).get(key) or []
        }
        for name in containers:
            reported = (statuses.get(name) or {}).get("resources")
            if reported is not None:
                containers[name] = reported
        with self._lock:
            if uid in self._pods:
                return
            self._pods[uid] = _Entry(pod=pod, containers=containers, wake=wake)

    def sync(self, uid: str, pod: Mapping[str, Any]) -> Allocation | None:
        """The pod's allocation, after judging a resize its spec asks for (once per
        generation and requested resources)."""
        with self._lock:
            entry = self._pods.get(uid)
            if entry is None or entry.released:
                return None
            entry.pod = pod
            desired = _requested(pod.get("spec") or {})
            key = (_generation(pod), desired)
            if entry.evaluated is None or entry.evaluated != key:
                entry.evaluated = key
                self._evaluate(uid, entry, desired)
                self._retry_deferred()
            return entry.view()

    def release(self, uid: str) -> None:
        """The pod no longer holds resources here (gone or terminal): retry deferred resizes."""
        with self._lock:
            entry = self._pods.pop(uid, None)
            if entry is None:
                return
            entry.released = True
            self._room_freed = "pod removed"
            self._retry_deferred()

    # --- under the lock ---------------------------------------------------------------

    def _others(self, uid: str) -> list[PodRequest]:
        return [e.request() for other, e in self._pods.items() if other != uid]

    def _evaluate(self, uid: str, entry: _Entry, desired: ContainerResources) -> bool:
        """Judge the pod's requested resources; ``True`` when a resize was allocated."""
        if _same(desired, entry.containers):
            entry.pending = None
            return False
        spec = entry.pod.get("spec") or {}
        before = entry.request()
        decision = resize.admit_resize(
            desired=resize.pod_request(spec, desired),
            others=self._others(uid),
            allocatable=self._allocatable,
        )
        generation = _generation(entry.pod)
        if decision is not None:
            if entry.pending is None or entry.pending.reason != decision.reason:
                entry.pending_since = _utcnow()
                log.info(
                    "pod %s: resize %s: %s", _name(entry.pod), decision.reason, decision.message
                )
            entry.pending = decision
            entry.pending_generation = generation
            return False
        entry.containers = dict(desired)
        entry.pending = None
        entry.pending_since = None
        entry.accepted += 1
        entry.accepted_generation = generation
        log.info("pod %s: resize allocated (generation %d)", _name(entry.pod), generation)
        after = entry.request()
        if after.cpu < before.cpu or after.memory < before.memory:
            self._room_freed = "requests lowered"
        return True

    def _retry_deferred(self) -> None:
        """Judge deferred resizes again, in the kubelet's order, while room was freed."""
        while self._room_freed:
            trigger, self._room_freed = self._room_freed, ""
            self._retry_once(trigger)

    def _retry_once(self, trigger: str) -> None:
        candidates = []
        for uid, entry in self._pods.items():
            if entry.pending is None or entry.pending.reason != resize.DEFERRED:
                continue
            spec = entry.pod.get("spec") or {}
            desired = resize.pod_request(spec, _requested(spec))
            current = entry.request()
            candidates.append(
                resize.RetryCandidate(
                    uid=uid,
                    increasing=desired.cpu > current.cpu or desired.memory > current.memory,
                    priority=int(spec.get("priority") or 0),
                    guaranteed=(entry.pod.get("status") or {}).get("qosClass") == "Guaranteed",
                    pending_since=entry.pending_since,
                )
            )
        for uid in resize.retry_order(candidates):
            entry = self._pods[uid]
            log.info("pod %s: retrying deferred resize (%s)", _name(entry.pod), trigger)
            if self._evaluate(uid, entry, _requested(entry.pod.get("spec") or {})):
                entry.wake()


def _name(pod: Mapping[str, Any]) -> str:
    metadata = pod.get("metadata") or {}
    return f"{metadata.get('namespace')}/{metadata.get('name')}"
