"""Memory sizing: policy intent -> pod requests/limits -> the cgroup v2 files the kubelet writes.

Pure and computational: data in, data out. It imports no Kubernetes client, kopf, pydantic
or network library, and not ``api.py``: the handlers convert the CRD models into the plain
frozen types below. The kubelet model is KEP-2570 (MemoryQoS) as summarised in DESIGN.md §6;
the user-facing decisions are written down in ``docs/sizing.md``.

Bytes are ``int`` everywhere; CPU is in millicores. ``None`` and ``0`` both mean "unset",
as they do to the kubelet, which reads an absent quantity as zero.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, replace
from fractions import Fraction
from typing import Any, Final, Literal, get_args

from memwarden.quantity import format_go_bytes, readable_bytes

__all__ = [
    "GOMEMLIMIT_MIB_FLOOR_FROM",
    "HEADROOM_FRACTION",
    "HEADROOM_MIN",
    "MIB",
    "CgroupValues",
    "ContainerResources",
    "ContainerSizing",
    "GoRuntimeRule",
    "KubeletProfile",
    "MemoryRule",
    "PodShape",
    "PodSizing",
    "QosClass",
    "ReservationPolicy",
    "ResolvedMemory",
    "expected_cgroup",
    "expected_pod_cgroup",
    "qos_class",
    "resolve_rule",
    "size_pod",
]

QosClass = Literal["Guaranteed", "Burstable", "BestEffort"]
ReservationPolicy = Literal["None", "TieredReservation"]

MIB: Final = 2**20

#: MemoryQoS appears (alpha, gate off) in Kubernetes 1.22.
FIRST_MEMORY_QOS_MINOR: Final = 22
#: ``memoryReservationPolicy`` appears in 1.36; before it the gate alone writes memory.min.
FIRST_RESERVATION_POLICY_MINOR: Final = 36
#: MemoryQoS is beta in 1.37: gate on, ``memoryThrottlingFactor`` defaults to nil. The same
#: kubelet throttles containers without request or limit, writes the pod cgroup's memory.high
#: for pods with pod-level resources and then skips it on their containers without a limit.
FIRST_BETA_MINOR: Final = 37

#: A GOMEMLIMIT computed from a percentage is floored to a whole MiB from this size up: the
#: env value stays readable (``1843MiB``) and flooring never raises the limit. Below it one
#: MiB is more than 1.5 % of the value, so small limits keep their exact bytes.
GOMEMLIMIT_MIB_FLOOR_FROM: Final = 64 * MIB

#: GOMEMLIMIT should leave at least the larger of 5 % of memory.max and 32 MiB below
#: memory.max. That room holds what the cgroup is charged for but the Go runtime does not
#: count (cgo allocations, the binary, page cache, kernel memory) and the heap's overshoot
#: while a GC cycle finishes. With less, the GC runs nearly nonstop near the limit; the GC
#: CPU limiter caps it at ~50 % CPU, so the process degrades for minutes (a death spiral)
#: instead of failing fast. 32 MiB covers small containers where 5 % is only a few MiB.
HEADROOM_FRACTION: Final = Fraction(5, 100)
HEADROOM_MIN: Final = 32 * MIB


def _amount(value: int | None) -> int:
    """Unset and zero are the same amount to the kubelet and to the QoS rules."""
    return value or 0


def _check_non_negative(owner: str, **values: int | None) -> None:
    for name, value in values.items():
        if value is not None and value < 0:
            raise ValueError(f"{owner}: {name} must not be negative, got {value}")


# --------------------------------------------------------------------------- kubelet profile


@dataclass(frozen=True)
class KubeletProfile:
    """The kubelet settings that decide which cgroup files a pod's resources turn into.

    memwarden cannot read a kubelet's configuration, so the cluster's settings are
    configuration here; :meth:`defaults_for` gives each release's documented defaults.
    """

    kubernetes_minor: int = FIRST_BETA_MINOR
    """Kubelet minor version (1.x): selects that release's MemoryQoS rules."""
    memory_qos: bool = True
    """Feature gate ``MemoryQoS``: alpha and off by default in 1.22-1.36, beta and on in 1.37."""
    throttling_factor: float | None = None
    """``memoryThrottlingFactor`` in (0, 1]. None = unset, the 1.37 default: no memory.high."""
    reservation_policy: ReservationPolicy = "None"
    """``memoryReservationPolicy`` (1.36+); ignored before 1.36, where the field is absent."""
    page_size: int = 4096
    """The node's page size: the kubelet rounds memory.high down to whole pages."""
    node_allocatable: int | None = None
    """Node allocatable memory in bytes; replaces the limit in memory.high for a container
    without one. None = unknown (it differs per node): such memory.high values are not predicted.
    """

    def __post_init__(self) -> None:
        if self.kubernetes_minor < 0:
            raise ValueError(f"kubernetes_minor must not be negative, got {self.kubernetes_minor}")
        if self.memory_qos and self.kubernetes_minor < FIRST_MEMORY_QOS_MINOR:
            raise ValueError("memory_qos: the MemoryQoS feature gate exists from Kubernetes 1.22")
        factor = self.throttling_factor
        if factor is not None and (isinstance(factor, bool) or not 0 < factor <= 1):
            raise ValueError(f"throttling_factor: must be in (0, 1], got {factor!r}")
        if self.reservation_policy not in get_args(ReservationPolicy):
            raise ValueError(
                f"reservation_policy: must be None or TieredReservation,"
                f" got {self.reservation_policy!r}"
            )
        if self.page_size <= 0 or self.page_size & (self.page_size - 1):
            raise ValueError(f"page_size: must be a power of two, got {self.page_size}")
        if self.node_allocatable is not None and self.node_allocatable <= 0:
            raise ValueError(f"node_allocatable: must be positive, got {self.node_allocatable}")

    @classmethod
    def defaults_for(cls, minor: int, **overrides: Any) -> KubeletProfile:
        """The kubelet defaults of Kubernetes 1.<minor>, then ``overrides`` (field names).

        1.22-1.36: gate off, factor 0.9; 1.36 adds the reservation policy (None);
        1.37: gate on, factor unset, policy None. Before 1.22 there is no MemoryQoS at all.
        """
        beta = minor >= FIRST_BETA_MINOR
        alpha = FIRST_MEMORY_QOS_MINOR <= minor < FIRST_BETA_MINOR
        base = cls(
            kubernetes_minor=minor,
            memory_qos=beta,
            throttling_factor=0.9 if alpha else None,
            reservation_policy="None",
        )
        return replace(base, **overrides)

    @property
    def factor(self) -> Fraction | None:
        """The throttling factor as an exact fraction (``0.9`` is 9/10, not a binary float)."""
        if self.throttling_factor is None:
            return None
        return Fraction(str(self.throttling_factor))

    @property
    def has_reservation_policy(self) -> bool:
        """Whether this kubelet knows ``memoryReservationPolicy`` (1.36+)."""
        return self.kubernetes_minor >= FIRST_RESERVATION_POLICY_MINOR

    @property
    def throttles_unrequested(self) -> bool:
        """Whether a container with neither request nor limit gets memory.high (1.37+).

        Up to 1.36 the kubelet writes memory.high only when request != limit, so 0 == 0
        means none (kuberuntime_container_linux.go, v1.36.0 line 173); 1.37 also computes
        it when the request is 0, against node allocatable (v1.37.2 line 226).
        """
        return self.kubernetes_minor >= FIRST_BETA_MINOR

    @property
    def has_pod_level_memory_high(self) -> bool:
        """Whether the pod cgroup gets memory.high for pod-level resources (1.37+,
        ``ApplyPodLevelMemoryHigh``); before 1.37 only containers get one."""
        return self.kubernetes_minor >= FIRST_BETA_MINOR and self.throttles

    @property
    def throttles(self) -> bool:
        """Whether this kubelet writes memory.high at all."""
        return self.no_high_reason() is None

    def no_high_reason(self) -> str | None:
        """Why this kubelet writes no memory.high, naming the setting; None when it does."""
        if not self.memory_qos:
            return (
                "the MemoryQoS feature gate is off (the default before Kubernetes 1.37);"
                " enable it in the kubelet profile or use plain request/limit"
            )
        if self.throttling_factor is None:
            return (
                "memoryThrottlingFactor is unset (Kubernetes 1.37 default);"
                " set it in the kubelet profile or use plain request/limit"
            )
        return None

    def no_protection_reason(self) -> str | None:
        """Why this kubelet writes no memory.min/low, naming the setting; None when it does."""
        if not self.memory_qos:
            return (
                "the MemoryQoS feature gate is off (the default before Kubernetes 1.37);"
                " enable it in the kubelet profile or use plain request/limit"
            )
        if self.has_reservation_policy and self.reservation_policy != "TieredReservation":
            return (
                "memoryReservationPolicy is None (the default since Kubernetes 1.36);"
                " set TieredReservation in the kubelet profile or use plain request/limit"
            )
        return None


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


