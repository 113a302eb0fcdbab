"""The update planner: what each update mode does to a running pod, and why (updates.py)."""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest

from memwarden.api import APPLIED_ANNOTATION
from memwarden.mutation import plan_pod
from memwarden.selection import NamespacePolicies
from memwarden.sizing import KubeletProfile
from memwarden.status import namespace_statuses, pod_view
from memwarden.updates import PodUpdate, RetryBook, UpdateInputs, decide, parse_go_bytes
from memwarden_testing.builders import make_candidate, make_container, make_pod

pytestmark = pytest.mark.unit

PROFILE = KubeletProfile.defaults_for(37)
NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
BIGGER = {"request": "1Gi", "limit": "2Gi"}
GUARANTEED_CPU = {"cpu_request": "500m", "cpu_limit": "500m"}


def running_pod(
    *,
    containers: list[dict[str, Any]],
    qos: str | None = None,
    owner: bool = True,
    applied: dict[str, dict[str, str]] | None = None,
    conditions: list[dict[str, Any]] | None = None,
    phase: str = "Running",
    node: str | None = "node-1",
) -> dict[str, Any]:
    """A pod as the API server holds it once running; ``applied``: admission's record."""
    annotations = None
    if applied is not None:
        record = {"policy": "shop/checkout", "containers": applied}
        annotations = {APPLIED_ANNOTATION: json.dumps(record, sort_keys=True)}
    pod = make_pod("pod-1", labels={"app": "checkout"}, containers=containers)
    if annotations:
        pod["metadata"]["annotations"] = annotations
    if owner:
        pod["metadata"]["ownerReferences"] = [
            {"kind": "ReplicaSet", "name": "checkout-7f9c", "controller": True}
        ]
    if node:
        pod["spec"]["nodeName"] = node
    pod["status"] = {"phase": phase, "conditions": conditions or []}
    if qos:
        pod["status"]["qosClass"] = qos
    return pod


def decision(pod: dict[str, Any], inputs: UpdateInputs | None = None, **policy: Any) -> PodUpdate:
    view = pod_view(pod)
    assert view is not None
    selection = NamespacePolicies.build([make_candidate(**policy)]).select_pod(view)
    plan = plan_pod(pod=view, selection=selection, profile=PROFILE)
    return decide(view=view, plan=plan, inputs=inputs or UpdateInputs(now=NOW))


def burstable(limit: str = "1Gi", request: str = "512Mi", **kw: Any) -> dict[str, Any]:
    return make_container(memory_request=request, memory_limit=limit, **kw)


def test_in_place_resizes_memory_only_and_says_what_changes() -> None:
    found = decision(running_pod(containers=[burstable()]), memory=BIGGER, update="InPlace")
    assert found.action == "resize"
    assert found.resize == {
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "resources": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}},
                }
            ]
        }
    }
    assert found.changes == ("app: request 512Mi -> 1Gi", "app: limit 1Gi -> 2Gi")
    assert found.restarts == ()


def test_restart_container_resize_policy_is_announced_before_the_resize() -> None:
    container = burstable()
    container["resizePolicy"] = [{"resourceName": "memory", "restartPolicy": "RestartContainer"}]
    found = decision(running_pod(containers=[container]), memory=BIGGER, update="InPlace")
    assert (found.action, found.restarts) == ("resize", ("app",))
    assert "restarts app (resizePolicy RestartContainer)" in found.reason


GUARANTEED = make_container(memory_request="1Gi", memory_limit="1Gi", **GUARANTEED_CPU)


@pytest.mark.parametrize(
    ("update", "action", "stuck"),
    [
        pytest.param("InPlace", "wait", True, id="in-place-refuses"),
        pytest.param("InPlaceOrRecreate", "evict", False, id="falls-back-to-eviction"),
    ],
)
def test_a_guaranteed_pod_the_policy_would_make_burstable_is_never_resized(
    update: str, action: str, stuck: bool
) -> None:
    pod = running_pod(containers=[GUARANTEED], qos="Guaranteed")
    found = decision(pod, memory={"request": "512Mi", "limit": "1Gi"}, update=update)
    assert (found.action, found.stuck, found.resize) == (action, stuck, None)
    assert "QoS class would change from Guaranteed to Burstable" in found.reason


