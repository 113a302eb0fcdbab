"""sizing: the kubelet MemoryQoS model, intent solving, QoS classes and GOMEMLIMIT.

Numbers are hand-computed from KEP-2570's formula; each case says how.
"""

from __future__ import annotations

import math
import re
from dataclasses import replace
from fractions import Fraction
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwarden.sizing import (
    GOMEMLIMIT_MIB_FLOOR_FROM,
    CgroupValues,
    ContainerResources,
    GoRuntimeRule,
    KubeletProfile,
    MemoryRule,
    PodShape,
    expected_cgroup,
    expected_pod_cgroup,
    qos_class,
    resolve_rule,
    size_pod,
)

pytestmark = pytest.mark.unit

KI, MI, GI = 2**10, 2**20, 2**30
PAGE = 4096

#: 1Gi request, 2Gi limit, factor 0.9: 1Gi + 0.9 × 1Gi = 2040109465.6 -> floor to 4096.
HIGH_1G_2G = 2040107008

V135 = KubeletProfile.defaults_for(35, memory_qos=True)  # gate on, factor 0.9
V136 = KubeletProfile.defaults_for(36, memory_qos=True)  # gate on, factor 0.9, policy None
V136_TIERED = replace(V136, reservation_policy="TieredReservation")
V137 = KubeletProfile.defaults_for(37)  # gate on, factor unset, policy None
V137_THROTTLE = replace(V137, throttling_factor=0.9)
V137_TIERED = replace(V137_THROTTLE, reservation_policy="TieredReservation")


def container(
    name: str = "app",
    *,
    cpu: int | None = 500,
    cpu_limit: int | None = None,
    request: int | None = None,
    limit: int | None = None,
    sidecar: bool = False,
) -> ContainerResources:
    return ContainerResources(
        name=name,
        cpu_request_m=cpu,
        cpu_limit_m=cpu_limit,
        memory_request=request,
        memory_limit=limit,
        sidecar=sidecar,
    )


def pod(*containers: ContainerResources, **kwargs: Any) -> PodShape:
    return PodShape(containers=containers, **kwargs)


def guaranteed(name: str = "app", memory: int = GI) -> ContainerResources:
    return container(name, cpu=500, cpu_limit=500, request=memory, limit=memory)


# --------------------------------------------------------------------------- kubelet profile


@pytest.mark.parametrize(
    ("minor", "gate", "factor"),
    [
        pytest.param(22, False, 0.9, id="1.22-alpha-off"),
        pytest.param(35, False, 0.9, id="1.35-alpha-off"),
        pytest.param(36, False, 0.9, id="1.36-alpha-off"),
        pytest.param(37, True, None, id="1.37-beta-on-factor-unset"),
        pytest.param(40, True, None, id="later-like-1.37"),
        pytest.param(21, False, None, id="before-memoryqos"),
    ],
)
def test_defaults_for(minor: int, gate: bool, factor: float | None) -> None:
    profile = KubeletProfile.defaults_for(minor)
    assert (profile.memory_qos, profile.throttling_factor) == (gate, factor)
    assert profile.reservation_policy == "None"
    assert profile.page_size == PAGE


def test_defaults_for_applies_overrides() -> None:
    profile = KubeletProfile.defaults_for(37, throttling_factor=0.8, node_allocatable=8 * GI)
    assert (profile.memory_qos, profile.throttling_factor, profile.node_allocatable) == (
        True,
        0.8,
        8 * GI,
    )


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"throttling_factor": 0.0}, "throttling_factor", id="factor-zero"),
        pytest.param({"throttling_factor": 1.5}, "throttling_factor", id="factor-above-one"),
        pytest.param({"throttling_factor": float("nan")}, "throttling_factor", id="factor-nan"),
        pytest.param({"page_size": 3000}, "page_size", id="page-not-power-of-two"),
        pytest.param({"page_size": 0}, "page_size", id="page-zero"),
        pytest.param({"node_allocatable": 0}, "node_allocatable", id="allocatable-zero"),
        pytest.param({"reservation_policy": "Tiered"}, "reservation_policy", id="bad-policy"),
        pytest.param({"kubernetes_minor": 21}, "1.22", id="gate-before-1.22"),
    ],
)
def test_profile_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        KubeletProfile(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"throttling_factor": 1.5}, "throttling_factor", id="factor-above-one"),
        pytest.param({"throttling_factor": float("nan")}, "throttling_factor", id="factor-nan"),
        pytest.param({"page_size": 3000}, "page_size", id="page-not-power-of-two"),
        pytest.param({"node_allocatable": 0}, "node_allocatable", id="allocatable-zero"),
        pytest.param({"kubernetes_minor": 21, "memory_qos": True}, "1.22", id="gate-before-1.22"),
    ],
)
def test_settings_refuse_what_the_profile_refuses(kwargs: dict[str, Any], message: str) -> None:
    """One set of rules: the operator's kubelet settings are checked by the profile itself,
    at start, not by bounds of their own that could drift from it."""
    from pydantic import ValidationError

    from memwarden.settings import KubeletSettings

    with pytest.raises(ValidationError, match=message):
        KubeletSettings(**kwargs)


# --------------------------------------------------------------------------- container cgroups


