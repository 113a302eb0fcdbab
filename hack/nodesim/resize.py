"""In-place pod resize as the kubelet decides it (v1.35+, read in k8s.io/kubernetes v1.37.2). Pure.

Test infrastructure. The simulator's pod runner and allocation book call these; nothing
here touches a process or the API. The kubelet sources each decision follows:

- ``admit_resize``: may the node allocate the pod's new requests?
  (``pkg/kubelet/allocation/handlers.go`` podResizesAdmitHandler: ``Infeasible`` when the
  pod's requests exceed the node's allocatable outright; the predicate admit handler,
  ``lifecycle/predicate.go`` + scheduler ``fitsRequest``: ``Deferred`` when they do not
  fit beside the other pods' allocated requests — the status manager turns every
  non-Infeasible reason into ``Deferred``).
- ``container_action``: what a running container needs for its allocated resources to
  take effect (``kuberuntime_manager.go`` computePodResizeAction: a changed resource whose
  ``resizePolicy`` says ``RestartContainer`` restarts the container, else it is updated
  live; no policy means ``NotRequired``).
- ``memory_decrease_error``: the best-effort refusal to set a memory limit at or below
  current usage (validateMemoryResizeAction), reported as ``PodResizeInProgress`` with
  reason ``Error``.
- ``retry_order``: which deferred resize is retried first (allocation_manager.go
  sortPendingResizes).
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memwarden.quantity import QuantityError, parse_bytes, parse_millicores

__all__ = [
    "DEFERRED",
    "INFEASIBLE",
    "Action",
    "Pending",
    "PodRequest",
    "Resources",
    "RetryCandidate",
    "admit_resize",
    "container_action",
    "memory_decrease_error",
    "pod_memory_limit",
    "pod_request",
    "retry_order",
]

INFEASIBLE = "Infeasible"
DEFERRED = "Deferred"


def _quantity(resources: Mapping[str, Any], group: str, name: str) -> int | None:
    value = (resources.get(group) or {}).get(name)
    if value is None:
        return None
    try:
        return parse_millicores(value) if name == "cpu" else parse_bytes(value)
    except QuantityError:
        return None


@dataclass(frozen=True)
class Resources:
    """A container's resizable resources: cpu in millicores, memory in bytes; 0 = unset
    (the kubelet's ``containerResourcesFromRequirements`` compares them the same way)."""

    cpu_request: int = 0
    cpu_limit: int = 0
    memory_request: int = 0
    memory_limit: int = 0

    @classmethod
    def of(cls, resources: Mapping[str, Any] | None) -> Resources:
        resources = resources or {}
        return cls(
            cpu_request=_quantity(resources, "requests", "cpu") or 0,
            cpu_limit=_quantity(resources, "limits", "cpu") or 0,
            memory_request=_quantity(resources, "requests", "memory") or 0,
            memory_limit=_quantity(resources, "limits", "memory") or 0,
        )


@dataclass(frozen=True)
class PodRequest:
    """What a pod asks of the node (or what the node has): millicores and bytes."""

    cpu: int = 0
    memory: int = 0

    def __add__(self, other: PodRequest) -> PodRequest:
        return PodRequest(cpu=self.cpu + other.cpu, memory=self.memory + other.memory)

    def at_least(self, other: PodRequest) -> PodRequest:
        return PodRequest(cpu=max(self.cpu, other.cpu), memory=max(self.memory, other.memory))


def _aggregate(
    spec: Mapping[str, Any],
    resources: Mapping[str, Mapping[str, Any]],
    group: str,
) -> PodRequest:
    """The pod's requests (or limits) as component-helpers' ``PodRequests`` adds them:
    regular containers and sidecars summed, at least each init container plus the sidecars
    started before it, plus the pod's overhead. ``resources`` overrides a container's own
    (the allocated values of the other pods)."""

    def of(container: Mapping[str, Any]) -> PodRequest:
        res = resources.get(str(container.get("name")), container.get("resources") or {})
        return PodRequest(
            cpu=_quantity(res, group, "cpu") or 0, memory=_quantity(res, group, "memory") or 0
        )

    total = PodRequest()
    for container in spec.get("containers") or []:
        total += of(container)
    sidecars = PodRequest()
    init_peak = PodRequest()
    for container in spec.get("initContainers") or []:
        if container.get("restartPolicy") == "Always":
            total += of(container)
            sidecars += of(container)
            init_peak = init_peak.at_least(sidecars)
        else:
            init_peak = init_peak.at_least(of(container) + sidecars)
    total = total.at_least(init_peak)
    overhead = spec.get("overhead") or {}
    return total + PodRequest(
        cpu=_quantity({"o": overhead}, "o", "cpu") or 0,
        memory=_quantity({"o": overhead}, "o", "memory") or 0,
    )


def pod_request(
    spec: Mapping[str, Any], resources: Mapping[str, Mapping[str, Any]] | None = None
) -> PodRequest:
    """The pod's requests; ``resources`` (per container name) replaces the spec's."""
    return _aggregate(spec, resources or {}, "requests")


def pod_memory_limit(
    spec: Mapping[str, Any], resources: Mapping[str, Mapping[str, Any]] | None = None
) -> int | None:
    """The pod cgroup's memory limit: set only when every container declares one
    (``cm.ResourceConfigForPod``); ``None`` otherwise."""
    resources = resources or {}
    containers = [*(spec.get("initContainers") or []), *(spec.get("containers") or [])]
    for container in containers:
        res = resources.get(str(container.get("name")), container.get("resources") or {})
        if not _quantity(res, "limits", "memory"):
            return None
    return _aggregate(spec, resources, "limits").memory


@dataclass(frozen=True)
class Pending:
    """A resize the node did not allocate: ``PodResizePending`` with this reason."""

    reason: str
    message: str


def admit_resize(
    *, desired: PodRequest, others: Iterable[PodRequest], allocatable: PodRequest
) -> Pending | None:
    """``None`` when the node allocates the pod's ``desired`` requests, else why not.

    Infeasible: more than the node's allocatable (memory named first). Deferred: more than
    what the other pods' allocated requests leave (cpu checked first, as ``fitsRequest``).
    """
    if desired.cpu > allocatable.cpu or desired.memory > allocatable.memory:
        if desired.memory > allocatable.memory:
            what = f"memory, requested: {desired.memory}, capacity: {allocatable.memory}"
        else:
            what = f"cpu, requested: {desired.cpu}, capacity: {allocatable.cpu}"
        return Pending(INFEASIBLE, f"Node didn't have enough capacity: {what}")
    used = PodRequest()
    for other in others:
        used += other
    for name, want, have, taken in (
        ("cpu", desired.cpu, allocatable.cpu, used.cpu),
        ("memory", desired.memory, allocatable.memory, used.memory),
    ):
        if want > 0 and want > have - taken:
            return Pending(
                DEFERRED,
                f"Node didn't have enough resource: {name}, requested: {want},"
                f" used: {taken}, capacity: {have}",
            )
    return None


class Action(enum.Enum):
    NONE = "none"
    #: Apply the new values to the running container (``NotRequired``).
    UPDATE = "update"
    #: Kill the container and start it again with the new values (``RestartContainer``).
    RESTART = "restart"


def container_action(
    *, allocated: Resources, actuated: Resources, resize_policy: Sequence[Mapping[str, Any]]
) -> Action:
    """What a running container needs so that ``allocated`` is in effect."""
    if allocated == actuated:
        return Action.NONE
    policies = {str(p.get("resourceName")): str(p.get("restartPolicy")) for p in resize_policy}
    changed = []
    if allocated.memory_limit != actuated.memory_limit:
        changed.append("memory")
    if allocated.memory_request != actuated.memory_request:
        changed.append("memory")
    if allocated.cpu_limit != actuated.cpu_limit or allocated.cpu_request != actuated.cpu_request:
        changed.append("cpu")
    if any(policies.get(name, "NotRequired") == "RestartContainer" for name in changed):
        return Action.RESTART
    return Action.UPDATE


def _aggregate_errors(errors: Sequence[str]) -> str:
    """apimachinery's ``NewAggregate(...).Error()``: one message alone, several in brackets."""
    unique = list(dict.fromkeys(errors))
    return unique[0] if len(unique) == 1 else "[" + ", ".join(unique) + "]"


def memory_decrease_error(
    *,
    pod_limit_before: int | None,
    pod_limit_after: int | None,
    pod_usage: int,
    decreasing: Mapping[str, int],
    container_usage: Mapping[str, int],
) -> str | None:
    """The kubelet's refusal to set memory limits at or below current usage, or ``None``.

    ``decreasing``: the containers updated live whose memory limit shrinks (or appears),
    with the new limit. A container's line reports the pod's usage: v1.37.2 prints
    ``podUsageStats`` there, and the simulator keeps that wording.
    """
    errors = []
    pod_decreasing = pod_limit_after is not None and (
        pod_limit_before is None or pod_limit_after < pod_limit_before
    )
    if pod_decreasing and pod_limit_after is not None and pod_usage >= pod_limit_after:
        errors.append(
            f"attempting to set pod memory limit ({pod_limit_after}) below current usage"
            f" ({pod_usage})"
        )
    for name, limit in decreasing.items():
        if container_usage.get(name, 0) >= limit:
            errors.append(
                f'attempting to set container "{name}" memory limit ({limit}) below current'
                f" usage ({pod_usage})"
            )
    if not errors:
        return None
    return f"cannot decrease memory limits: {_aggregate_errors(errors)}"


@dataclass(frozen=True)
class RetryCandidate:
    """A deferred resize, with what the kubelet sorts retries by."""

    uid: str
    increasing: bool
    priority: int
    guaranteed: bool
    pending_since: dt.datetime | None


def retry_order(candidates: Iterable[RetryCandidate]) -> list[str]:
    """Deferred resizes in the order the kubelet retries them: those that do not increase
    requests first, then higher priority, then Guaranteed, then the longest waiting."""
    latest = dt.datetime.max.replace(tzinfo=dt.UTC)

    def key(c: RetryCandidate) -> tuple[bool, int, bool, dt.datetime]:
        return (c.increasing, -c.priority, not c.guaranteed, c.pending_since or latest)

    return [c.uid for c in sorted(candidates, key=key)]