# --------------------------------------------------------------------------- the kubelet model


@dataclass(frozen=True)
class CgroupValues:
    """cgroup v2 memory files of one cgroup, in bytes. None: not written (memory.max: "max")."""

    memory_min: int | None = None
    memory_low: int | None = None
    memory_high: int | None = None
    memory_max: int | None = None


def _protection(
    *, amount: int, qos_class: QosClass, profile: KubeletProfile
) -> tuple[int | None, int | None]:
    """(memory.min, memory.low) for a request, by KEP-2570's rules for this kubelet."""
    if not profile.memory_qos or amount <= 0:
        return None, None
    if not profile.has_reservation_policy:
        return amount, None  # 1.22-1.35: memory.min = request, whatever the QoS class
    if profile.reservation_policy != "TieredReservation":
        return None, None
    if qos_class == "Guaranteed":
        return amount, None
    if qos_class == "Burstable":
        return None, amount
    return None, None


def _memory_high(
    *, request: int, limit: int, profile: KubeletProfile, pod_level_limit: bool = False
) -> int | None:
    """memory.high as the kubelet computes it (KEP-2570), or None when it writes none.

    ``floor((request + factor × (limit − request)) / page) × page``, the node's allocatable
    memory standing in for a missing limit; skipped when request == limit and when the
    result is not above the request. Exact arithmetic: the kubelet uses float64, which can
    land one page lower only when the exact value is a page multiple to within ~1e-7 bytes.
    """
    factor = profile.factor
    if not profile.memory_qos or factor is None:
        return None
    # The kubelet compares the quantities as read, unset = 0. Up to 1.36 request == limit
    # skips, 0 == 0 included; 1.37 throttles 0 == 0 against allocatable, but not a container
    # without a limit in a pod with a pod-level memory limit (the pod cgroup's memory.high
    # covers it): kuberuntime_container_linux.go, v1.36.0 line 173, v1.37.2 lines 222-226.
    if profile.throttles_unrequested:
        if (request == limit and request > 0) or (not limit and pod_level_limit):
            return None
    elif request == limit:
        return None
    ceiling = limit or _amount(profile.node_allocatable)
    if ceiling <= 0:
        return None
    exact = request + factor * (ceiling - request)
    high = math.floor(exact / profile.page_size) * profile.page_size
    return high if high > request else None


