"""The kubelet model: a pod's resources -> the cgroup v2 memory files it writes (KEP-2570)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from memwarden.sizing.constants import QosClass, _amount
from memwarden.sizing.profile import KubeletProfile
from memwarden.sizing.shape import PodShape, _pod_level_requirements, _pod_total, qos_class

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