@pytest.mark.parametrize(
    ("profile", "req", "lim", "qos", "expected"),
    [
        pytest.param(
            KubeletProfile.defaults_for(35), GI, 2 * GI, "Burstable",
            CgroupValues(memory_max=2 * GI),
            id="1.35-default-gate-off-only-max",
        ),
        pytest.param(
            V135, GI, 2 * GI, "Burstable",
            CgroupValues(memory_min=GI, memory_high=HIGH_1G_2G, memory_max=2 * GI),
            id="1.35-gate-on-burstable-min-and-high",
        ),
        pytest.param(
            V135, GI, GI, "Guaranteed",
            CgroupValues(memory_min=GI, memory_max=GI),
            id="1.35-gate-on-guaranteed-min-no-high",
        ),
        pytest.param(
            V135, None, GI, "Guaranteed",
            CgroupValues(memory_min=GI, memory_max=GI),
            id="1.35-request-defaults-to-limit",
        ),
        pytest.param(
            # 1Gi + 0.9 × (8Gi − 1Gi) = 7838315315.2 -> 7838314496
            replace(V135, node_allocatable=8 * GI), GI, None, "Burstable",
            CgroupValues(memory_min=GI, memory_high=7838314496),
            id="1.35-no-limit-uses-allocatable",
        ),
        pytest.param(
            replace(V135, node_allocatable=8 * GI), None, None, "BestEffort",
            CgroupValues(),
            id="1.35-besteffort-request-equals-limit-zero",
        ),
        pytest.param(
            V135, GI, None, "Burstable",
            CgroupValues(memory_min=GI),
            id="1.35-no-limit-allocatable-unknown",
        ),
        pytest.param(
            # 0.9 × 1Gi... with page 65536: 2040109465.6 / 65536 = 31129.99 -> 31129 pages
            replace(V135, page_size=65536), GI, 2 * GI, "Burstable",
            CgroupValues(memory_min=GI, memory_high=2040070144, memory_max=2 * GI),
            id="1.35-64k-pages",
        ),
        pytest.param(
            # 100Mi + 0.5 × 100Mi = 150Mi, already a page multiple
            replace(V135, throttling_factor=0.5), 100 * MI, 200 * MI, "Burstable",
            CgroupValues(memory_min=100 * MI, memory_high=150 * MI, memory_max=200 * MI),
            id="1.35-factor-0.5",
        ),
        pytest.param(
            # 2Gi − 100 + 0.9 × 100 = 2Gi − 10 -> 2Gi − 4096, not above the request
            V135, 2 * GI - 100, 2 * GI, "Burstable",
            CgroupValues(memory_min=2 * GI - 100, memory_max=2 * GI),
            id="1.35-high-not-above-request",
        ),
        pytest.param(
            KubeletProfile.defaults_for(36), GI, 2 * GI, "Burstable",
            CgroupValues(memory_max=2 * GI),
            id="1.36-default-gate-off-only-max",
        ),
        pytest.param(
            V136, GI, 2 * GI, "Burstable",
            CgroupValues(memory_high=HIGH_1G_2G, memory_max=2 * GI),
            id="1.36-policy-none-no-min",
        ),
        pytest.param(
            V136_TIERED, GI, GI, "Guaranteed",
            CgroupValues(memory_min=GI, memory_max=GI),
            id="1.36-tiered-guaranteed-min",
        ),
        pytest.param(
            V136_TIERED, GI, 2 * GI, "Burstable",
            CgroupValues(memory_low=GI, memory_high=HIGH_1G_2G, memory_max=2 * GI),
            id="1.36-tiered-burstable-low-and-high",
        ),
        pytest.param(
            V136_TIERED, GI, GI, "Burstable",
            CgroupValues(memory_low=GI, memory_max=GI),
            id="1.36-tiered-equal-container-in-burstable-pod",
        ),
        pytest.param(
            # v1.36.0 kuberuntime_container_linux.go:173 `if memoryRequest != memoryLimit`: 0 == 0
            replace(V136_TIERED, node_allocatable=8 * GI), None, None, "BestEffort",
            CgroupValues(),
            id="1.36-tiered-besteffort-no-high",
        ),
        pytest.param(
            V137, GI, 2 * GI, "Burstable",
            CgroupValues(memory_max=2 * GI),
            id="1.37-default-only-max",
        ),
        pytest.param(
            V137_THROTTLE, GI, 2 * GI, "Burstable",
            CgroupValues(memory_high=HIGH_1G_2G, memory_max=2 * GI),
            id="1.37-factor-0.9",
        ),
        pytest.param(
            V137_TIERED, GI, 2 * GI, "Burstable",
            CgroupValues(memory_low=GI, memory_high=HIGH_1G_2G, memory_max=2 * GI),
            id="1.37-tiered-burstable",
        ),
        pytest.param(
            replace(V137, reservation_policy="TieredReservation"), GI, GI, "Guaranteed",
            CgroupValues(memory_min=GI, memory_max=GI),
            id="1.37-tiered-without-throttling",
        ),
        pytest.param(
            replace(V137, throttling_factor=1.0), GI, 2 * GI, "Burstable",
            CgroupValues(memory_high=2 * GI, memory_max=2 * GI),
            id="1.37-factor-1-high-at-limit",
        ),
        pytest.param(
            V137_TIERED, None, None, "BestEffort",
            CgroupValues(),
            id="1.37-besteffort-allocatable-unknown",
        ),
    ],
)  # fmt: skip
def test_expected_cgroup(
    profile: KubeletProfile,
    req: int | None,
    lim: int | None,
    qos: Any,
    expected: CgroupValues,
) -> None:
    assert expected_cgroup(request=req, limit=lim, qos_class=qos, profile=profile) == expected


def test_expected_cgroup_rejects_request_above_limit() -> None:
    with pytest.raises(ValueError, match="above limit"):
        expected_cgroup(request=2 * GI, limit=GI, qos_class="Burstable", profile=V137)


# --------------------------------------------------------------------------- QoS classes