def expected_cgroup(
    *,
    request: int | None,
    limit: int | None,
    qos_class: QosClass,
    profile: KubeletProfile,
    pod_level_limit: bool = False,
) -> CgroupValues:
    """The memory files the kubelet writes for one container (KEP-2570, DESIGN.md §6).

    ``qos_class`` is the pod's class: with ``TieredReservation`` it chooses memory.min
    (Guaranteed) or memory.low (Burstable). An unset request takes the limit, as the API
    defaults it. memory.max is the limit whatever the profile. ``pod_level_limit``: the
    pod sets ``spec.resources.limits.memory`` (1.37 then throttles at the pod cgroup).
    """
    req = _amount(request) or _amount(limit)
    lim = _amount(limit)
    if lim and req > lim:
        raise ValueError(f"request {req} is above limit {lim}")
    memory_min, memory_low = _protection(amount=req, qos_class=qos_class, profile=profile)
    return CgroupValues(
        memory_min=memory_min,
        memory_low=memory_low,
        memory_high=_memory_high(
            request=req, limit=lim, profile=profile, pod_level_limit=pod_level_limit
        ),
        memory_max=lim or None,
    )


def expected_pod_cgroup(pod: PodShape, profile: KubeletProfile) -> CgroupValues:
    """The memory files the kubelet writes for the pod cgroup.

    memory.min/low follow the container rules applied to the pod's request: the pod-level
    request when set, else the total of regular containers, sidecars and the init container
    peak; plus overhead. memory.max is the pod-level limit, else the containers' total when
    every container declares one, plus overhead (``ResourceConfigForPod``, cm/helpers_linux.go).
    memory.high only for pods with pod-level resources on 1.37 (``ApplyPodLevelMemoryHigh``,
    v1.37.2 line 45): skipped when request == limit != 0 or without a limit.
    """
    qos = qos_class(pod)
    overhead = _amount(pod.overhead_memory)
    requests, _ = _pod_total(pod, lambda c: c.memory_request_effective)
    limits, limits_declared = _pod_total(pod, lambda c: _amount(c.memory_limit))
    pod_level = _pod_level_requirements(pod)
    if pod_level is not None:
        requests = pod_level[0].get("memory", requests)
        if "memory" in pod_level[1]:
            limits = pod_level[1]["memory"]
            limits_declared = limits_declared or limits > 0
    requests += overhead
    limits += overhead if limits else 0
    memory_min, memory_low = _protection(amount=requests, qos_class=qos, profile=profile)
    memory_high = None
    if pod_level is not None and limits_declared and profile.has_pod_level_memory_high:
        factor = profile.factor
        assert factor is not None  # has_pod_level_memory_high implies throttles
        if limits and requests != limits:
            exact = requests + factor * (limits - requests)
            high = math.floor(exact / profile.page_size) * profile.page_size
            memory_high = high if high > requests else None
    return CgroupValues(
        memory_min=memory_min,
        memory_low=memory_low,
        memory_high=memory_high,
        memory_max=limits if limits_declared and limits else None,
    )


