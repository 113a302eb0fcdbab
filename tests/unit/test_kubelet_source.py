"""The kubelet model, row by row against the kubelet's own source for each minor.

Every row cites the line that decides it, in the Go module sources (``go mod download
k8s.io/kubernetes@v1.35.4`` / ``@v1.36.0`` / ``@v1.37.2``):

- ``C`` = pkg/kubelet/kuberuntime/kuberuntime_container_linux.go (container cgroup)
- ``H`` = pkg/kubelet/cm/helpers_linux.go (``ResourceConfigForPod``; 1.37
  ``ApplyPodLevelMemoryHigh``, called from pod_container_manager_linux.go line 103)
- ``D`` = pkg/apis/core/v1/defaults.go (``defaultPodRequests``), ``Q`` =
  pkg/apis/core/v1/helper/qos/qos.go (``ComputePodQOS``)

1.36.1 and 1.36.3 have the same three kubelet files as 1.36.0.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwarden.sizing import (
    CgroupValues,
    ContainerResources,
    KubeletProfile,
    PodShape,
    QosClass,
    expected_cgroup,
    expected_pod_cgroup,
    qos_class,
)

pytestmark = pytest.mark.unit

GI = 2**30
MI = 2**20
ALLOCATABLE = 8 * GI
HIGH_1G_2G = 2040107008  # floor((1Gi + 0.9 × 1Gi) / 4096) × 4096
HIGH_0_ALLOC = 7730937856  # floor((0 + 0.9 × 8Gi) / 4096) × 4096
HIGH_1G_ALLOC = 7838314496  # floor((1Gi + 0.9 × 7Gi) / 4096) × 4096
HIGH_2G_4G = 4080218112  # floor((2Gi + 0.9 × 2Gi) / 4096) × 4096

V135 = KubeletProfile.defaults_for(35, memory_qos=True, node_allocatable=ALLOCATABLE)
V136 = KubeletProfile.defaults_for(36, memory_qos=True, node_allocatable=ALLOCATABLE)
V136_TIERED = replace(V136, reservation_policy="TieredReservation")
V137 = KubeletProfile.defaults_for(37, throttling_factor=0.9, node_allocatable=ALLOCATABLE)
V137_TIERED = replace(V137, reservation_policy="TieredReservation")


@pytest.mark.parametrize(
    ("profile", "req", "lim", "qos", "pod_level_limit", "expected"),
    [
        pytest.param(
            V135, GI, 2 * GI, "Burstable", False,
            CgroupValues(memory_min=GI, memory_high=HIGH_1G_2G, memory_max=2 * GI),
            id="1.35.4 C:158 memory.min = request; C:164 request != limit -> high",
        ),
        pytest.param(
            V135, GI, GI, "Guaranteed", False,
            CgroupValues(memory_min=GI, memory_max=GI),
            id="1.35.4 C:164 request == limit -> no high",
        ),
        pytest.param(
            V135, None, None, "BestEffort", False, CgroupValues(),
            id="1.35.4 C:164 0 == 0 -> no high",
        ),
        pytest.param(
            V136, None, None, "BestEffort", False, CgroupValues(),
            id="1.36.0 C:173 BestEffort 0 == 0 -> no high",
        ),
        pytest.param(
            V136_TIERED, None, None, "BestEffort", False, CgroupValues(),
            id="1.36.0 C:173 BestEffort under TieredReservation -> no high",
        ),
        pytest.param(
            V136, GI, None, "Burstable", False, CgroupValues(memory_high=HIGH_1G_ALLOC),
            id="1.36.0 C:167 policy None -> no min; C:185 no limit -> allocatable",
        ),
        pytest.param(
            V136, GI, None, "Burstable", True, CgroupValues(memory_high=HIGH_1G_ALLOC),
            id="1.36.0 C:173 a pod-level limit does not skip the container's high",
        ),
        pytest.param(
            V136_TIERED, GI, 2 * GI, "Burstable", False,
            CgroupValues(memory_low=GI, memory_high=HIGH_1G_2G, memory_max=2 * GI),
            id="1.36.0 C:158-164 TieredReservation Burstable -> memory.low",
        ),
        pytest.param(
            V136_TIERED, GI, GI, "Guaranteed", False,
            CgroupValues(memory_min=GI, memory_max=GI),
            id="1.36.0 C:161 TieredReservation Guaranteed -> memory.min; C:173 no high",
        ),
        pytest.param(
            V137, None, None, "BestEffort", False, CgroupValues(memory_high=HIGH_0_ALLOC),
            id="1.37.2 C:226 request == 0 -> high; C:248 against allocatable",
        ),
        pytest.param(
            replace(V137, node_allocatable=None), None, None, "BestEffort", False, CgroupValues(),
            id="1.37.2 C:248 allocatable unknown -> not predicted",
        ),
        pytest.param(
            V137_TIERED, GI, GI, "Guaranteed", False,
            CgroupValues(memory_min=GI, memory_max=GI),
            id="1.37.2 C:210 Guaranteed -> memory.min; C:226 request == limit != 0 -> no high",
        ),
        pytest.param(
            V137_TIERED, GI, None, "Burstable", True, CgroupValues(memory_low=GI),
            id="1.37.2 C:222 no limit + pod-level memory limit -> container high skipped",
        ),
        pytest.param(
            V137, GI, 2 * GI, "Burstable", True,
            CgroupValues(memory_high=HIGH_1G_2G, memory_max=2 * GI),
            id="1.37.2 C:222 a container with a limit keeps its high under a pod-level limit",
        ),
        pytest.param(
            replace(V137, throttling_factor=None), GI, 2 * GI, "Burstable", False,
            CgroupValues(memory_max=2 * GI),
            id="1.37.2 C:226 memoryThrottlingFactor nil -> no high",
        ),
    ],
)  # fmt: skip
def test_container_cgroup_matches_the_kubelet(
    profile: KubeletProfile,
    req: int | None,
    lim: int | None,
    qos: QosClass,
    pod_level_limit: bool,
    expected: CgroupValues,
) -> None:
    got = expected_cgroup(
        request=req,
        limit=lim,
        qos_class=qos,
        profile=profile,
        pod_level_limit=pod_level_limit,
    )
    assert got == expected


def app(
    request: int | None = None, limit: int | None = None, name: str = "app"
) -> ContainerResources:
    return ContainerResources(name=name, memory_request=request, memory_limit=limit)


def pod_level(
    *containers: ContainerResources,
    cpu: int | None = None,
    cpu_limit: int | None = None,
    request: int | None = None,
    limit: int | None = None,
    overhead: int | None = None,
) -> PodShape:
    resources = ContainerResources(
        name="(pod)",
        cpu_request_m=cpu,
        cpu_limit_m=cpu_limit,
        memory_request=request,
        memory_limit=limit,
    )
    return PodShape(containers=containers, pod_resources=resources, overhead_memory=overhead)


@pytest.mark.parametrize(
    ("profile", "shape", "qos", "expected"),
    [
        pytest.param(
            V135, PodShape(containers=(app(GI, 2 * GI), app(MI * 512, GI, name="b"))), "Burstable",
            CgroupValues(memory_min=GI + 512 * MI, memory_max=3 * GI),
            id="1.35.4 H:201 limits declared -> max; H:215 memory.min = total request",
        ),
        pytest.param(
            V137_TIERED, PodShape(containers=(app(),)), "BestEffort", CgroupValues(),
            id="1.37.2 H:273 BestEffort pod -> nothing",
        ),
        pytest.param(
            V137_TIERED, pod_level(app(), request=2 * GI, limit=4 * GI), "Burstable",
            CgroupValues(memory_low=2 * GI, memory_high=HIGH_2G_4G, memory_max=4 * GI),
            id="1.37.2 H:214 pod-level limit declared; H:277 low; H:45/H:81 pod memory.high",
        ),
        pytest.param(
            V136_TIERED, pod_level(app(), request=2 * GI, limit=4 * GI), "Burstable",
            CgroupValues(memory_low=2 * GI, memory_max=4 * GI),
            id="1.36.0 H:157 pod-level limit -> max; no pod memory.high before 1.37",
        ),
        pytest.param(
            V137_TIERED, pod_level(app(), cpu=1000, cpu_limit=1000, limit=2 * GI), "Guaranteed",
            CgroupValues(memory_min=2 * GI, memory_max=2 * GI),
            id="1.37.2 D:527 request = pod limit; Q:43 Guaranteed; H:81 equal -> no high",
        ),
        pytest.param(
            V137_TIERED, pod_level(app(), request=GI), "Burstable",
            CgroupValues(memory_low=GI),
            id="1.37.2 H:61 no memory limit anywhere -> no pod high, no max",
        ),
        pytest.param(
            V137_TIERED, pod_level(app(512 * MI), app(512 * MI, name="b"), limit=2 * GI),
            "Burstable",
            CgroupValues(memory_low=GI, memory_high=HIGH_1G_2G, memory_max=2 * GI),
            id="1.37.2 D:527 pod request = the containers' 1Gi; H:81 high from 1Gi..2Gi",
        ),
        pytest.param(
            V137, pod_level(app(), request=GI, limit=2 * GI, overhead=128 * MI), "Burstable",
            CgroupValues(memory_high=2174324736, memory_max=2 * GI + 128 * MI),
            id="1.37.2 H:50-51 PodRequests/PodLimits add overhead before the formula",
        ),
        pytest.param(
            replace(V137, throttling_factor=None), pod_level(app(), request=GI, limit=2 * GI),
            "Burstable", CgroupValues(memory_max=2 * GI),
            id="1.37.2 pod_container_manager_linux.go:118 factor nil -> no pod high",
        ),
    ],
)  # fmt: skip
def test_pod_cgroup_matches_the_kubelet(
    profile: KubeletProfile, shape: PodShape, qos: QosClass, expected: CgroupValues
) -> None:
    assert qos_class(shape) == qos
    assert expected_pod_cgroup(shape, profile) == expected


@settings(max_examples=200, deadline=None)
@given(
    pod_request=st.one_of(st.none(), st.integers(min_value=1, max_value=64 * GI)),
    pod_extra=st.one_of(st.none(), st.integers(min_value=0, max_value=64 * GI)),
    container_limits=st.lists(
        st.one_of(st.none(), st.integers(min_value=1, max_value=8 * GI)), min_size=1, max_size=3
    ),
    factor=st.sampled_from([0.5, 0.8, 0.9, 1.0]),
)
def test_pod_level_memory_high_throttles_once_between_request_and_limit(
    pod_request: int | None,
    pod_extra: int | None,
    container_limits: list[int | None],
    factor: float,
) -> None:
    """1.37: the pod's memory.high is a page multiple in (request, limit]; containers
    without a limit under a pod-level limit get none of their own."""
    profile = replace(V137, throttling_factor=factor)
    pod_limit = None if pod_extra is None else (pod_request or 0) + pod_extra or None
    containers = tuple(app(limit=lim, name=f"c{i}") for i, lim in enumerate(container_limits))
    shape = pod_level(*containers, request=pod_request, limit=pod_limit)
    pod = expected_pod_cgroup(shape, profile)
    if pod.memory_high is not None:
        assert pod.memory_high % profile.page_size == 0
        assert pod.memory_max is not None and pod.memory_high <= pod.memory_max
        assert pod_request is None or pod.memory_high > pod_request
    for c in containers:
        got = expected_cgroup(
            request=c.memory_request_effective,
            limit=c.memory_limit,
            qos_class=qos_class(shape),
            profile=profile,
            pod_level_limit=shape.pod_memory_limit > 0,
        )
        if c.memory_limit is None and pod_limit:
            assert got.memory_high is None
