"""Pod + policy -> JSONPatch: resources, Go env, the applied annotation; idempotent."""

from __future__ import annotations

import copy
import json
from typing import Any

import jsonpatch
import pytest

from memwarden.api import APPLIED_ANNOTATION
from memwarden.mutation import PodShapeError, admission_ops, plan_pod
from memwarden.selection import container_names, select_policy
from memwarden.sizing import KubeletProfile
from memwarden_testing.builders import make_candidate, make_container, make_pod

pytestmark = pytest.mark.unit

STOCK_137 = KubeletProfile.defaults_for(37)
THROTTLING = KubeletProfile.defaults_for(
    37, throttling_factor=0.9, reservation_policy="TieredReservation"
)
PLAIN = {"request": "512Mi", "limit": "1Gi"}


def plan_for(pod: dict[str, Any], *, profile: KubeletProfile = STOCK_137, **policy: Any):
    candidate = make_candidate(**policy)
    regular, sidecars = container_names(pod)
    selection = select_policy(
        labels=pod["metadata"]["labels"],
        container_names=regular,
        sidecar_names=sidecars,
        candidates=[candidate],
    )
    return plan_pod(pod=pod, selection=selection, profile=profile)


def admitted(pod: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    ops = admission_ops(plan_for(pod, **kwargs))
    return jsonpatch.apply_patch(copy.deepcopy(pod), ops)


def env_of(pod: dict[str, Any], container: int = 0) -> dict[str, Any]:
    return {
        e["name"]: e.get("value", e.get("valueFrom"))
        for e in pod["spec"]["containers"][container].get("env", [])
    }


LABELS = {"app": "checkout"}
PODS = {
    "bare": make_pod(labels=LABELS),
    "with-other-resources": make_pod(
        labels=LABELS, containers=[make_container(cpu_request="100m", memory_request="64Mi")]
    ),
    "with-env": make_pod(labels=LABELS, containers=[make_container(env={"LOG": "debug"})]),
    "two-containers": make_pod(
        labels=LABELS,
        containers=[make_container("app"), make_container("proxy", memory_limit="128Mi")],
    ),
    "own-gomemlimit": make_pod(
        labels=LABELS, containers=[make_container(env={"GOMEMLIMIT": "100MiB"})]
    ),
    "annotated": make_pod(labels=LABELS, annotations={"team": "shop"}),
}
POLICIES = {
    "plain": {"memory": PLAIN},
    "plain-go": {"memory": PLAIN, "go": {"memoryLimit": "90%", "gogc": "100"}},
    "go-only": {"go": {"memoryLimit": "256Mi"}},
    "limit-only": {"memory": {"limit": "1Gi"}, "go": {"memoryLimit": "80%"}},
    "override": {"memory": PLAIN, "go": {"memoryLimit": "90%", "overrideExisting": True}},
}


@pytest.mark.parametrize("pod_id", list(PODS))
@pytest.mark.parametrize("policy_id", list(POLICIES))
def test_patch_is_idempotent(pod_id: str, policy_id: str) -> None:
    once = admitted(copy.deepcopy(PODS[pod_id]), **POLICIES[policy_id])
    second = plan_for(once, **POLICIES[policy_id])
    assert second.ops == ()
    assert second.drift == ()
    assert admitted(once, **POLICIES[policy_id]) == once


def test_plain_resources_env_and_annotation_on_a_bare_pod() -> None:
    pod = admitted(PODS["bare"], memory=PLAIN, go={"memoryLimit": "90%", "gogc": "50"})
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    # Stock 1.37 kubelet writes no memory.high: 90% of the 1Gi limit, floored to a MiB.
    assert env_of(pod) == {"GOMEMLIMIT": "921MiB", "GOGC": "50"}
    record = json.loads(pod["metadata"]["annotations"][APPLIED_ANNOTATION])
    assert record == {
        "policy": "shop/checkout",
        "containers": {
            "app": {"request": "512Mi", "limit": "1Gi", "GOMEMLIMIT": "921MiB", "GOGC": "50"}
        },
    }


def test_gomemlimit_follows_memory_high_when_the_kubelet_throttles() -> None:
    pod = admitted(
        PODS["bare"],
        profile=THROTTLING,
        memory={"request": "1Gi", "limit": "2Gi"},
        go={"memoryLimit": "90%"},
    )
    # memory.high = floor((1Gi + 0.9 * 1Gi) / 4096) * 4096 = 2040107008; 90% -> 1751 MiB
    assert env_of(pod)["GOMEMLIMIT"] == "1751MiB"


def test_other_resources_and_env_are_kept() -> None:
    pod = admitted(PODS["with-other-resources"], memory=PLAIN)
    assert pod["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "100m", "memory": "512Mi"},
        "limits": {"memory": "1Gi"},
    }
    pod = admitted(PODS["with-env"], go={"gogc": "off"})
    assert env_of(pod) == {"LOG": "debug", "GOGC": "off"}


@pytest.mark.parametrize(
    ("container", "override", "expected"),
    [
        pytest.param(
            make_container(env={"GOMEMLIMIT": "100MiB"}), False, "100MiB", id="value-kept"
        ),
        pytest.param(
            make_container(env={"GOMEMLIMIT": "100MiB"}), True, "921MiB", id="value-replaced"
        ),
        pytest.param(
            make_container(env_from_field=("GOMEMLIMIT",)),
            False,
            {"fieldRef": {"fieldPath": "metadata.name"}},
            id="valuefrom-kept",
        ),
        pytest.param(
            make_container(env_from_field=("GOMEMLIMIT",)), True, "921MiB", id="valuefrom-replaced"
        ),
    ],
)
def test_existing_go_variables_are_respected_unless_overridden(
    container: dict, override: bool, expected: Any
) -> None:
    pod = make_pod(labels=LABELS, containers=[container])
    plan = plan_for(pod, memory=PLAIN, go={"memoryLimit": "90%", "overrideExisting": override})
    result = jsonpatch.apply_patch(copy.deepcopy(pod), admission_ops(plan))
    assert env_of(result)["GOMEMLIMIT"] == expected
    assert [e["name"] for e in result["spec"]["containers"][0]["env"]].count("GOMEMLIMIT") == 1
    if not override:
        assert any("keeps its own GOMEMLIMIT" in note for note in plan.notes)


def test_audit_mode_computes_but_never_mutates() -> None:
    plan = plan_for(PODS["bare"], memory=PLAIN, mode="Audit")
    assert plan.drift  # it knows what it would change...
    assert admission_ops(plan) == []  # ...and changes nothing


def test_drift_says_what_differs() -> None:
    pod = make_pod(
        labels=LABELS, containers=[make_container(memory_request="256Mi", memory_limit="1Gi")]
    )
    plan = plan_for(pod, memory=PLAIN, go={"gogc": "100"})
    assert plan.drift == (
        "app: memory request 256Mi, policy wants 512Mi",
        "app: GOGC unset, policy wants 100",
    )
    assert not plan.compliant


def test_equal_quantities_in_other_units_are_not_drift() -> None:
    pod = make_pod(
        labels=LABELS,
        containers=[make_container(memory_request="536870912", memory_limit="1024Mi")],
    )
    assert plan_for(pod, memory=PLAIN).drift == ()


def test_infeasible_intent_changes_nothing_and_says_why() -> None:
    plan = plan_for(PODS["bare"], memory={"protect": "1Gi", "high": "2Gi"})
    assert plan.infeasible is not None
    assert "memoryThrottlingFactor" in plan.infeasible
    assert admission_ops(plan) == []


def test_sidecar_init_container_is_governed_by_name() -> None:
    sidecar = {**make_container("proxy"), "restartPolicy": "Always"}
    pod = make_pod(labels=LABELS, init_containers=[sidecar])
    result = admitted(pod, memory=PLAIN, containers=["proxy"])
    assert result["spec"]["initContainers"][0]["resources"]["limits"] == {"memory": "1Gi"}
    assert "resources" not in result["spec"]["containers"][0]


def test_malformed_pod_quantity_names_the_field() -> None:
    pod = make_pod(labels=LABELS, containers=[make_container(memory_limit="lots")])
    with pytest.raises(PodShapeError, match=r"spec\.containers\[0\]\.resources\.limits\.memory"):
        plan_for(pod, memory=PLAIN)


def test_unselected_pod_gets_no_plan() -> None:
    plan = plan_for(make_pod(labels={"app": "other"}), memory=PLAIN)
    assert plan.policy is None and plan.ops == () and plan.compliant