# --------------------------------------------------------------------------- policy rules


@dataclass(frozen=True)
class MemoryRule:
    """A policy's memory section: plain ``request``/``limit``, or cgroup intent.

    Intent: ``protect`` (memory.min or memory.low), ``high`` (memory.high), ``max``
    (memory.max); any two solve the third. All fields empty: leave memory untouched.
    """

    request: int | None = None
    limit: int | None = None
    protect: int | None = None
    high: int | None = None
    max: int | None = None

    def __post_init__(self) -> None:
        values = {
            "request": self.request,
            "limit": self.limit,
            "protect": self.protect,
            "high": self.high,
            "max": self.max,
        }
        for name, value in values.items():
            if value is not None and value <= 0:
                raise ValueError(f"memory.{name}: must be positive, got {value}")
        if self.is_plain and self.is_intent:
            raise ValueError("memory: give either request/limit or protect/high/max, not both")

    @property
    def is_plain(self) -> bool:
        return self.request is not None or self.limit is not None

    @property
    def is_intent(self) -> bool:
        return self.protect is not None or self.high is not None or self.max is not None

    @property
    def is_empty(self) -> bool:
        return not self.is_plain and not self.is_intent


@dataclass(frozen=True)
class ResolvedMemory:
    """A memory rule turned into a container's request and limit (None: unset).

    ``infeasible`` is a reason naming the field when no request/limit can give what the
    rule asks of this kubelet; request and limit are then None.
    """

    request: int | None
    limit: int | None
    infeasible: str | None = None
    notes: tuple[str, ...] = ()


def _refuse(reason: str) -> ResolvedMemory:
    return ResolvedMemory(request=None, limit=None, infeasible=reason)


def resolve_rule(rule: MemoryRule, profile: KubeletProfile) -> ResolvedMemory:
    """Turn a memory rule into request and limit for this kubelet (KEP-2570).

    Guarantee when ``high`` is given and the result is feasible: the kubelet's memory.high
    (:func:`expected_cgroup`) is ``floor(high / page) × page`` — never above the asked
    high, below it by less than one page. Of the limits (protect+high) or requests
    (high+max) that give it, the roundest is chosen; protect+high+max is accepted only when
    the three already agree that way. An empty rule resolves to (None, None): keep the pod's.
    """
    if rule.is_empty:
        return ResolvedMemory(request=None, limit=None)
    if rule.is_plain:
        return _resolve_plain(rule)
    return _resolve_intent(rule, profile)


def _resolve_plain(rule: MemoryRule) -> ResolvedMemory:
    if rule.request is not None and rule.limit is not None and rule.request > rule.limit:
        return _refuse(
            f"memory.request: request {readable_bytes(rule.request)} is above"
            f" limit {readable_bytes(rule.limit)}"
        )
    if rule.request is None:
        return ResolvedMemory(
            request=rule.limit,
            limit=rule.limit,
            notes=("memory.request: unset, so it takes the limit (as the API defaults it)",),
        )
    return ResolvedMemory(request=rule.request, limit=rule.limit)