def admitted_go_pod(limit: str = "1Gi", gomemlimit: str = "921MiB") -> dict[str, Any]:
    """A pod admitted under a 90% GOMEMLIMIT policy with ``limit``."""
    return running_pod(
        containers=[burstable(limit=limit, env={"GOMEMLIMIT": gomemlimit})],
        applied={"app": {"request": "512Mi", "limit": limit, "GOMEMLIMIT": gomemlimit}},
    )


GO90 = {"memoryLimit": "90%"}


def test_in_place_growth_reports_the_injected_gomemlimit_stale() -> None:
    found = decision(admitted_go_pod(), memory=BIGGER, go=GO90, update="InPlace")
    assert found.action == "resize"
    assert found.stale_runtime == ("app: GOMEMLIMIT 921MiB, policy wants 1843MiB",)
    assert (
        "runtime env (GOMEMLIMIT/GOGC, JVM/Node.js flags) stays as it is until the pod is recreated"
        in found.reason
    )


def test_after_the_resize_the_pod_is_updated_and_still_stale() -> None:
    pod = admitted_go_pod()
    pod["spec"]["containers"][0]["resources"] = {
        "requests": {"memory": "1Gi"},
        "limits": {"memory": "2Gi"},
    }
    found = decision(pod, memory=BIGGER, go=GO90, update="InPlace")
    assert (found.action, found.updated) == ("none", True)
    assert found.stale_runtime == ("app: GOMEMLIMIT 921MiB, policy wants 1843MiB",)


@pytest.mark.parametrize(
    ("update", "action"),
    [
        pytest.param("InPlace", "resize", id="in-place-only-reports"),
        pytest.param("InPlaceOrRecreate", "evict", id="or-recreate-evicts"),
    ],
)
def test_a_stale_gomemlimit_above_the_new_limit(update: str, action: str) -> None:
    pod = admitted_go_pod(limit="2Gi", gomemlimit="1843MiB")
    found = decision(pod, memory={"request": "512Mi", "limit": "1536Mi"}, go=GO90, update=update)
    assert found.action == action
    assert found.stale_runtime
    if action == "evict":
        assert "GOMEMLIMIT 1843Mi would be above its new limit 1536Mi" in found.reason


def test_a_users_own_gomemlimit_is_not_stale() -> None:
    pod = running_pod(containers=[burstable(env={"GOMEMLIMIT": "700MiB"})])
    found = decision(pod, memory=BIGGER, go=GO90, update="InPlace")
    assert found.stale_runtime == ()


