"""One pod admission, decided by the pure core: outcomes, warnings, the review answered."""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import given, settings

from memwarden.admission import Decision, admit, review_response
from memwarden.api import APPLIED_ANNOTATION
from memwarden.mutation import PlanCache
from memwarden.selection import PolicyIndex
from memwarden.sizing import KubeletProfile
from memwarden.webhook.server import AdmissionTally
from memwarden_testing.builders import make_candidate, make_container, make_pod
from memwarden_testing.fuzzing import garbled_pods

pytestmark = pytest.mark.unit

PROFILE = KubeletProfile.defaults_for(37)
PLAIN = {"request": "512Mi", "limit": "1Gi"}


def index_of(*candidates: Any) -> PolicyIndex:
    index = PolicyIndex()
    index.replace_all(candidates)
    return index


def decide(pod: dict[str, Any], index: PolicyIndex, **overrides: Any) -> Decision:
    arguments: dict[str, Any] = {
        "pod": pod,
        "namespace": pod["metadata"]["namespace"],
        "index": index,
        "profile": PROFILE,
        "never_governed": frozenset({"kube-system"}),
        "dry_run": False,
    }
    arguments.update(overrides)
    return admit(**arguments)


def test_a_governed_pod_gets_the_plan_as_its_patch() -> None:
    pod = make_pod(labels={"app": "checkout"})
    decision = decide(pod, index_of(make_candidate(memory=PLAIN, go={"memoryLimit": "90%"})))
    assert decision.outcome == "mutated"
    assert decision.policy == "shop/checkout"
    patched = jsonpatch.apply_patch(copy.deepcopy(pod), decision.ops)
    container = patched["spec"]["containers"][0]
    assert container["resources"] == {"requests": {"memory": "512Mi"}, "limits": {"memory": "1Gi"}}
    assert {"name": "GOMEMLIMIT", "value": "921MiB"} in container["env"]
    assert json.loads(patched["metadata"]["annotations"][APPLIED_ANNOTATION])["policy"] == (
        "shop/checkout"
    )
    # Admitting the patched pod again changes nothing: the patch is the plan, idempotent.
    again = decide(patched, index_of(make_candidate(memory=PLAIN, go={"memoryLimit": "90%"})))
    assert again.outcome == "unchanged" and again.ops == []


@pytest.mark.parametrize(
    ("pod", "namespace", "outcome", "detail"),
    [
        pytest.param(
            make_pod(labels={"app": "other"}), "shop", "unchanged", "no policy", id="unselected"
        ),
        pytest.param(
            make_pod(labels={"app": "checkout"}, namespace="kube-system"),
            "kube-system",
            "unchanged",
            "not governed",
            id="never-governed-namespace",
        ),
        pytest.param(
            make_pod(labels={"app": "checkout"}), None, "unchanged", "not governed", id="no-ns"
        ),
        pytest.param(
            make_pod(
                labels={"app": "checkout"},
                containers=[make_container(memory_limit="lots")],
            ),
            "shop",
            "unchanged",
            "resources.limits.memory",
            id="unreadable-quantity",
        ),
    ],
)
def test_pods_left_unchanged_say_why(
    pod: dict[str, Any], namespace: str | None, outcome: str, detail: str
) -> None:
    decision = decide(pod, index_of(make_candidate(memory=PLAIN)), namespace=namespace)
    assert decision.outcome == outcome
    assert decision.ops == []
    assert detail in decision.detail


def test_labels_that_are_not_a_map_admit_the_pod_unchanged() -> None:
    pod = make_pod()
    pod["metadata"]["labels"] = ["app", "checkout"]
    assert decide(pod, index_of(make_candidate(memory=PLAIN))).outcome == "unchanged"


def test_an_infeasible_intent_is_not_applied_and_the_user_is_warned() -> None:
    # memory.high needs a throttling factor, which stock 1.37 kubelets do not set.
    infeasible = make_candidate(memory={"protect": "1Gi", "high": "2Gi"})
    decision = decide(make_pod(labels={"app": "checkout"}), index_of(infeasible))
    assert decision.outcome == "infeasible"
    assert decision.ops == []
    assert decision.warnings and "not applied" in decision.warnings[0]


def test_audit_mode_warns_and_never_patches() -> None:
    decision = decide(
        make_pod(labels={"app": "checkout"}),
        index_of(make_candidate(memory=PLAIN, mode="Audit")),
    )
    assert decision.outcome == "audit"
    assert decision.ops == []
    assert any("policy wants 1Gi" in w for w in decision.warnings)


def test_dry_run_decides_but_sends_no_patch() -> None:
    decision = decide(
        make_pod(labels={"app": "checkout"}), index_of(make_candidate(memory=PLAIN)), dry_run=True
    )
    assert decision.outcome == "unchanged"
    assert decision.detail == "dry run"


def test_a_conflict_is_told_to_the_user() -> None:
    index = index_of(
        make_candidate("low", memory=PLAIN, priority=1),
        make_candidate("high", memory=PLAIN, priority=5),
    )
    decision = decide(make_pod(labels={"app": "checkout"}), index)
    assert decision.policy == "shop/high"
    assert any("highest priority" in w for w in decision.warnings)


def test_review_response_carries_the_patch_base64_and_the_warnings() -> None:
    review = {"apiVersion": "admission.k8s.io/v1", "request": {"uid": "u-7"}}
    ops = [{"op": "add", "path": "/metadata/labels/x", "value": "y"}]
    answer = review_response(review, Decision("mutated", ops=ops, warnings=["w"]))
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    response = answer["response"]
    assert response["uid"] == "u-7" and response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == ops
    assert response["warnings"] == ["w"]