def _resolve_intent(rule: MemoryRule, profile: KubeletProfile) -> ResolvedMemory:
    protect, high, max_ = rule.protect, rule.high, rule.max
    if high is not None and protect is None and max_ is None:
        return _refuse(
            "memory.high: high needs protect or max: the kubelet derives memory.high"
            " from the request and the limit"
        )
    problems = []
    why_no_protection = profile.no_protection_reason()
    if protect is not None and why_no_protection:
        problems.append(
            f"memory.protect: the kubelet writes no memory.min/memory.low: {why_no_protection}"
        )
    why_no_high = profile.no_high_reason()
    if high is not None and why_no_high:
        problems.append(f"memory.high: the kubelet writes no memory.high: {why_no_high}")
    if problems:
        return _refuse("; ".join(problems))
    if protect is not None and max_ is not None and protect > max_:
        return _refuse(
            f"memory.protect: protect {readable_bytes(protect)} is above max {readable_bytes(max_)}"
        )

    if high is None:
        if max_ is None:
            assert protect is not None
            return ResolvedMemory(
                request=protect,
                limit=None,
                notes=("memory: protect alone sets the request and no limit (memory.max: max)",),
            )
        if protect is None:
            return ResolvedMemory(
                request=max_,
                limit=max_,
                notes=(
                    "memory: max alone sets the limit; the request takes it (request == limit)",
                ),
            )
        return ResolvedMemory(request=protect, limit=max_)

    factor = profile.factor
    assert factor is not None  # no_high_reason() ruled out an unset factor
    if protect is not None and max_ is not None:
        resolved = _check_triple(protect=protect, high=high, max_=max_, profile=profile)
    elif protect is not None:
        resolved = _solve_limit(protect=protect, high=high, factor=factor, page=profile.page_size)
    else:
        assert max_ is not None
        resolved = _solve_request(high=high, max_=max_, factor=factor, page=profile.page_size)
    if resolved.infeasible is not None:
        return resolved
    return _confirm_high(resolved, high=high, profile=profile)


def _check_triple(*, protect: int, high: int, max_: int, profile: KubeletProfile) -> ResolvedMemory:
    """protect + high + max: the kubelet already decides memory.high; it must match."""
    if protect == max_:
        return _refuse(
            f"memory.high: protect == max ({readable_bytes(max_)}) makes request == limit, and the"
            " kubelet writes no memory.high when request == limit (Guaranteed-style memory)"
        )
    got = _memory_high(request=protect, limit=max_, profile=profile)
    page = profile.page_size
    if got is None or not high - page < got <= high:
        gives = "no memory.high" if got is None else f"memory.high {readable_bytes(got)}"
        return _refuse(
            f"memory.high: protect {readable_bytes(protect)} and max {readable_bytes(max_)}"
            f" give {gives}"
            f" (memoryThrottlingFactor {profile.throttling_factor:g}), but high asks"
            f" {readable_bytes(high)}; they must agree to within one page below high:"
            " give two of the three and memwarden solves the third"
        )
    return ResolvedMemory(request=protect, limit=max_)


def _roundest(low: int, high: int) -> int:
    """The value in [low, high] with the most trailing zero bits: ``2Gi``, not ``2147488198``."""
    step = 1 << high.bit_length()
    while step > 1 and high // step * step < low:
        step >>= 1
    return high // step * step


def _solve_limit(*, protect: int, high: int, factor: Fraction, page: int) -> ResolvedMemory:
    """protect + high: a limit whose memory.high is floor(high / page) × page.

    Every limit in a range of about page / factor bytes gives that memory.high; take the
    roundest, so the pod spec reads ``2Gi`` rather than a byte count.
    """
    target = high // page * page
    if target <= protect:
        return _refuse(
            f"memory.high: high {readable_bytes(high)} must be at least one page"
            f" ({page} bytes) above protect {readable_bytes(protect)}: the kubelet writes"
            " memory.high only above the request, in whole pages"
        )
    # floor((p + f·(l − p)) / page) == target / page  ⇔  target ≤ p + f·(l − p) < target + page
    lowest = math.ceil(protect + (target - protect) / factor)
    highest = math.ceil(protect + (target + page - protect) / factor) - 1
    return ResolvedMemory(request=protect, limit=_roundest(lowest, highest))


def _solve_request(*, high: int, max_: int, factor: Fraction, page: int) -> ResolvedMemory:
    """high + max: a request whose memory.high is floor(high / page) × page (the roundest)."""
    if factor == 1:
        return _refuse(
            "memory.high: with memoryThrottlingFactor 1 memory.high is max rounded down to"
            " a page whatever the request, so high cannot choose it; give protect and max"
        )
    if high >= max_:
        return _refuse(
            f"memory.high: high {readable_bytes(high)} must be below max {readable_bytes(max_)}:"
            " the kubelet puts memory.high between the request and the limit"
        )
    target = high // page * page
    # floor((r + f·(m − r)) / page) == target / page  ⇔  target ≤ r + f·(m − r) < target + page;
    # and memory.high is written only above the request: r < target.
    lowest = max(1, math.ceil((target - factor * max_) / (1 - factor)))
    highest = min(math.ceil((target + page - factor * max_) / (1 - factor)) - 1, target - 1)
    if highest <= 0 and target == 0:
        return _refuse(
            f"memory.high: high {readable_bytes(high)} is below one page ({page} bytes):"
            " the kubelet writes memory.high in whole pages above the request"
        )
    if highest <= 0:
        return _refuse(
            f"memory.high: high must be ≥ factor × max = {readable_bytes(math.ceil(factor * max_))}"
            f" (memoryThrottlingFactor {float(factor):g}, max {readable_bytes(max_)}), got"
            f" {readable_bytes(high)}: any positive request gives a higher memory.high"
        )
    if lowest > highest:
        return _refuse(_too_close(high=high, max_=max_))
    return ResolvedMemory(request=_roundest(lowest, highest), limit=max_)