@pytest.mark.parametrize(
    ("shape", "expected"),
    [
        pytest.param(pod(container(cpu=None)), "BestEffort", id="nothing-set"),
        pytest.param(
            pod(container(cpu=None), container("b", cpu=None)), "BestEffort", id="two-empty"
        ),
        pytest.param(pod(container(cpu=100)), "Burstable", id="cpu-request-only"),
        pytest.param(pod(container(cpu=None, request=GI)), "Burstable", id="memory-request-only"),
        pytest.param(pod(guaranteed()), "Guaranteed", id="requests-equal-limits"),
        pytest.param(
            pod(container(cpu=None, cpu_limit=500, limit=GI)),
            "Guaranteed",
            id="limits-only-requests-default",
        ),
        pytest.param(
            pod(container(cpu=500, cpu_limit=500, request=GI // 2, limit=GI)),
            "Burstable",
            id="memory-request-below-limit",
        ),
        pytest.param(
            pod(container(cpu=250, cpu_limit=500, request=GI, limit=GI)),
            "Burstable",
            id="cpu-request-below-limit",
        ),
        pytest.param(
            pod(container(cpu=None, request=GI, limit=GI)),
            "Burstable",
            id="memory-only-no-cpu-limit",
        ),
        pytest.param(
            pod(guaranteed(), container("side", cpu=None)), "Burstable", id="one-container-empty"
        ),
        pytest.param(
            pod(guaranteed(), init_containers=(container("init", cpu=None),)),
            "Burstable",
            id="init-container-without-limits",
        ),
        pytest.param(
            pod(guaranteed(), init_containers=(guaranteed("init"),)),
            "Guaranteed",
            id="guaranteed-init-container",
        ),
        pytest.param(
            pod(guaranteed(), init_containers=(ContainerResources(
                "proxy", cpu_limit_m=100, memory_limit=MI, sidecar=True),)),
            "Guaranteed",
            id="guaranteed-sidecar",
        ),
        pytest.param(
            pod(guaranteed(), overhead_memory=100 * MI), "Guaranteed", id="overhead-ignored"
        ),
    ],
)  # fmt: skip
def test_qos_class(shape: PodShape, expected: str) -> None:
    assert qos_class(shape) == expected


@pytest.mark.parametrize(
    ("build", "message"),
    [
        pytest.param(
            lambda: container(request=2 * GI, limit=GI), "memory request", id="request-above-limit"
        ),
        pytest.param(lambda: container(cpu=600, cpu_limit=500), "cpu request", id="cpu-above"),
        pytest.param(lambda: container(request=-1), "negative", id="negative"),
        pytest.param(lambda: pod(container(), container()), "duplicate", id="duplicate-names"),
        pytest.param(lambda: pod(container(sidecar=True)), "sidecar", id="sidecar-in-containers"),
    ],
)
def test_pod_shape_rejects(build: Any, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


# --------------------------------------------------------------------------- pod cgroup


def sidecar(
    name: str, *, request: int | None = None, limit: int | None = None
) -> ContainerResources:
    return container(name, cpu=None, request=request, limit=limit, sidecar=True)


@pytest.mark.parametrize(
    ("shape", "profile", "expected"),
    [
        pytest.param(
            pod(container(request=GI, limit=2 * GI), container("b", request=GI // 2)),
            V135,
            CgroupValues(memory_min=GI + GI // 2),
            id="1.35-sum-requests-no-max-when-a-limit-missing",
        ),
        pytest.param(
            pod(guaranteed(), guaranteed("b", 2 * GI), overhead_memory=100 * MI),
            V136_TIERED,
            CgroupValues(memory_min=3 * GI + 100 * MI, memory_max=3 * GI + 100 * MI),
            id="1.36-tiered-guaranteed-min-with-overhead",
        ),
        pytest.param(
            pod(container(request=GI, limit=2 * GI), overhead_memory=100 * MI),
            V136_TIERED,
            CgroupValues(memory_low=GI + 100 * MI, memory_max=2 * GI + 100 * MI),
            id="1.36-tiered-burstable-low",
        ),
        pytest.param(
            pod(container(cpu=None)),
            replace(V136_TIERED, node_allocatable=8 * GI),
            CgroupValues(),
            id="1.36-tiered-besteffort-nothing",
        ),
        pytest.param(
            pod(
                container(request=GI),
                init_containers=(
                    sidecar("proxy", request=100 * MI),
                    container("migrate", request=2 * GI),
                ),
            ),
            V135,
            # the init step "migrate" runs beside the proxy: 2Gi + 100Mi > 1Gi + 100Mi
            CgroupValues(memory_min=2 * GI + 100 * MI),
            id="init-container-peak-wins",
        ),
        pytest.param(
            pod(
                container(request=GI),
                init_containers=(
                    container("migrate", request=GI // 2),
                    sidecar("proxy", request=100 * MI),
                ),
            ),
            V135,
            CgroupValues(memory_min=GI + 100 * MI),
            id="sidecar-adds-to-containers",
        ),
        pytest.param(
            pod(container(request=GI, limit=GI)),
            V137,
            CgroupValues(memory_max=GI),
            id="1.37-default-only-max",
        ),
        pytest.param(
            pod(container(request=GI, limit=GI)),
            KubeletProfile.defaults_for(35),
            CgroupValues(memory_max=GI),
            id="gate-off-max-still-written",
        ),
    ],
)
def test_expected_pod_cgroup(
    shape: PodShape, profile: KubeletProfile, expected: CgroupValues
) -> None:
    assert expected_pod_cgroup(shape, profile) == expected


# --------------------------------------------------------------------------- resolving rules


@pytest.mark.parametrize(
    ("rule", "profile", "req", "lim"),
    [
        pytest.param(MemoryRule(), V137, None, None, id="empty-keeps-the-pod"),
        pytest.param(MemoryRule(request=GI, limit=2 * GI), V137, GI, 2 * GI, id="plain-both"),
        pytest.param(MemoryRule(request=GI), V137, GI, None, id="plain-request-only-no-limit"),
        pytest.param(MemoryRule(limit=GI), V137, GI, GI, id="plain-limit-only-request-takes-it"),
        pytest.param(MemoryRule(request=GI, limit=GI), V137, GI, GI, id="plain-equal"),
        pytest.param(MemoryRule(protect=GI), V137_TIERED, GI, None, id="protect-alone-no-limit"),
        pytest.param(MemoryRule(protect=GI), V135, GI, None, id="protect-alone-1.35"),
        pytest.param(MemoryRule(max=2 * GI), V137, 2 * GI, 2 * GI, id="max-alone-request-is-max"),
        pytest.param(MemoryRule(protect=GI, max=2 * GI), V137_TIERED, GI, 2 * GI, id="protect-max"),
        pytest.param(
            MemoryRule(protect=GI, max=2 * GI),
            replace(V137, reservation_policy="TieredReservation"),
            GI,
            2 * GI,
            id="protect-max-without-throttling",
        ),
        pytest.param(MemoryRule(protect=GI, max=GI), V137_TIERED, GI, GI, id="protect-equals-max"),
        pytest.param(
            # limits giving 2040107008: [2147480918, 2147485468]; 2Gi is the roundest
            MemoryRule(protect=GI, high=HIGH_1G_2G),
            V137_TIERED,
            GI,
            2 * GI,
            id="protect-high-solves-limit",
        ),
        pytest.param(
            # requests giving 2040107008 with max 2Gi: 1Gi is the roundest of the range
            MemoryRule(high=HIGH_1G_2G, max=2 * GI),
            V137_THROTTLE,
            GI,
            2 * GI,
            id="high-max-solves-request",
        ),
        pytest.param(
            MemoryRule(protect=GI, high=HIGH_1G_2G, max=2 * GI),
            V137_TIERED,
            GI,
            2 * GI,
            id="triple-agrees-exactly",
        ),
        pytest.param(
            # 2040109465 is the unrounded value: the page-rounded high is 2457 bytes below
            MemoryRule(protect=GI, high=2040109465, max=2 * GI),
            V137_TIERED,
            GI,
            2 * GI,
            id="triple-agrees-within-a-page",
        ),
        pytest.param(
            # 512Mi + 0.5 × (l − 512Mi) = 768Mi  ->  l = 1Gi
            MemoryRule(protect=512 * MI, high=768 * MI),
            replace(V137_TIERED, throttling_factor=0.5),
            512 * MI,
            GI,
            id="protect-high-factor-0.5",
        ),
        pytest.param(
            # r + 0.5 × (1Gi − r) = 768Mi  ->  r = 512Mi
            MemoryRule(high=768 * MI, max=GI),
            replace(V137, throttling_factor=0.5),
            512 * MI,
            GI,
            id="high-max-factor-0.5",
        ),
        pytest.param(
            # factor 1: memory.high = limit rounded down; the limit is just below the next page
            MemoryRule(protect=GI, high=2 * GI),
            replace(V137_TIERED, throttling_factor=1.0),
            GI,
            2 * GI,
            id="protect-high-factor-1",
        ),
        pytest.param(
            MemoryRule(protect=GI, high=HIGH_1G_2G, max=2 * GI),
            V135,
            GI,
            2 * GI,
            id="triple-1.35-gate-on",
        ),
    ],
)
def test_resolve_rule(
    rule: MemoryRule, profile: KubeletProfile, req: int | None, lim: int | None
) -> None:
    resolved = resolve_rule(rule, profile)
    assert resolved.infeasible is None
    assert (resolved.request, resolved.limit) == (req, lim)


@pytest.mark.parametrize(
    ("rule", "profile", "reason"),
    [
        pytest.param(
            MemoryRule(request=2 * GI, limit=GI), V137,
            "memory.request: request 2Gi is above limit 1Gi",
            id="plain-request-above-limit",
        ),
        pytest.param(
            MemoryRule(high=GI), V137_TIERED,
            "memory.high: high needs protect or max",
            id="high-alone",
        ),
        pytest.param(
            MemoryRule(high=HIGH_1G_2G, max=2 * GI), V137,
            "memory.high: the kubelet writes no memory.high: memoryThrottlingFactor is unset"
            " (Kubernetes 1.37 default); set it in the kubelet profile or use plain request/limit",
            id="high-factor-unset",
        ),
        pytest.param(
            MemoryRule(high=HIGH_1G_2G, max=2 * GI), KubeletProfile.defaults_for(35),
            "memory.high: the kubelet writes no memory.high: the MemoryQoS feature gate is off",
            id="high-gate-off",
        ),
        pytest.param(
            MemoryRule(protect=GI), V137,
            "memory.protect: the kubelet writes no memory.min/memory.low:"
            " memoryReservationPolicy is None",
            id="protect-policy-none-1.37",
        ),
        pytest.param(
            MemoryRule(protect=GI, max=2 * GI), V136,
            "memory.protect: the kubelet writes no memory.min/memory.low:"
            " memoryReservationPolicy is None",
            id="protect-policy-none-1.36",
        ),
        pytest.param(
            MemoryRule(protect=GI), KubeletProfile.defaults_for(35),
            "memory.protect: the kubelet writes no memory.min/memory.low:"
            " the MemoryQoS feature gate is off",
            id="protect-gate-off",
        ),
        pytest.param(
            MemoryRule(protect=GI, high=HIGH_1G_2G), V137,
            "memory.protect: the kubelet writes no memory.min/memory.low: memoryReservationPolicy"
            " is None (the default since Kubernetes 1.36); set TieredReservation in the kubelet"
            " profile or use plain request/limit; memory.high: the kubelet writes no memory.high:"
            " memoryThrottlingFactor is unset",
            id="both-settings-missing-both-reasons",
        ),
        pytest.param(
            MemoryRule(protect=2 * GI, max=GI), V137_TIERED,
            "memory.protect: protect 2Gi is above max 1Gi",
            id="protect-above-max",
        ),
        pytest.param(
            MemoryRule(protect=GI, high=GI, max=GI), V137_TIERED,
            "memory.high: protect == max (1Gi) makes request == limit, and the kubelet writes"
            " no memory.high",
            id="protect-equals-max-with-high",
        ),
        pytest.param(
            MemoryRule(protect=GI, high=int(1.5 * GI), max=2 * GI), V137_TIERED,
            "memory.high: protect 1Gi and max 2Gi give memory.high 2040107008 (~1.90Gi)"
            " (memoryThrottlingFactor 0.9), but high asks 1536Mi",
            id="triple-disagrees",
        ),
        pytest.param(
            MemoryRule(protect=2 * GI - 100, high=2 * GI - 50, max=2 * GI), V135,
            "memory.high: protect 2147483548 (~2.00Gi) and max 2Gi give no memory.high",
            id="triple-no-room-for-high",
        ),
        pytest.param(
            MemoryRule(protect=GI, high=GI + 100), V137_TIERED,
            "memory.high: high 1073741924 (~1.00Gi) must be at least one page (4096 bytes)"
            " above protect 1Gi",
            id="protect-high-within-a-page",
        ),
        pytest.param(
            MemoryRule(high=2 * GI, max=2 * GI), V137_THROTTLE,
            "memory.high: high 2Gi must be below max 2Gi",
            id="high-equals-max",
        ),
        pytest.param(
            MemoryRule(high=100 * MI, max=2 * GI), V137_THROTTLE,
            "memory.high: high must be ≥ factor × max = 1932735284 (~1.80Gi)",
            id="high-below-factor-times-max",
        ),
        pytest.param(
            MemoryRule(high=1000, max=2 * GI), V137_THROTTLE,
            "memory.high: high 1000 is below one page (4096 bytes)",
            id="high-below-a-page",
        ),
        pytest.param(
            MemoryRule(high=HIGH_1G_2G, max=2 * GI), replace(V137, throttling_factor=1.0),
            "memory.high: with memoryThrottlingFactor 1 memory.high is max rounded down",
            id="high-max-factor-1",
        ),
        pytest.param(
            # factor 0.1, max 2Gi + 5: memory.high 2Gi needs r + 0.1 × (max − r) ≥ 2Gi, so
            # r ≥ 2Gi − 0.55, but r must stay below 2Gi to be written
            MemoryRule(high=2 * GI + 4, max=2 * GI + 5), replace(V137, throttling_factor=0.1),
            "memory.high: no request below max 2147483653 (~2.00Gi) gives a memory.high"
            " within one page below",
            id="high-too-close-to-max",
        ),
    ],
)  # fmt: skip
def test_resolve_rule_infeasible(rule: MemoryRule, profile: KubeletProfile, reason: str) -> None:
    resolved = resolve_rule(rule, profile)
    assert resolved.infeasible is not None
    assert resolved.infeasible.startswith(reason), resolved.infeasible
    assert (resolved.request, resolved.limit) == (None, None)


def test_resolve_rule_notes_the_achieved_high() -> None:
    # 1.8Gi = 1932735283.2 -> 1932735284 bytes; pages: 1932734464, 820 bytes below
    resolved = resolve_rule(MemoryRule(protect=GI, high=1932735284), V137_TIERED)
    assert resolved.infeasible is None
    assert any("820 bytes below the asked" in note for note in resolved.notes), resolved.notes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"request": GI, "protect": GI}, "either request/limit", id="mixed"),
        pytest.param({"limit": 0}, "memory.limit: must be positive", id="zero-limit"),
        pytest.param({"high": -1}, "memory.high: must be positive", id="negative-high"),
    ],
)
def test_memory_rule_rejects(kwargs: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        MemoryRule(**kwargs)


# --------------------------------------------------------------------------- size_pod


def test_size_pod_burstable_intent_end_to_end() -> None:
    shape = pod(guaranteed(), container("sidecar-log", cpu=None))
    sizing = size_pod(
        pod=shape,
        governed=["app"],
        rule=MemoryRule(protect=GI, high=HIGH_1G_2G),
        runtime=GoRuntimeRule(memory_limit_percent=90, gogc="100"),
        profile=V137_TIERED,
    )
    assert sizing.infeasible is None
    assert sizing.qos_class == "Burstable"
    [app] = sizing.containers
    assert (app.name, app.memory_request, app.memory_limit) == ("app", GI, 2 * GI)
    assert app.cgroup == CgroupValues(memory_low=GI, memory_high=HIGH_1G_2G, memory_max=2 * GI)
    # 0.9 × 2040107008 = 1836096307.2 -> floored to whole MiB: 1751MiB
    assert (app.gomemlimit, app.gomemlimit_env, app.gogc) == (1751 * MI, "1751MiB", "100")
    assert sizing.pod_cgroup == CgroupValues(memory_low=GI)
    assert any("protect is written as memory.low" in note for note in sizing.notes)
    assert not any("QoS class changes" in note for note in sizing.notes)


def test_size_pod_guaranteed_gets_memory_min() -> None:
    sizing = size_pod(
        pod=pod(guaranteed(memory=GI // 2)),
        governed=["app"],
        rule=MemoryRule(protect=GI, max=GI),
        runtime=None,
        profile=V137_TIERED,
    )
    assert sizing.qos_class == "Guaranteed"
    assert sizing.containers[0].cgroup == CgroupValues(memory_min=GI, memory_max=GI)
    assert sizing.pod_cgroup == CgroupValues(memory_min=GI, memory_max=GI)
    assert any("memory.min (hard protection)" in note for note in sizing.notes)


def test_size_pod_notes_qos_change() -> None:
    sizing = size_pod(
        pod=pod(guaranteed()),
        governed=["app"],
        rule=MemoryRule(request=GI, limit=2 * GI),
        runtime=None,
        profile=V137,
    )
    assert sizing.qos_class == "Burstable"
    assert "qos: the pod's QoS class changes from Guaranteed to Burstable" in sizing.notes


@pytest.mark.parametrize(
    ("shape", "rule", "required", "reason"),
    [
        pytest.param(
            pod(guaranteed()), MemoryRule(protect=GI, high=HIGH_1G_2G), "Guaranteed",
            "memory.high: a memory.high needs request < limit, which makes the pod Burstable;"
            " this pod is Guaranteed and its QoS class cannot change (in-place resize)",
            id="high-on-guaranteed",
        ),
        pytest.param(
            pod(guaranteed()), MemoryRule(request=GI), "Guaranteed",
            "memory: the policy leaves request < limit (or no limit), which makes the pod"
            " Burstable; this pod is Guaranteed",
            id="plain-no-limit-on-guaranteed",
        ),
        pytest.param(
            pod(container(cpu=500, cpu_limit=500, request=GI // 2, limit=GI)),
            MemoryRule(max=GI), "Burstable",
            "memory: request == limit makes the pod Guaranteed; this pod is Burstable",
            id="max-alone-on-burstable",
        ),
        pytest.param(
            pod(container(cpu=None)), MemoryRule(request=GI), "BestEffort",
            "memory: the policy makes the pod Burstable; this pod is BestEffort",
            id="besteffort-gets-a-request",
        ),
    ],
)  # fmt: skip
def test_size_pod_refuses_qos_change(
    shape: PodShape, rule: MemoryRule, required: Any, reason: str
) -> None:
    sizing = size_pod(
        pod=shape,
        governed=["app"],
        rule=rule,
        runtime=None,
        profile=V137_TIERED,
        required_qos=required,
    )
    assert sizing.infeasible is not None
    assert sizing.infeasible.startswith(reason), sizing.infeasible
    assert sizing.containers == ()
    assert sizing.qos_class == required


def test_size_pod_keeps_qos_when_it_matches() -> None:
    sizing = size_pod(
        pod=pod(guaranteed()),
        governed=["app"],
        rule=MemoryRule(protect=2 * GI, max=2 * GI),
        runtime=None,
        profile=V137_TIERED,
        required_qos="Guaranteed",
    )
    assert sizing.infeasible is None
    assert sizing.containers[0].cgroup == CgroupValues(memory_min=2 * GI, memory_max=2 * GI)


def test_size_pod_reports_infeasible_rule_and_describes_the_pod_as_is() -> None:
    sizing = size_pod(
        pod=pod(guaranteed()),
        governed=["app"],
        rule=MemoryRule(high=GI),
        runtime=None,
        profile=V137_TIERED,
    )
    assert sizing.infeasible is not None
    assert sizing.infeasible.startswith("memory.high: high needs protect or max")
    assert (sizing.qos_class, sizing.containers) == ("Guaranteed", ())
    assert sizing.pod_cgroup == CgroupValues(memory_min=GI, memory_max=GI)


def test_size_pod_governs_sidecars_and_skips_others() -> None:
    shape = pod(
        container(request=GI),
        container("other", request=GI),
        init_containers=(sidecar("proxy", request=64 * MI), container("migrate", cpu=None)),
    )
    sizing = size_pod(
        pod=shape,
        governed=["app", "proxy", "migrate", "ghost"],
        rule=MemoryRule(request=128 * MI, limit=256 * MI),
        runtime=None,
        profile=V137,
    )
    assert [c.name for c in sizing.containers] == ["app", "proxy"]
    assert [(c.memory_request, c.memory_limit) for c in sizing.containers] == [
        (128 * MI, 256 * MI),
        (128 * MI, 256 * MI),
    ]
    assert "containers: ghost is not in the pod; not governed" in sizing.notes
    assert "containers: migrate is an init container; not governed" in sizing.notes


def test_size_pod_rejects_a_single_string_as_governed() -> None:
    with pytest.raises(TypeError, match="governed"):
        size_pod(
            pod=pod(container()), governed="app", rule=MemoryRule(), runtime=None, profile=V137
        )


def test_size_pod_empty_rule_keeps_memory_and_sets_go_env() -> None:
    sizing = size_pod(
        pod=pod(container(request=GI, limit=2 * GI)),
        governed=["app"],
        rule=MemoryRule(),
        runtime=GoRuntimeRule(memory_limit_percent=90),
        profile=V137,
    )
    [app] = sizing.containers
    assert (app.memory_request, app.memory_limit) == (GI, 2 * GI)
    # no memory.high (factor unset): 90% of memory.max 2Gi = 1843.2Mi -> 1843MiB
    assert app.gomemlimit_env == "1843MiB"


def test_size_pod_notes_high_from_node_allocatable() -> None:
    profile = replace(V137_TIERED, node_allocatable=8 * GI)
    sizing = size_pod(
        pod=pod(container()),
        governed=["app"],
        rule=MemoryRule(protect=GI),
        runtime=GoRuntimeRule(memory_limit_percent=50),
        profile=profile,
    )
    [app] = sizing.containers
    assert app.cgroup == CgroupValues(memory_low=GI, memory_high=7838314496)
    # 50% of 7838314496 = 3919157248 -> 3737MiB
    assert app.gomemlimit_env == "3737MiB"
    assert any("from node allocatable 8Gi" in note for note in app.notes)
    assert any("right only on nodes of that size" in note for note in app.notes)


def test_size_pod_notes_unpredictable_high() -> None:
    sizing = size_pod(
        pod=pod(container()),
        governed=["app"],
        rule=MemoryRule(protect=GI),
        runtime=GoRuntimeRule(memory_limit_percent=90),
        profile=V137_TIERED,
    )
    [app] = sizing.containers
    assert app.gomemlimit is None
    assert any("memory.high: not predicted" in note for note in app.notes)
    assert any("GOMEMLIMIT not set" in note for note in app.notes)


# --------------------------------------------------------------------------- GOMEMLIMIT


def go_sizing(
    *, runtime: GoRuntimeRule, rule: MemoryRule, profile: KubeletProfile = V137_THROTTLE
) -> Any:
    sizing = size_pod(
        pod=pod(container()), governed=["app"], rule=rule, runtime=runtime, profile=profile
    )
    if sizing.infeasible is not None:
        return sizing.infeasible
    return sizing.containers[0]


@pytest.mark.parametrize(
    ("runtime", "rule", "env", "note"),
    [
        pytest.param(
            GoRuntimeRule(memory_limit_percent=90), MemoryRule(request=GI, limit=2 * GI),
            "1751MiB", "= 90% of memory.high",
            id="percent-of-high-when-throttled",
        ),
        pytest.param(
            GoRuntimeRule(memory_limit_percent=90), MemoryRule(request=GI, limit=GI),
            "921MiB", "= 90% of memory.max",  # 921.6Mi floored
            id="percent-of-max-without-high",
        ),
        pytest.param(
            # 85% of 50Mi = 44564480 bytes = 43520KiB: below 64Mi, kept exact
            GoRuntimeRule(memory_limit_percent=85), MemoryRule(request=50 * MI, limit=50 * MI),
            "43520KiB", "less than 32Mi (5% or 32Mi)",
            id="small-limit-exact-bytes-and-headroom-warning",
        ),
        pytest.param(
            # 98% of 4Gi = 4014.08Mi -> 4014MiB; headroom 82Mi < 5% of 4Gi (204.8Mi -> 214748365)
            GoRuntimeRule(memory_limit_percent=98), MemoryRule(request=4 * GI, limit=4 * GI),
            "4014MiB", "less than 214748365",
            id="tight-percent-headroom-warning",
        ),
        pytest.param(
            GoRuntimeRule(memory_limit_bytes=2000 * MI), MemoryRule(request=GI, limit=2 * GI),
            "2000MiB", "above memory.high 2040107008",
            id="absolute-above-high",
        ),
        pytest.param(
            GoRuntimeRule(memory_limit_bytes=GI), MemoryRule(request=GI),
            "1GiB", None,
            id="absolute-without-limit",
        ),
        pytest.param(
            GoRuntimeRule(memory_limit_percent=90), MemoryRule(request=GI),
            None, "GOMEMLIMIT not set: no memory.high and no memory.max",
            id="no-limit-no-high",
        ),
        pytest.param(
            GoRuntimeRule(gogc="off"), MemoryRule(request=GI, limit=2 * GI),
            None, "GOGC=off without GOMEMLIMIT",
            id="gogc-off-without-limit",
        ),
    ],
)  # fmt: skip
def test_gomemlimit(
    runtime: GoRuntimeRule, rule: MemoryRule, env: str | None, note: str | None
) -> None:
    app = go_sizing(runtime=runtime, rule=rule)
    assert app.gomemlimit_env == env
    if note is not None:
        assert any(note in n for n in app.notes), app.notes
    else:
        assert not any("GOMEMLIMIT" in n for n in app.notes), app.notes


def test_gomemlimit_above_max_is_infeasible() -> None:
    reason = go_sizing(
        runtime=GoRuntimeRule(memory_limit_bytes=3 * GI), rule=MemoryRule(request=GI, limit=2 * GI)
    )
    assert reason == (
        "runtime.go.memoryLimit: GOMEMLIMIT 3GiB is above memory.max 2Gi: the OOM killer"
        " would act before the Go GC (container app)"
    )


def test_gogc_passes_through() -> None:
    app = go_sizing(
        runtime=GoRuntimeRule(memory_limit_percent=90, gogc="50"),
        rule=MemoryRule(request=GI, limit=2 * GI),
    )
    assert app.gogc == "50"


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        pytest.param({"memory_limit_percent": 0}, "percent", id="percent-zero"),
        pytest.param({"memory_limit_percent": 101}, "percent", id="percent-above-100"),
        pytest.param({"memory_limit_bytes": 0}, "positive", id="bytes-zero"),
        pytest.param({"memory_limit_percent": 90, "memory_limit_bytes": GI}, "not both", id="both"),
        pytest.param({"gogc": "-1"}, "gogc", id="gogc-negative"),
        pytest.param({"gogc": "Off"}, "gogc", id="gogc-wrong-case"),
    ],
)
def test_go_runtime_rule_rejects(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        GoRuntimeRule(**kwargs)


# --------------------------------------------------------------------------- properties

pages = st.sampled_from([16, 4096, 16384, 65536])
factors = st.sampled_from([0.1, 0.5, 0.7, 0.75, 0.8, 0.9, 0.95, 0.99, 1.0]) | st.floats(
    min_value=0.01, max_value=1.0
)
sizes = st.integers(min_value=1, max_value=64 * GI)


def throttling(*, factor: float, page: int, minor: int = 37) -> KubeletProfile:
    return KubeletProfile.defaults_for(
        minor,
        memory_qos=True,
        throttling_factor=factor,
        reservation_policy="TieredReservation",
        page_size=page,
        node_allocatable=128 * GI,
    )


def high_of(request: int, limit: int, profile: KubeletProfile) -> int | None:
    return expected_cgroup(
        request=request, limit=limit, qos_class="Burstable", profile=profile
    ).memory_high


@settings(max_examples=300, deadline=None)
@given(
    factor=factors,
    page=pages,
    minor=st.sampled_from([35, 37]),
    request=st.integers(min_value=0, max_value=64 * GI),
    extra=st.one_of(st.none(), st.integers(min_value=0, max_value=64 * GI)),
)
def test_memory_high_is_a_page_multiple_between_request_and_ceiling(
    factor: float, page: int, minor: int, request: int, extra: int | None
) -> None:
    profile = throttling(factor=factor, page=page, minor=minor)
    limit = None if extra is None else request + extra
    high = expected_cgroup(
        request=request, limit=limit, qos_class="Burstable", profile=profile
    ).memory_high
    if high is None:
        return
    ceiling = limit or profile.node_allocatable
    assert ceiling is not None
    assert high % page == 0
    assert request < high <= ceiling
    assert not limit or request < limit


@settings(max_examples=300, deadline=None)
@given(factor=factors, page=pages, protect=sizes, gap=sizes)
def test_protect_high_round_trip(factor: float, page: int, protect: int, gap: int) -> None:
    """Feasible exactly when a page boundary lies above protect; memory.high = floor(high)."""
    profile = throttling(factor=factor, page=page)
    high = protect + gap
    resolved = resolve_rule(MemoryRule(protect=protect, high=high), profile)
    target = high // page * page
    assert (resolved.infeasible is None) == (target > protect), resolved.infeasible
    if resolved.infeasible is None:
        assert resolved.request == protect
        assert resolved.limit is not None
        assert high_of(protect, resolved.limit, profile) == target
        assert high - page < target <= high


@settings(max_examples=300, deadline=None)
@given(factor=factors, page=pages, max_=sizes, high_ratio=st.floats(0.0, 1.0))
def test_high_max_round_trip(factor: float, page: int, max_: int, high_ratio: float) -> None:
    profile = throttling(factor=factor, page=page)
    high = max(1, int(max_ * high_ratio))
    resolved = resolve_rule(MemoryRule(high=high, max=max_), profile)
    if resolved.infeasible is None:
        assert resolved.limit == max_
        assert resolved.request is not None
        assert 0 < resolved.request < max_
        assert high_of(resolved.request, max_, profile) == high // page * page


@settings(max_examples=60, deadline=None)
@given(
    factor=st.sampled_from([0.1, 0.5, 0.7, 0.9, 0.95]),
    max_=st.integers(min_value=2, max_value=800),
    high_raw=st.integers(min_value=1, max_value=800),
)
def test_high_max_is_infeasible_only_when_no_request_works(
    factor: float, max_: int, high_raw: int
) -> None:
    """Brute force with 16-byte pages: below max, a refusal means no request gives it."""
    profile = throttling(factor=factor, page=16)
    high = 1 + (high_raw - 1) % (max_ - 1)  # 1 <= high < max
    resolved = resolve_rule(MemoryRule(high=high, max=max_), profile)
    target = high // 16 * 16
    works = [r for r in range(1, max_) if high_of(r, max_, profile) == target]
    assert (resolved.infeasible is None) == bool(works), (resolved, works[:3])
    if works:
        assert resolved.request in works


@settings(max_examples=40, deadline=None)
@given(
    factor=st.sampled_from([0.1, 0.5, 0.7, 0.9, 1.0]),
    protect=st.integers(min_value=1, max_value=200),
    high=st.integers(min_value=1, max_value=400),
)
def test_protect_high_picks_the_roundest_working_limit(
    factor: float, protect: int, high: int
) -> None:
    profile = throttling(factor=factor, page=16)
    resolved = resolve_rule(MemoryRule(protect=protect, high=high), profile)
    target = high // 16 * 16
    works = [
        limit
        for limit in range(protect, protect + math.ceil((high + 16) / factor) + 2)
        if high_of(protect, limit, profile) == target
    ]
    assert (resolved.infeasible is None) == bool(works)
    if works:
        assert resolved.limit in works

        def zeros(n: int) -> int:
            return (n & -n).bit_length()

        assert zeros(resolved.limit) == max(zeros(limit) for limit in works)


@settings(max_examples=300, deadline=None)
@given(factor=factors, page=pages, protect=sizes, max_extra=sizes, high_delta=sizes)
def test_triple_feasible_exactly_when_it_agrees(
    factor: float, page: int, protect: int, max_extra: int, high_delta: int
) -> None:
    profile = throttling(factor=factor, page=page)
    max_ = protect + max_extra
    computed = high_of(protect, max_, profile)
    high = (computed if computed is not None else protect + 1) + high_delta % (2 * page) - page
    if high <= 0:
        return
    resolved = resolve_rule(MemoryRule(protect=protect, high=high, max=max_), profile)
    agrees = computed is not None and high - page < computed <= high
    assert (resolved.infeasible is None) == agrees
    if agrees:
        assert (resolved.request, resolved.limit) == (protect, max_)


@settings(max_examples=300, deadline=None)
@given(
    percent=st.floats(min_value=0.5, max_value=100.0),
    limit=st.integers(min_value=MI, max_value=64 * GI),
)
def test_gomemlimit_never_exceeds_its_base(percent: float, limit: int) -> None:
    app = go_sizing(
        runtime=GoRuntimeRule(memory_limit_percent=percent),
        rule=MemoryRule(request=limit, limit=limit),
        profile=V137,
    )
    if isinstance(app, str):  # rounds to zero bytes
        assert "is 0 bytes" in app
        return
    exact = Fraction(limit) * Fraction(str(percent)) / 100
    assert app.gomemlimit <= exact
    if app.gomemlimit >= GOMEMLIMIT_MIB_FLOOR_FROM:
        assert app.gomemlimit % MI == 0
        assert exact - app.gomemlimit < MI
    else:
        assert app.gomemlimit == math.floor(exact)


# --------------------------------------------------------------------------- docs drift

DOCS = Path(__file__).resolve().parents[2] / "docs" / "sizing.md"
_ROW = re.compile(r"^\| 1\.(\d+)(?:–1\.(\d+))? \| (on|off) \S* ?\| (\S+) \| (\S+) \|$")


def test_docs_defaults_table_matches_defaults_for() -> None:
    rows = [m for line in DOCS.read_text().splitlines() if (m := _ROW.match(line))]
    assert len(rows) == 3, "the defaults table in docs/sizing.md changed shape"
    for row in rows:
        first, last, gate, factor, policy = row.groups()
        for minor in {int(first), int(last or first)}:
            profile = KubeletProfile.defaults_for(minor)
            assert profile.memory_qos == (gate == "on"), minor
            assert profile.throttling_factor == (None if factor == "unset" else float(factor))
            assert profile.has_reservation_policy == (policy != "absent"), minor
            if policy != "absent":
                assert profile.reservation_policy == policy, minor
