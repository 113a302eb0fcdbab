"""A pod's resources as the kubelet sees them, and its QoS class."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from memwarden.sizing.constants import QosClass, _amount, _check_non_negative

# --------------------------------------------------------------------------- pod shape


@dataclass(frozen=True)
class ContainerResources:
    """One container's resources as written in the pod spec (bytes, millicores)."""

    name: str
    cpu_request_m: int | None = None
    cpu_limit_m: int | None = None
    memory_request: int | None = None
    memory_limit: int | None = None
    sidecar: bool = False
    """An init container with ``restartPolicy: Always``: it runs beside the app containers,
    so it counts like one (and can be resized in place like one)."""

    def __post_init__(self) -> None:
        owner = f"container {self.name}"
        _check_non_negative(
            owner,
            cpu_request_m=self.cpu_request_m,
            cpu_limit_m=self.cpu_limit_m,
            memory_request=self.memory_request,
            memory_limit=self.memory_limit,
        )
        for kind, request, limit in (
            ("cpu", self.cpu_request, _amount(self.cpu_limit_m)),
            ("memory", self.memory_request_effective, _amount(self.memory_limit)),
        ):
            if limit and request > limit:
                raise ValueError(f"{owner}: {kind} request {request} is above its limit {limit}")

    @property
    def cpu_request(self) -> int:
        """CPU request after API defaulting: an unset request takes the limit (0 = none)."""
        return _amount(self.cpu_request_m) or _amount(self.cpu_limit_m)

    @property
    def memory_request_effective(self) -> int:
        """Memory request after API defaulting: an unset request takes the limit (0 = none)."""
        return _amount(self.memory_request) or _amount(self.memory_limit)


@dataclass(frozen=True)
class PodShape:
    """What sizing needs of a pod: its containers' resources and its memory overhead."""

    containers: tuple[ContainerResources, ...]
    init_containers: tuple[ContainerResources, ...] = ()
    """In spec order; those with ``sidecar=True`` count like regular containers."""
    overhead_memory: int | None = None
    """``spec.overhead`` memory (RuntimeClass), added to the pod cgroup's requests and limits."""
    pod_resources: ContainerResources | None = None
    """``spec.resources`` (pod-level resources, KEP-2837, beta and on from 1.34) as written;
    None or all unset: the pod has none. Its ``name`` is only for messages."""

    def __post_init__(self) -> None:
        _check_non_negative("pod", overhead_memory=self.overhead_memory)
        if self.pod_resources is not None and self.pod_resources.sidecar:
            raise ValueError("pod: spec.resources is not a sidecar")
        names = [c.name for c in (*self.containers, *self.init_containers)]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"pod: duplicate container names {duplicates}")
        sidecars = [c.name for c in self.containers if c.sidecar]
        if sidecars:
            raise ValueError(f"pod: sidecar is for init containers only, not {sidecars}")

    @property
    def long_running(self) -> tuple[ContainerResources, ...]:
        """Containers that run for the pod's life: regular ones, then sidecars."""
        return (*self.containers, *(c for c in self.init_containers if c.sidecar))

    @property
    def has_pod_level_resources(self) -> bool:
        """``IsPodLevelResourcesSet``: the pod declares a pod-level cpu or memory amount."""
        res = self.pod_resources
        return res is not None and any(
            value is not None
            for value in (res.cpu_request_m, res.cpu_limit_m, res.memory_request, res.memory_limit)
        )

    @property
    def pod_memory_limit(self) -> int:
        """The pod-level memory limit (0: none); it caps the pod cgroup's memory.max."""
        res = self.pod_resources
        return _amount(res.memory_limit) if res is not None else 0


def _pod_level_requirements(pod: PodShape) -> tuple[dict[str, int], dict[str, int]] | None:
    """spec.resources (requests, limits) after the API server's defaulting, or None.

    ``defaultPodRequests`` (pkg/apis/core/v1/defaults.go, v1.37.2 line 527): only when the
    pod sets a pod-level limit, an unset pod-level request takes the containers' aggregate
    request for that resource when any container declares one, else the pod-level limit.
    """
    res = pod.pod_resources
    if res is None or not pod.has_pod_level_resources:
        return None
    given_requests = {"cpu": res.cpu_request_m, "memory": res.memory_request}
    given_limits = {"cpu": res.cpu_limit_m, "memory": res.memory_limit}
    limits = {k: v for k, v in given_limits.items() if v is not None}
    requests = {k: v for k, v in given_requests.items() if v is not None}
    if limits:
        aggregates = {
            "cpu": _pod_total(pod, lambda c: c.cpu_request),
            "memory": _pod_total(pod, lambda c: c.memory_request_effective),
        }
        for resource, (aggregate, _) in aggregates.items():
            if resource not in requests and aggregate > 0:
                requests[resource] = aggregate
        for resource, limit in limits.items():
            requests.setdefault(resource, limit)
    return requests, limits


def _requirements_qos(requests: Mapping[str, int], limits: Mapping[str, int]) -> QosClass:
    """``requirementsQOS`` of pkg/apis/core/v1/helper/qos/qos.go: one set of requirements."""
    if not requests and not limits:
        return "BestEffort"
    shapes: set[QosClass] = set()
    for resource in ("cpu", "memory"):
        request, limit = requests.get(resource, 0), limits.get(resource, 0)
        if request != limit:
            return "Burstable"
        shapes.add("BestEffort" if request == 0 else "Guaranteed")
    return shapes.pop() if len(shapes) == 1 else "Burstable"


def qos_class(pod: PodShape) -> QosClass:
    """The pod's QoS class by Kubernetes' rules (``GetPodQOS``).

    Guaranteed: every container, init containers included, has cpu and memory limits and
    requests equal to them (an unset request defaults to its limit). BestEffort: no cpu or
    memory request or limit anywhere. Burstable: the rest. Pod overhead does not count.
    With pod-level resources the pod's own requirements decide (``ComputePodQOS``).
    """
    pod_level = _pod_level_requirements(pod)
    if pod_level is not None:
        return _requirements_qos(*pod_level)
    requests = {"cpu": 0, "memory": 0}
    limits = {"cpu": 0, "memory": 0}
    every_limit_set = True
    for container in (*pod.containers, *pod.init_containers):
        for resource, request, limit in (
            ("cpu", container.cpu_request, _amount(container.cpu_limit_m)),
            ("memory", container.memory_request_effective, _amount(container.memory_limit)),
        ):
            requests[resource] += request
            limits[resource] += limit
            every_limit_set = every_limit_set and limit > 0
    if not any(requests.values()) and not any(limits.values()):
        return "BestEffort"
    if every_limit_set and requests == limits:
        return "Guaranteed"
    return "Burstable"


def _pod_total(pod: PodShape, amount: Callable[[ContainerResources], int]) -> tuple[int, bool]:
    """Kubernetes' pod-level aggregate (``PodRequests`` / ``PodLimits``, without overhead).

    Regular containers and sidecars add up; a plain init container runs alone beside the
    sidecars started before it, so only the largest such moment counts. Also says whether
    every container (and every init step) declared a non-zero amount.
    """
    total = 0
    declared = True
    for container in pod.containers:
        total += amount(container)
        declared = declared and amount(container) > 0
    sidecars = 0
    init_peak = 0
    for container in pod.init_containers:
        if container.sidecar:
            total += amount(container)
            sidecars += amount(container)
            step = sidecars
        else:
            step = amount(container) + sidecars
        declared = declared and step > 0
        init_peak = max(init_peak, step)
    return max(total, init_peak), declared