def _too_close(*, high: int, max_: int) -> str:
    return (
        f"memory.high: no request below max {readable_bytes(max_)} gives a memory.high within one"
        f" page below {readable_bytes(high)}: high is too close to max"
    )


def _confirm_high(
    resolved: ResolvedMemory, *, high: int, profile: KubeletProfile
) -> ResolvedMemory:
    """Check a solved intent with the kubelet model itself, and note the achieved high."""
    assert resolved.request is not None
    assert resolved.limit is not None
    got = _memory_high(request=resolved.request, limit=resolved.limit, profile=profile)
    page = profile.page_size
    if got is None or not high - page < got <= high:
        return _refuse(_too_close(high=high, max_=resolved.limit))
    notes = resolved.notes
    if got != high:
        notes += (
            f"memory.high: {readable_bytes(got)}, {high - got} bytes below the asked"
            f" {readable_bytes(high)}:"
            f" the kubelet rounds memory.high down to whole pages of {page} bytes",
        )
    return replace(resolved, notes=notes)


@dataclass(frozen=True)
class GoRuntimeRule:
    """A policy's Go runtime section: GOMEMLIMIT (percent or bytes) and GOGC."""

    memory_limit_percent: float | None = None
    """Percent of memory.high when the kubelet writes it, else of memory.max."""
    memory_limit_bytes: int | None = None
    gogc: str | None = None
    """``off`` or a non-negative integer, passed through unchanged."""

    def __post_init__(self) -> None:
        percent = self.memory_limit_percent
        if percent is not None and self.memory_limit_bytes is not None:
            raise ValueError("runtime.go.memoryLimit: a percentage or a quantity, not both")
        if percent is not None and (isinstance(percent, bool) or not 0 < percent <= 100):
            raise ValueError(f"runtime.go.memoryLimit: percent must be in (0, 100], got {percent}")
        if self.memory_limit_bytes is not None and self.memory_limit_bytes <= 0:
            raise ValueError(
                f"runtime.go.memoryLimit: must be positive, got {self.memory_limit_bytes}"
            )
        if self.gogc is not None and self.gogc != "off" and not self.gogc.isdigit():
            raise ValueError(f'runtime.go.gogc: "off" or a non-negative integer, got {self.gogc!r}')


@dataclass(frozen=True)
class _GoSettings:
    gomemlimit: int | None
    infeasible: str | None
    notes: tuple[str, ...]