def test_a_limit_shrinks_by_at_most_max_shrink_percent_per_step() -> None:
    pod = running_pod(containers=[burstable(limit="4Gi", request="4Gi")])
    found = decision(pod, memory={"request": "1Gi", "limit": "1Gi"}, update="InPlace")
    assert found.action == "resize"
    assert found.resize is not None
    resources = found.resize["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"memory": "2Gi"}, "limits": {"memory": "2Gi"}}
    assert "maxShrinkPercent" in found.reason
    assert "working set unknown (no Prometheus)" in found.reason


def test_a_limit_never_goes_below_the_working_set() -> None:
    pod = running_pod(containers=[burstable(limit="4Gi", request="1Gi")])
    inputs = UpdateInputs(now=NOW, working_sets={"app": 3 * 2**30})
    found = decision(pod, inputs, memory={"request": "1Gi", "limit": "2Gi"}, update="InPlace")
    assert found.resize is not None
    assert found.resize["spec"]["containers"][0]["resources"] == {"limits": {"memory": "3Gi"}}
    inputs = UpdateInputs(now=NOW, working_sets={"app": 5 * 2**30})
    found = decision(pod, inputs, memory={"request": "1Gi", "limit": "2Gi"}, update="InPlace")
    assert (found.action, found.stuck) == ("wait", True)
    assert "below its working set" in found.reason


def test_with_prometheus_a_limit_is_not_lowered_before_its_working_set_is_known() -> None:
    # Prometheus configured, but no sample for the container (not scraped yet, or the
    # query failed): the working-set rail cannot hold, so nothing goes down; up still goes.
    pod = running_pod(containers=[burstable(limit="4Gi", request="1Gi")])
    unknown = UpdateInputs(now=NOW, working_sets={})
    found = decision(pod, unknown, memory={"request": "1Gi", "limit": "2Gi"}, update="InPlace")
    assert (found.action, found.resize) == ("wait", None)
    assert "working set of app is not known yet" in found.reason
    found = decision(pod, unknown, memory={"request": "1Gi", "limit": "8Gi"}, update="InPlace")
    assert found.action == "resize"


@pytest.mark.parametrize(
    ("pod", "reason"),
    [
        pytest.param(
            running_pod(containers=[burstable()], phase="Pending", node=None),
            "not running on a node yet",
            id="not-scheduled",
        ),
        pytest.param(
            running_pod(containers=[burstable()], phase="Pending"),
            "not running on a node yet (phase Pending)",
            id="scheduled-not-running",
        ),
    ],
)
def test_pods_that_do_not_run_yet_wait(pod: dict[str, Any], reason: str) -> None:
    found = decision(pod, memory=BIGGER, update="InPlace")
    assert found.action == "wait"
    assert reason in found.reason


def test_the_kill_switch_turns_every_action_into_a_wait() -> None:
    found = decision(
        running_pod(containers=[burstable()]),
        UpdateInputs(now=NOW, enabled=False),
        memory=BIGGER,
        update="InPlace",
    )
    assert (found.action, found.resize) == ("wait", None)
    assert found.reason.startswith("updates are off (operator kill switch)")


def test_recreate_never_evicts_a_pod_without_a_controller() -> None:
    found = decision(
        running_pod(containers=[burstable()], owner=False), memory=BIGGER, update="Recreate"
    )
    assert (found.action, found.stuck) == ("wait", True)
    assert "no controller" in found.reason
    found = decision(running_pod(containers=[burstable()]), memory=BIGGER, update="Recreate")
    assert found.action == "evict"


RESIZED = burstable(limit="2Gi", request="1Gi")


def resize_condition(reason: str, since: str = "2026-11-30T11:59:00Z") -> dict[str, Any]:
    return {
        "type": "PodResizePending",
        "status": "True",
        "reason": reason,
        "message": "Node didn't have enough capacity",
        "lastTransitionTime": since,
    }


@pytest.mark.parametrize(
    ("update", "condition", "action"),
    [
        pytest.param("InPlace", resize_condition("Infeasible"), "wait", id="infeasible-in-place"),
        pytest.param(
            "InPlaceOrRecreate",
            resize_condition("Infeasible"),
            "evict",
            id="infeasible-or-recreate",
        ),
        pytest.param(
            "InPlaceOrRecreate", resize_condition("Deferred"), "wait", id="deferred-within-grace"
        ),
        pytest.param(
            "InPlaceOrRecreate",
            resize_condition("Deferred", since="2026-11-30T11:00:00Z"),
            "evict",
            id="deferred-too-long",
        ),
        pytest.param(
            "InPlace",
            {"type": "PodResizeInProgress", "status": "True"},
            "wait",
            id="in-progress",
        ),
        pytest.param(
            "InPlaceOrRecreate",
            {"type": "PodResizeInProgress", "status": "True", "reason": "Error", "message": "x"},
            "evict",
            id="kubelet-error-or-recreate",
        ),
    ],
)
def test_the_pods_resize_conditions_decide_what_follows(
    update: str, condition: dict[str, Any], action: str
) -> None:
    pod = running_pod(containers=[RESIZED], conditions=[condition])
    assert decision(pod, memory=BIGGER, update=update).action == action


def test_initial_and_compliant_pods_are_not_pending() -> None:
    assert not decision(running_pod(containers=[burstable()]), memory=BIGGER).pending
    assert not decision(running_pod(containers=[RESIZED]), memory=BIGGER, update="InPlace").pending


def test_a_memory_limit_cannot_be_removed_in_place() -> None:
    found = decision(
        running_pod(containers=[burstable()]), memory={"request": "512Mi"}, update="InPlace"
    )
    assert (found.action, found.stuck) == ("wait", True)
    assert "cannot remove a memory limit" in found.reason


def test_an_api_refusal_makes_in_place_or_recreate_evict() -> None:
    inputs = UpdateInputs(now=NOW, refused="422: forbidden")
    pod = running_pod(containers=[burstable()])
    assert decision(pod, inputs, memory=BIGGER, update="InPlaceOrRecreate").action == "evict"
    assert decision(pod, inputs, memory=BIGGER, update="InPlace").action == "wait"


def test_audit_status_shows_what_would_happen_and_calls_it_audit() -> None:
    policy = make_candidate(memory=BIGGER, update="InPlace", mode="Audit")
    view = pod_view(running_pod(containers=[burstable()]))
    assert view is not None
    status = namespace_statuses(
        policies=[policy],
        pods=[view],
        profile=PROFILE,
        now="2026-11-30T12:00:00Z",
        generations={},
        previous={},
    )["checkout"]
    assert status.pendingPods == 1
    assert status.pendingUpdates[0].action == "Resize"
    assert "app: limit 1Gi -> 2Gi" in status.pendingUpdates[0].reason
    updated = next(c for c in status.conditions if c.type == "Updated")
    assert (updated.status, updated.reason) == ("False", "Audit")


def test_status_counts_updated_and_stale_pods() -> None:
    pod = admitted_go_pod()
    pod["spec"]["containers"][0]["resources"] = {
        "requests": {"memory": "1Gi"},
        "limits": {"memory": "2Gi"},
    }
    view = pod_view(pod)
    assert view is not None
    status = namespace_statuses(
        policies=[make_candidate(memory=BIGGER, go=GO90, update="InPlace")],
        pods=[view],
        profile=PROFILE,
        now="2026-11-30T12:00:00Z",
        generations={},
        previous={},
    )["checkout"]
    assert (status.updatedPods, status.pendingPods, status.staleRuntimePods) == (1, 0, 1)
    assert status.staleRuntimePodNames == ["pod-1"]


@pytest.mark.parametrize(
    ("text", "value"),
    [("1843MiB", 1843 * 2**20), ("1000", 1000), ("5B", 5), ("2GiB", 2**31), ("1.5GiB", None)],
)
def test_parse_go_bytes(text: str, value: int | None) -> None:
    assert parse_go_bytes(text) == value


def test_retry_book_backs_off_and_forgets_a_refusal_when_it_is_due_again() -> None:
    book = RetryBook(base=5, cap=20)
    key = ("shop", "pod-1")
    assert book.due(key, 0)
    assert book.failed(key, now=0, message="422: no", refused=True) == 5
    assert (book.due(key, 4), book.refused(key, 4)) == (False, "422: no")
    assert book.failed(key, now=5, message="422: no", refused=True) == 10
    assert book.failed(key, now=15, message="422: no", refused=True) == 20
    assert book.failed(key, now=35, message="422: no", refused=True) == 20  # capped
    assert (book.due(key, 55), book.refused(key, 55)) == (True, None)
    assert book.failed(key, now=0, message="429", after=3) == 3  # the server said when
    book.forget_gone("shop", set())
    assert book.due(key, 0)


def admitted_runtime_pod(*, var: str, theirs: str, ours: str) -> dict[str, Any]:
    """A pod admitted with 1Gi under a JVM/Node policy: ``theirs`` + ``ours`` in ``var``."""
    return running_pod(
        containers=[burstable(env={var: f"{theirs} {ours}".strip()})],
        applied={"app": {"request": "512Mi", "limit": "1Gi", var: ours}},
    )


@pytest.mark.parametrize(
    ("var", "ours", "section", "wanted"),
    [
        pytest.param(
            "NODE_OPTIONS",
            "--max-old-space-size=768",
            {"node": {"maxOldSpaceSize": "75%"}},
            "--max-old-space-size=1536",
            id="node-old-space",
        ),
        pytest.param(
            "JAVA_TOOL_OPTIONS",
            "-Xmx768m",
            {"jvm": {"maxHeap": "1536Mi"}},
            "-Xmx1536m",
            id="jvm-heap",
        ),
    ],
)
def test_in_place_growth_reports_injected_runtime_flags_stale(
    var: str, ours: str, section: dict[str, Any], wanted: str
) -> None:
    pod = admitted_runtime_pod(var=var, theirs="--trace-warnings -Dx=1", ours=ours)
    found = decision(pod, memory=BIGGER, update="InPlace", **section)
    assert found.action == "resize"
    assert found.stale_runtime == (f"app: {var} has {ours}, policy wants {wanted}",)


def test_a_percentage_the_jvm_applies_itself_is_not_stale_after_a_resize() -> None:
    """No memory.high: -XX:MaxRAMPercentage=75 is right for any memory.max."""
    ours = "-XX:MaxRAMPercentage=75"
    pod = admitted_runtime_pod(var="JAVA_TOOL_OPTIONS", theirs="", ours=ours)
    found = decision(pod, memory=BIGGER, update="InPlace", jvm={"maxRAMPercentage": 75})
    assert (found.action, found.stale_runtime) == ("resize", ())


def test_a_users_own_heap_flag_is_not_stale_unless_overridden() -> None:
    pod = running_pod(containers=[burstable(env={"JAVA_TOOL_OPTIONS": "-Xmx700m"})])
    kept = decision(pod, memory=BIGGER, update="InPlace", jvm={"maxHeap": "1Gi"})
    assert kept.stale_runtime == ()
    replaced = decision(
        pod, memory=BIGGER, update="InPlace", jvm={"maxHeap": "1Gi", "overrideExisting": True}
    )
    assert replaced.stale_runtime == ("app: JAVA_TOOL_OPTIONS has -Xmx700m, policy wants -Xmx1g",)


@pytest.mark.parametrize(
    ("var", "ours", "section"),
    [
        pytest.param("JAVA_TOOL_OPTIONS", "-Xmx1800m", {"jvm": {"maxHeap": "1Gi"}}, id="jvm"),
        pytest.param(
            "NODE_OPTIONS",
            "--max-old-space-size=1800",
            {"node": {"maxOldSpaceSize": "75%"}},
            id="node",
        ),
    ],
)
def test_an_injected_heap_above_the_new_limit_recreates_under_in_place_or_recreate(
    var: str, ours: str, section: dict[str, Any]
) -> None:
    pod = running_pod(
        containers=[burstable(limit="2Gi", env={var: f"-Dx=1 {ours}"})],
        applied={"app": {"request": "512Mi", "limit": "2Gi", var: ours}},
    )
    memory = {"request": "512Mi", "limit": "1536Mi"}
    found = decision(pod, memory=memory, update="InPlaceOrRecreate", **section)
    assert found.action == "evict"
    assert f"app: its {var} {ours} would be above its new limit 1536Mi" in found.reason
    in_place = decision(pod, memory=memory, update="InPlace", **section)
    assert in_place.action == "resize"
