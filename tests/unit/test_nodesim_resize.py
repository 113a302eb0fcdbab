"""nodesim.resize and nodesim.allocation: the kubelet's in-place resize decisions (pure).

The node simulator is test infrastructure (hack/nodesim). The expected messages are the
ones k8s.io/kubernetes v1.37.2 writes (allocation/handlers.go, lifecycle/predicate.go,
kuberuntime_manager.go validateMemoryResizeAction); the integration tests send real
resizes through the API server (tests/integration/test_nodesim_kubelet_resize.py).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Any

import pytest
from nodesim.allocation import AllocationBook
from nodesim.resize import (
    Action,
    Pending,
    PodRequest,
    Resources,
    RetryCandidate,
    admit_resize,
    container_action,
    memory_decrease_error,
    pod_memory_limit,
    pod_request,
    retry_order,
)
from nodesim.status import ContainerView, PodView, ResizeCondition, Running, build_pod_status

from memwarden_testing.builders import make_container, make_pod

pytestmark = pytest.mark.unit

MiB = 1 << 20
GiB = 1 << 30
NODE = PodRequest(cpu=4000, memory=GiB)
T0 = dt.datetime(2026, 11, 30, 20, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("desired", "others", "expected"),
    [
        pytest.param(PodRequest(500, 512 * MiB), [], None, id="fits-an-empty-node"),
        pytest.param(
            PodRequest(500, 512 * MiB), [PodRequest(1000, 512 * MiB)], None, id="fits-exactly"
        ),
        pytest.param(
            PodRequest(500, 2 * GiB),
            [],
            Pending(
                "Infeasible",
                f"Node didn't have enough capacity: memory, requested: {2 * GiB}, capacity: {GiB}",
            ),
            id="memory-over-allocatable",
        ),
        pytest.param(
            PodRequest(8000, 2 * GiB),
            [],
            Pending(
                "Infeasible",
                f"Node didn't have enough capacity: memory, requested: {2 * GiB}, capacity: {GiB}",
            ),
            id="both-over-memory-named",
        ),
        pytest.param(
            PodRequest(8000, MiB),
            [],
            Pending(
                "Infeasible",
                "Node didn't have enough capacity: cpu, requested: 8000, capacity: 4000",
            ),
            id="cpu-over-allocatable",
        ),
        pytest.param(
            PodRequest(0, 512 * MiB),
            [PodRequest(0, 600 * MiB)],
            Pending(
                "Deferred",
                f"Node didn't have enough resource: memory, requested: {512 * MiB},"
                f" used: {600 * MiB}, capacity: {GiB}",
            ),
            id="memory-taken-by-others",
        ),
        pytest.param(
            PodRequest(3000, 512 * MiB),
            [PodRequest(2000, 600 * MiB)],
            Pending(
                "Deferred",
                "Node didn't have enough resource: cpu, requested: 3000, used: 2000,"
                " capacity: 4000",
            ),
            id="cpu-checked-before-memory",
        ),
    ],
)
def test_admit_resize(
    desired: PodRequest, others: list[PodRequest], expected: Pending | None
) -> None:
    assert admit_resize(desired=desired, others=others, allocatable=NODE) == expected


def res(**kw: str) -> Resources:
    requests = {k.split("_")[0]: v for k, v in kw.items() if k.endswith("_request")}
    limits = {k.split("_")[0]: v for k, v in kw.items() if k.endswith("_limit")}
    return Resources.of({"requests": requests, "limits": limits})


MEMORY_RESTARTS = [{"resourceName": "memory", "restartPolicy": "RestartContainer"}]
CPU_RESTARTS = [{"resourceName": "cpu", "restartPolicy": "RestartContainer"}]


@pytest.mark.parametrize(
    ("allocated", "actuated", "policy", "expected"),
    [
        pytest.param(
            res(memory_limit="1Gi"), res(memory_limit="1024Mi"), [], Action.NONE, id="same"
        ),
        pytest.param(
            res(memory_limit="2Gi"), res(memory_limit="1Gi"), [], Action.UPDATE, id="default"
        ),
        pytest.param(
            res(memory_limit="2Gi"),
            res(memory_limit="1Gi"),
            MEMORY_RESTARTS,
            Action.RESTART,
            id="memory-restart",
        ),
        pytest.param(
            res(memory_request="2Gi"),
            res(memory_request="1Gi"),
            MEMORY_RESTARTS,
            Action.RESTART,
            id="memory-request-restart",
        ),
        pytest.param(
            res(memory_limit="2Gi"),
            res(memory_limit="1Gi"),
            CPU_RESTARTS,
            Action.UPDATE,
            id="other-resource-restarts",
        ),
        pytest.param(
            res(cpu_limit="2", memory_limit="2Gi"),
            res(cpu_limit="1", memory_limit="2Gi"),
            CPU_RESTARTS,
            Action.RESTART,
            id="cpu-restart",
        ),
    ],
)
def test_container_action(
    allocated: Resources, actuated: Resources, policy: list[dict[str, str]], expected: Action
) -> None:
    assert (
        container_action(allocated=allocated, actuated=actuated, resize_policy=policy) is expected
    )


@pytest.mark.parametrize(
    ("kw", "expected"),
    [
        pytest.param(
            {"pod_limit_before": None, "pod_limit_after": None, "decreasing": {}},
            None,
            id="nothing-shrinks",
        ),
        pytest.param(
            {"pod_limit_before": 256 * MiB, "pod_limit_after": 128 * MiB, "decreasing": {}},
            None,
            id="pod-shrinks-above-usage",
        ),
        pytest.param(
            {"pod_limit_before": 256 * MiB, "pod_limit_after": 40 * MiB, "decreasing": {}},
            "cannot decrease memory limits: attempting to set pod memory limit (41943040)"
            " below current usage (52428800)",
            id="pod-only",
        ),
        pytest.param(
            {"pod_limit_before": None, "pod_limit_after": None, "decreasing": {"app": 40 * MiB}},
            'cannot decrease memory limits: attempting to set container "app" memory limit'
            " (41943040) below current usage (52428800)",
            id="container-only",
        ),
        pytest.param(
            {
                "pod_limit_before": 256 * MiB,
                "pod_limit_after": 40 * MiB,
                "decreasing": {"app": 40 * MiB},
            },
            "cannot decrease memory limits: [attempting to set pod memory limit (41943040)"
            ' below current usage (52428800), attempting to set container "app" memory limit'
            " (41943040) below current usage (52428800)]",
            id="both-aggregated",
        ),
        pytest.param(
            {"pod_limit_before": None, "pod_limit_after": None, "decreasing": {"app": 50 * MiB}},
            'cannot decrease memory limits: attempting to set container "app" memory limit'
            " (52428800) below current usage (52428800)",
            id="equal-to-usage-refused",
        ),
    ],
)
def test_memory_decrease_error(kw: dict[str, Any], expected: str | None) -> None:
    usage = {"app": 50 * MiB}
    got = memory_decrease_error(pod_usage=50 * MiB, container_usage=usage, **kw)
    assert got == expected


def test_pod_request_adds_sidecars_takes_the_init_peak_and_overhead() -> None:
    pod = make_pod(
        containers=[make_container("a", memory_request="100Mi", cpu_request="100m")],
        init_containers=[
            {**make_container("side", memory_request="50Mi"), "restartPolicy": "Always"},
            make_container("setup", memory_request="300Mi", cpu_request="1"),
        ],
    )
    spec = {**pod["spec"], "overhead": {"memory": "10Mi"}}
    # max(100 + 50, 300 + 50) + 10 MiB; cpu max(100m, 1000m)
    assert pod_request(spec) == PodRequest(cpu=1000, memory=360 * MiB)
    # The allocation replaces a container's own resources.
    allocated = {"setup": {"requests": {"memory": "10Mi"}}}
    assert pod_request(spec, allocated) == PodRequest(cpu=100, memory=160 * MiB)


def test_pod_memory_limit_needs_a_limit_on_every_container() -> None:
    both = make_pod(
        containers=[
            make_container("a", memory_limit="100Mi"),
            make_container("b", memory_limit="50Mi"),
        ]
    )["spec"]
    assert pod_memory_limit(both) == 150 * MiB
    assert pod_memory_limit(both, {"b": {"limits": {"memory": "10Mi"}}}) == 110 * MiB
    one = make_pod(containers=[make_container("a", memory_limit="100Mi"), make_container("b")])
    assert pod_memory_limit(one["spec"]) is None


def test_retry_order_follows_the_kubelet() -> None:
    def candidate(uid: str, **kw: Any) -> RetryCandidate:
        base: dict[str, Any] = {
            "increasing": True,
            "priority": 0,
            "guaranteed": False,
            "pending_since": T0,
        }
        return RetryCandidate(uid=uid, **(base | kw))

    candidates = [
        candidate("late", pending_since=T0 + dt.timedelta(minutes=1)),
        candidate("early"),
        candidate("guaranteed", guaranteed=True),
        candidate("important", priority=1000),
        candidate("shrinking", increasing=False),
    ]
    assert retry_order(candidates) == ["shrinking", "important", "guaranteed", "early", "late"]


def resized_pod(uid: str, *, generation: int, request: str) -> dict[str, Any]:
    pod = make_pod(uid, containers=[make_container("app", memory_request=request)])
    pod["metadata"] |= {"uid": uid, "generation": generation}
    return pod


def test_a_deferred_resize_is_allocated_and_its_worker_woken_when_a_pod_leaves() -> None:
    book = AllocationBook(allocatable=NODE)
    woken: list[str] = []
    book.admit("a", resized_pod("a", generation=1, request="256Mi"), wake=lambda: woken.append("a"))
    book.admit("b", resized_pod("b", generation=1, request="600Mi"), wake=lambda: woken.append("b"))

    waiting = book.sync("a", resized_pod("a", generation=2, request="512Mi"))
    assert waiting is not None and waiting.pending is not None
    assert waiting.pending.reason == "Deferred"
    assert waiting.pending_generation == 2
    assert waiting.containers == {"app": {"requests": {"memory": "256Mi"}}}

    book.release("b")

    assert woken == ["a"]
    allocated = book.sync("a", resized_pod("a", generation=2, request="512Mi"))
    assert allocated is not None and allocated.pending is None
    assert allocated.containers == {"app": {"requests": {"memory": "512Mi"}}}
    assert (allocated.accepted, allocated.accepted_generation) == (1, 2)


def test_a_pod_adopted_after_a_restart_keeps_the_resources_in_effect() -> None:
    book = AllocationBook(allocatable=NODE)
    pod = resized_pod("a", generation=2, request="512Mi")
    pod["status"] = {
        "containerStatuses": [{"name": "app", "resources": {"requests": {"memory": "256Mi"}}}]
    }
    book.admit("a", pod, wake=lambda: None)
    book.admit("b", resized_pod("b", generation=1, request="600Mi"), wake=lambda: None)

    view = book.sync("a", pod)

    assert view is not None and view.pending is not None
    assert view.pending.reason == "Deferred"


def test_resize_conditions_and_allocated_resources_in_the_pod_status() -> None:
    pod = make_pod(containers=[make_container("app", memory_request="64Mi", memory_limit="1Gi")])
    pod["metadata"]["generation"] = 3
    app = ContainerView(
        name="app",
        image="example.com/app:1",
        state=Running(T0),
        resources={"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        allocated_resources={"memory": "64Mi"},
    )
    condition = ResizeCondition(
        kind="PodResizeInProgress",
        observed_generation=3,
        last_transition=T0,
        last_probe=T0,
        reason="Error",
        message="cannot decrease memory limits: ...",
    )
    view = PodView(
        host_ip="127.0.0.1",
        pod_ip="127.0.0.2",
        start_time=T0,
        containers=(app,),
        resize_conditions=(condition,),
    )
    status = build_pod_status(pod=pod, view=view, previous=None, now=T0)

    (entry,) = status["containerStatuses"]
    assert entry["allocatedResources"] == {"memory": "64Mi"}
    assert entry["resources"]["limits"] == {"memory": "128Mi"}
    (progress,) = [c for c in status["conditions"] if c["type"] == "PodResizeInProgress"]
    assert progress == {
        "type": "PodResizeInProgress",
        "status": "True",
        "lastProbeTime": "2026-11-30T20:00:00Z",
        "lastTransitionTime": "2026-11-30T20:00:00Z",
        "observedGeneration": 3,
        "reason": "Error",
        "message": "cannot decrease memory limits: ...",
    }
    # Cleared by the simulator: an old one is not carried over from the pod's status.
    pod["status"] = status
    done = dataclasses.replace(view, resize_conditions=())
    cleared = build_pod_status(pod=pod, view=done, previous=status, now=T0)
    assert not [c for c in cleared["conditions"] if c["type"].startswith("PodResize")]