def _go_settings(
    *, runtime: GoRuntimeRule, cgroup: CgroupValues, high_from_node: bool
) -> _GoSettings:
    """GOMEMLIMIT for one container's cgroup values, with the notes that explain it."""
    notes: list[str] = []
    value: int | None = None
    field = "runtime.go.memoryLimit"
    memory_max, memory_high = cgroup.memory_max, cgroup.memory_high
    if runtime.memory_limit_bytes is not None:
        value = runtime.memory_limit_bytes
        if memory_max is not None and value > memory_max:
            return _GoSettings(
                gomemlimit=None,
                infeasible=(
                    f"{field}: GOMEMLIMIT {format_go_bytes(value)} is above memory.max"
                    f" {readable_bytes(memory_max)}: the OOM killer would act before the Go GC"
                ),
                notes=(),
            )
        if memory_high is not None and value > memory_high:
            notes.append(
                f"{field}: GOMEMLIMIT {format_go_bytes(value)} is above memory.high"
                f" {readable_bytes(memory_high)}: the kernel throttles before the Go GC reacts"
            )
    elif runtime.memory_limit_percent is not None:
        percent = runtime.memory_limit_percent
        base, base_name = (
            (memory_high, "memory.high") if memory_high is not None else (memory_max, "memory.max")
        )
        if base is None:
            notes.append(
                f"{field}: GOMEMLIMIT not set: no memory.high and no memory.max to take"
                f" {percent:g}% of"
            )
        else:
            value = math.floor(base * Fraction(str(percent)) / 100)
            if value >= GOMEMLIMIT_MIB_FLOOR_FROM:
                value = value // MIB * MIB
            if value <= 0:
                return _GoSettings(
                    gomemlimit=None,
                    infeasible=(
                        f"{field}: {percent:g}% of {base_name} {readable_bytes(base)} is 0 bytes"
                    ),
                    notes=(),
                )
            notes.append(
                f"{field}: GOMEMLIMIT {format_go_bytes(value)} = {percent:g}% of"
                f" {base_name} {readable_bytes(base)}"
            )
            if base_name == "memory.high" and high_from_node:
                notes.append(
                    f"{field}: memory.high comes from the node's allocatable memory (no limit),"
                    " so GOMEMLIMIT is right only on nodes of that size"
                )
    if value is not None and memory_max is not None:
        wanted = max(math.ceil(memory_max * HEADROOM_FRACTION), HEADROOM_MIN)
        if memory_max - value < wanted:
            notes.append(
                f"{field}: GOMEMLIMIT {format_go_bytes(value)} leaves"
                f" {readable_bytes(memory_max - value)} below memory.max"
                f" {readable_bytes(memory_max)}, less than"
                f" {readable_bytes(wanted)} (5% or 32Mi): little room for memory Go does not count"
                " (cgo, page cache), and near the limit the GC runs nonstop (capped at ~50%"
                " CPU): a slow death spiral instead of an OOM kill"
            )
    if runtime.gogc == "off" and value is None:
        notes.append(
            "runtime.go.gogc: GOGC=off without GOMEMLIMIT: the heap grows until the OOM killer"
        )
    return _GoSettings(gomemlimit=value, infeasible=None, notes=tuple(notes))


# --------------------------------------------------------------------------- the pod


@dataclass(frozen=True)
class ContainerSizing:
    """What a governed container gets: resources, the kubelet's cgroup files, Go env."""

    name: str
    memory_request: int | None
    """After API defaulting (an unset request takes the limit)."""
    memory_limit: int | None
    cgroup: CgroupValues
    gomemlimit: int | None = None
    gomemlimit_env: str | None = None
    """GOMEMLIMIT as the Go runtime reads it (``1843MiB``)."""
    gogc: str | None = None
    java_tool_options: tuple[str, ...] | None = None
    """The flags memwarden merges into JAVA_TOOL_OPTIONS (``runtime_sizing``)."""
    node_options: tuple[str, ...] | None = None
    """The flags memwarden merges into NODE_OPTIONS (``runtime_sizing``)."""
    jvm_max_heap: int | None = None
    """The JVM's maximum heap those flags give (before the JVM's alignment)."""
    node_max_old_space: int | None = None
    """V8's old space those flags give."""
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class PodSizing:
    """The decision for one pod; ``infeasible`` says why nothing should be applied.

    When infeasible, ``containers`` is empty and the rest describes the pod as it is.
    """

    qos_class: QosClass
    containers: tuple[ContainerSizing, ...]
    pod_cgroup: CgroupValues
    infeasible: str | None = None
    notes: tuple[str, ...] = ()


def size_pod(
    *,
    pod: PodShape,
    governed: Collection[str],
    rule: MemoryRule,
    runtime: GoRuntimeRule | None,
    profile: KubeletProfile,
    required_qos: QosClass | None = None,
) -> PodSizing:
    """Apply a policy's memory and Go runtime rules to the governed containers of a pod.

    ``governed`` names regular containers or sidecars. ``required_qos``: the QoS class the
    result must keep (in-place resize can never change it). Containers come back in pod
    order (regular containers, then sidecars).
    """
    if isinstance(governed, str):
        raise TypeError("governed: a collection of container names, not one string")
    notes: list[str] = []
    by_name = {c.name: c for c in pod.long_running}
    plain_init = {c.name for c in pod.init_containers if not c.sidecar}
    for name in sorted(set(governed) - set(by_name)):
        kind = "is an init container" if name in plain_init else "is not in the pod"
        notes.append(f"containers: {name} {kind}; not governed")
    names = {name for name in governed if name in by_name}

    before = qos_class(pod)

    def refused(reason: str) -> PodSizing:
        return PodSizing(
            qos_class=before,
            containers=(),
            pod_cgroup=expected_pod_cgroup(pod, profile),
            infeasible=reason,
            notes=tuple(notes),
        )

    resolved = resolve_rule(rule, profile)
    notes.extend(resolved.notes)
    if resolved.infeasible is not None:
        return refused(resolved.infeasible)
    sized = pod if rule.is_empty else _with_memory(pod, names=names, resolved=resolved)
    after = qos_class(sized)
    if required_qos is not None and after != required_qos:
        return refused(_qos_reason(rule=rule, required=required_qos, result=after))
    if after != before:
        notes.append(f"qos: the pod's QoS class changes from {before} to {after}")
    if rule.protect is not None and profile.has_reservation_policy:
        kind = (
            "memory.min (hard protection)"
            if after == "Guaranteed"
            else "memory.low (soft: the kernel may still reclaim it to avoid a node OOM),"
            " not memory.min"
        )
        notes.append(f"memory.protect: the pod is {after}, so protect is written as {kind}")

    containers = []
    for container in sized.long_running:
        if container.name not in names:
            continue
        result = _size_container(
            container,
            qos=after,
            runtime=runtime,
            profile=profile,
            pod_level_limit=sized.pod_memory_limit > 0,
        )
        if isinstance(result, str):
            return refused(f"{result} (container {container.name})")
        containers.append(result)
    return PodSizing(
        qos_class=after,
        containers=tuple(containers),
        pod_cgroup=expected_pod_cgroup(sized, profile),
        notes=tuple(notes),
    )