def test_review_response_without_changes_has_no_patch() -> None:
    review = {"apiVersion": "admission.k8s.io/v1", "request": {"uid": "u-8"}}
    response = review_response(review, Decision("unchanged"))["response"]
    assert response == {"uid": "u-8", "allowed": True}


def test_tally_summarises_then_starts_again() -> None:
    tally = AdmissionTally()
    assert tally.flush() is None
    for decision in (
        Decision("mutated"),
        Decision("mutated"),
        Decision("infeasible", policy="shop/big"),
        Decision("unchanged"),
    ):
        tally.add(decision, 0.001)
    line = tally.flush()
    assert (
        line
        == "1 infeasible, 2 mutated, 1 unchanged; policies not applied (infeasible): shop/big (1)"
    )
    assert tally.flush() is None


def test_alike_pods_share_one_plan_until_the_policy_changes() -> None:
    cache = PlanCache()
    policy = make_candidate(memory=PLAIN)
    index = index_of(policy)
    first = decide(make_pod("a", labels={"app": "checkout"}), index, cache=cache)
    second = decide(make_pod("b", labels={"app": "checkout"}), index, cache=cache)
    assert second == first
    assert (cache.hits, cache.misses) == (1, 1)
    # Another shape is planned for itself.
    other = make_pod("c", labels={"app": "checkout"}, containers=[make_container("sidecar")])
    assert decide(other, index, cache=cache).ops != first.ops
    assert cache.misses == 2
    # An updated policy is a new object: the old plan is not served for it.
    index.swap_namespace("shop", [make_candidate(memory={"request": "1Gi", "limit": "2Gi"})])
    changed = decide(make_pod("d", labels={"app": "checkout"}), index, cache=cache)
    assert cache.misses == 3
    assert {
        "op": "add",
        "path": "/spec/containers/0/resources",
        "value": {"requests": {"memory": "1Gi"}, "limits": {"memory": "2Gi"}},
    } in changed.ops


def test_an_unreadable_pod_stays_unreadable_from_the_cache() -> None:
    cache = PlanCache()
    index = index_of(make_candidate(memory=PLAIN))
    for _ in range(2):
        pod = make_pod(labels={"app": "checkout"}, containers=[make_container(memory_limit="x")])
        decision = decide(pod, index, cache=cache)
        assert decision.outcome == "unchanged" and "resources.limits.memory" in decision.detail
    assert cache.hits == 1


def test_the_cache_stays_within_its_size() -> None:
    cache = PlanCache(size=3)
    index = index_of(make_candidate(memory=PLAIN))
    for i in range(10):
        pod = make_pod(labels={"app": "checkout"}, containers=[make_container(f"c{i}")])
        decide(pod, index, cache=cache)
    assert len(cache) == 3


def test_the_cache_stays_within_its_bytes() -> None:
    """Distinct large pods (a forged review's) do not pile up: 20 of 200 KB each, a
    1 MB budget."""
    cache = PlanCache(max_bytes=1_000_000)
    index = index_of(make_candidate(memory=PLAIN))
    for i in range(20):
        big = make_container(env={"BLOB": f"{i}" + "x" * 200_000})
        assert decide(make_pod(labels={"app": "checkout"}, containers=[big]), index, cache=cache)
        assert cache.bytes <= 1_000_000
    assert 1 <= len(cache) <= 5
    huge = make_container(env={"BLOB": "y" * 2_000_000})
    decision = decide(make_pod(labels={"app": "checkout"}, containers=[huge]), index, cache=cache)
    assert decision.outcome == "mutated"  # planned, not kept
    assert cache.bytes <= 1_000_000


@settings(max_examples=300, deadline=None, derandomize=True, database=None)
@given(pod=garbled_pods("shop"))
def test_any_pod_gets_a_decision_not_an_exception(pod: dict[str, Any]) -> None:
    """A forged review can hold any pod: the core says what it does with it (a pod it
    cannot read is left unchanged, saying why) and never raises, through the plan cache
    too. An exception would admit the pod unchanged all the same, as outcome ``error``,
    with a traceback in the log per request."""
    index = index_of(make_candidate(memory=PLAIN, go={"memoryLimit": "90%"}))
    for cache in (None, PlanCache()):
        decision = admit(
            pod=pod,
            namespace="shop",
            index=index,
            profile=PROFILE,
            never_governed=frozenset(),
            dry_run=False,
            cache=cache,
        )
        assert decision.outcome in ("mutated", "unchanged", "audit", "infeasible")


def test_alike_pods_under_two_policies_keep_one_plan_each() -> None:
    """Two namespaces' Deployments with the same container spec, created in turns, both
    hit the cache (a key of the shape alone had them evict each other every time)."""
    cache = PlanCache()
    go = make_candidate(memory=PLAIN)
    jvm = make_candidate(name="java", namespace="orders", memory=PLAIN, jvm={"maxHeap": "512Mi"})
    index = index_of(go, jvm)
    for i in range(3):
        decide(make_pod(f"a{i}", labels={"app": "checkout"}), index, cache=cache)
        orders = make_pod(f"b{i}", namespace="orders", labels={"app": "checkout"})
        assert "JAVA_TOOL_OPTIONS" in str(decide(orders, index, cache=cache).ops)
    assert (cache.hits, cache.misses) == (4, 2)