def _with_memory(pod: PodShape, *, names: Collection[str], resolved: ResolvedMemory) -> PodShape:
    def apply(c: ContainerResources) -> ContainerResources:
        if c.name not in names:
            return c
        return replace(c, memory_request=resolved.request, memory_limit=resolved.limit)

    return replace(
        pod,
        containers=tuple(apply(c) for c in pod.containers),
        init_containers=tuple(apply(c) for c in pod.init_containers),
    )


def _qos_reason(*, rule: MemoryRule, required: QosClass, result: QosClass) -> str:
    cannot = f"this pod is {required} and its QoS class cannot change (in-place resize)"
    if required == "Guaranteed" and rule.high is not None:
        return (
            f"memory.high: a memory.high needs request < limit, which makes the pod"
            f" {result}; {cannot}"
        )
    if required == "Guaranteed":
        return (
            f"memory: the policy leaves request < limit (or no limit), which makes the pod"
            f" {result}; {cannot}"
        )
    if result == "Guaranteed":
        return f"memory: request == limit makes the pod Guaranteed; {cannot}"
    return f"memory: the policy makes the pod {result}; {cannot}"


def _size_container(
    container: ContainerResources,
    *,
    qos: QosClass,
    runtime: GoRuntimeRule | None,
    profile: KubeletProfile,
    pod_level_limit: bool = False,
) -> ContainerSizing | str:
    """One governed container's sizing, or the reason it is infeasible."""
    request = container.memory_request_effective
    limit = _amount(container.memory_limit)
    cgroup = expected_cgroup(
        request=request,
        limit=limit,
        qos_class=qos,
        profile=profile,
        pod_level_limit=pod_level_limit,
    )
    notes: list[str] = []
    under_pod_high = profile.has_pod_level_memory_high and pod_level_limit and not limit
    uses_node = (
        profile.throttles
        and not limit
        and (request > 0 or profile.throttles_unrequested)
        and not under_pod_high
    )
    if under_pod_high:
        notes.append(
            "memory.high: not written on the container: it has no limit and the pod sets a"
            " pod-level memory limit, so the kubelet throttles at the pod cgroup's memory.high"
        )
    if uses_node and profile.node_allocatable is None:
        notes.append(
            "memory.high: not predicted: with no limit the kubelet uses the node's allocatable"
            " memory; set nodeAllocatable in the kubelet profile to predict it"
        )
    elif uses_node and cgroup.memory_high is not None:
        notes.append(
            "memory.high: from node allocatable"
            f" {readable_bytes(_amount(profile.node_allocatable))}"
            " (no limit); it differs per node"
        )
    if profile.throttles and limit and request == limit:
        notes.append("memory.high: not written: request == limit")

    gomemlimit = None
    gogc = None
    if runtime is not None:
        go = _go_settings(runtime=runtime, cgroup=cgroup, high_from_node=uses_node)
        if go.infeasible is not None:
            return go.infeasible
        gomemlimit = go.gomemlimit
        gogc = runtime.gogc
        notes.extend(go.notes)
    return ContainerSizing(
        name=container.name,
        memory_request=request or None,
        memory_limit=limit or None,
        cgroup=cgroup,
        gomemlimit=gomemlimit,
        gomemlimit_env=None if gomemlimit is None else format_go_bytes(gomemlimit),
        gogc=gogc,
        notes=tuple(notes),
    )
