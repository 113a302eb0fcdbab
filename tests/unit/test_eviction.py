"""The eviction gate: pure, with the clock passed in (no cluster, no sleeping)."""

from __future__ import annotations

from typing import Any

import pytest

from memwarden.eviction_gate import (
    Allowed,
    EvictionGate,
    NoController,
    NotRecreatable,
    Owner,
    RateLimited,
    WorkloadBusy,
    WorkloadState,
    owner_of,
    workload_state,
)
from memwarden.settings import Settings
from memwarden_testing.builders import make_pod

pytestmark = pytest.mark.unit

POLICY = "shop/checkout"


def owned(
    name: str,
    *,
    kind: str = "ReplicaSet",
    owner: str = "web-5d8f",
    namespace: str = "shop",
    labels: dict[str, str] | None = None,
    api_version: str = "apps/v1",
    ready: bool = True,
    terminating: bool = False,
) -> dict[str, Any]:
    """A pod of a controller (by default a Deployment ``web``'s ReplicaSet)."""
    if labels is None:
        labels = {"app": "web", "pod-template-hash": "5d8f"}
    pod = make_pod(name, namespace=namespace, labels=labels)
    pod["metadata"]["uid"] = f"uid-{name}"
    pod["metadata"]["ownerReferences"] = [
        {"apiVersion": api_version, "kind": kind, "name": owner, "uid": "o", "controller": True}
    ]
    if terminating:
        pod["metadata"]["deletionTimestamp"] = "2026-11-30T10:00:00Z"
    pod["status"] = {
        "phase": "Running",
        "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
    }
    return pod


def web_pods(count: int, **kwargs: Any) -> list[dict[str, Any]]:
    return [owned(f"web-5d8f-{i}", **kwargs) for i in range(count)]


def state_of(pod: dict[str, Any], pods: list[dict[str, Any]], **kw: Any) -> WorkloadState:
    owner = owner_of(pod)
    assert owner is not None
    return workload_state(owner, pods=pods, **kw)


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        pytest.param(owned("a"), Owner("Deployment", "web"), id="deployment-replicaset"),
        pytest.param(
            owned("a", labels={"app": "web"}), Owner("ReplicaSet", "web-5d8f"), id="bare-rs"
        ),
        pytest.param(
            owned("a", labels={"pod-template-hash": "zzz"}),
            Owner("ReplicaSet", "web-5d8f"),
            id="hash-not-in-name",
        ),
        pytest.param(
            owned("db-0", kind="StatefulSet", owner="db", labels={}),
            Owner("StatefulSet", "db"),
            id="statefulset",
        ),
        pytest.param(make_pod("bare"), None, id="no-owner"),
    ],
)
def test_the_owner_is_the_controller_and_a_replicaset_resolves_to_its_deployment(
    pod: dict[str, Any], expected: Owner | None
) -> None:
    assert owner_of(pod) == expected


def test_the_update_loop_s_slim_pod_and_the_api_s_pod_are_one_workload() -> None:
    """The update loop hands the gate a pod rebuilt from the pod index (owner kind/name,
    no apiVersion); observe_workload reads the API's pods. Both must name the same
    workload, or the gate would see an empty one and never hold a second eviction."""
    from memwarden.handlers.updates import _pod_ref
    from memwarden.status import pod_view

    api_pod = owned("web-5d8f-0")
    view = pod_view(api_pod)
    assert view is not None
    slim = _pod_ref(view)
    assert owner_of(slim) == owner_of(api_pod) == Owner("Deployment", "web")
    state = workload_state(Owner("Deployment", "web"), pods=[api_pod])
    assert state.ready == {"web-5d8f-0"}


def test_an_owner_reference_that_is_not_the_controller_is_no_owner() -> None:
    pod = make_pod("p")
    pod["metadata"]["ownerReferences"] = [{"apiVersion": "v1", "kind": "ConfigMap", "name": "x"}]
    assert owner_of(pod) is None


def test_a_bare_pod_is_refused_for_good_whatever_the_limits() -> None:
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100)
    decision = gate.admit(make_pod("bare"), policy=POLICY, workload=None, now=0.0)
    assert decision == NoController()
    assert decision.permanent and decision.retry_after is None
    assert "would not come back" in decision.message


@pytest.mark.parametrize("kind", ["Job", "Node"])
def test_pods_their_controller_does_not_bring_back_as_they_were_are_refused(kind: str) -> None:
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100)
    pod = owned("p", kind=kind, owner="x", labels={}, api_version="batch/v1")
    decision = gate.admit(pod, policy=POLICY, workload=state_of(pod, [pod]), now=0.0)
    assert isinstance(decision, NotRecreatable) and decision.permanent
    assert decision.owner == Owner(kind, "x")


def test_one_pod_of_a_workload_in_flight_until_its_replacement_is_ready() -> None:
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100)
    pods = web_pods(3)
    first, second = pods[0], pods[1]
    assert isinstance(
        gate.admit(first, policy=POLICY, workload=state_of(first, pods), now=0), Allowed
    )

    # Evicted, not yet gone: terminating.
    pods[0] = owned("web-5d8f-0", terminating=True)
    busy = gate.admit(second, policy=POLICY, workload=state_of(second, pods), now=1)
    assert isinstance(busy, WorkloadBusy) and not busy.permanent
    assert busy.owner == Owner("Deployment", "web") and busy.retry_after > 0

    # Gone, the replacement not yet created (the ReplicaSet controller lags): the two
    # left are Ready, but the gate remembers it let one go.
    del pods[0]
    assert isinstance(
        gate.admit(second, policy=POLICY, workload=state_of(second, pods), now=2), WorkloadBusy
    )
    # The replacement exists, not Ready.
    pods.append(owned("web-5d8f-new", ready=False))
    assert isinstance(
        gate.admit(second, policy=POLICY, workload=state_of(second, pods), now=3), WorkloadBusy
    )
    # Ready: the next one may go.
    pods[-1] = owned("web-5d8f-new")
    assert isinstance(
        gate.admit(second, policy=POLICY, workload=state_of(second, pods), now=4), Allowed
    )


def test_workloads_are_independent_and_a_rollout_s_two_replicasets_are_one() -> None:
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100)
    pods = web_pods(2)
    other = [
        owned(f"api-77-{i}", owner="api-77", labels={"pod-template-hash": "77"}) for i in range(2)
    ]
    everything = pods + other
    assert isinstance(
        gate.admit(pods[0], policy=POLICY, workload=state_of(pods[0], everything), now=0), Allowed
    )
    assert isinstance(
        gate.admit(other[0], policy=POLICY, workload=state_of(other[0], everything), now=0), Allowed
    )
    # A pod of web's new ReplicaSet (a rollout under way) is the same workload.
    newer = owned(
        "web-9a9a-0", owner="web-9a9a", labels={"app": "web", "pod-template-hash": "9a9a"}
    )
    everything.append(newer)
    assert isinstance(
        gate.admit(newer, policy=POLICY, workload=state_of(newer, everything), now=1), WorkloadBusy
    )


def test_an_unready_pod_of_the_workload_holds_others_but_may_itself_go() -> None:
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100)
    pods = web_pods(3)
    pods[2] = owned("web-5d8f-2", ready=False)  # crash-looping, say out of memory
    held = gate.admit(pods[0], policy=POLICY, workload=state_of(pods[0], pods), now=0)
    assert isinstance(held, WorkloadBusy) and "web-5d8f-2 is not Ready" in held.message
    assert isinstance(
        gate.admit(pods[2], policy=POLICY, workload=state_of(pods[2], pods), now=0), Allowed
    )


def test_a_budget_decides_how_many_may_be_down_at_once() -> None:
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100)
    pods = web_pods(4)
    budget = {
        "metadata": {"name": "web"},
        "spec": {"selector": {"matchLabels": {"app": "web"}}, "maxUnavailable": 2},
        "status": {"disruptionsAllowed": 2},
    }
    state = state_of(pods[0], pods, budgets=[budget])
    assert state.budget == "web" and state.disruptions_allowed == 2
    assert isinstance(gate.admit(pods[0], policy=POLICY, workload=state, now=0), Allowed)
    # Terminating now, and the budget (as the API server updated it) allows one more.
    pods[0] = owned("web-5d8f-0", terminating=True)
    budget["status"] = {"disruptionsAllowed": 1}
    state = state_of(pods[1], pods, budgets=[budget])
    assert isinstance(gate.admit(pods[1], policy=POLICY, workload=state, now=1), Allowed)
    budget["status"] = {"disruptionsAllowed": 0}
    held = gate.admit(
        pods[2], policy=POLICY, workload=state_of(pods[2], pods, budgets=[budget]), now=2
    )
    assert isinstance(held, WorkloadBusy) and "PodDisruptionBudget web allows no" in held.message


@pytest.mark.parametrize(
    ("selector", "selects"),
    [
        pytest.param({"matchLabels": {"app": "web"}}, True, id="match"),
        pytest.param({"matchLabels": {"app": "api"}}, False, id="other-app"),
        pytest.param({}, True, id="empty-selects-all"),
        pytest.param(None, False, id="null-selects-none"),
    ],
)
def test_only_budgets_selecting_the_workload_s_pods_count(
    selector: dict[str, Any] | None, selects: bool
) -> None:
    pods = web_pods(2)
    budget = {"metadata": {"name": "b"}, "spec": {"selector": selector}, "status": {}}
    state = state_of(pods[0], pods, budgets=[budget])
    assert (state.budget == "b") is selects


def test_the_cluster_limit_holds_over_every_minute_with_fifty_drifted_pods() -> None:
    """50 drifted pods, each its own workload: never more than the limit in any 60 s."""
    gate = EvictionGate(per_minute=10, per_policy_per_minute=1000)
    pods = [owned(f"w{i}-0", owner=f"w{i}-h", labels={"pod-template-hash": "h"}) for i in range(50)]
    evicted_at: dict[str, float] = {}
    now = 0.0
    while len(evicted_at) < 50 and now < 600:
        for pod in pods:
            name = pod["metadata"]["name"]
            if name in evicted_at:
                continue
            decision = gate.admit(pod, policy=POLICY, workload=state_of(pod, [pod]), now=now)
            if isinstance(decision, Allowed):
                evicted_at[name] = now
            else:
                assert isinstance(decision, RateLimited) and decision.scope == "cluster"
                assert 0 < decision.retry_after <= 60
        now += 1.0
    times = sorted(evicted_at.values())
    assert len(times) == 50
    for start in times:
        assert sum(start <= t < start + 60 for t in times) <= 10
    assert times[-1] >= 4 * 60, "50 pods at 10 a minute take at least four more minutes"


def test_the_per_policy_limit_holds_while_other_policies_proceed() -> None:
    gate = EvictionGate(per_minute=100, per_policy_per_minute=2)
    pods = [owned(f"w{i}-0", owner=f"w{i}-h", labels={"pod-template-hash": "h"}) for i in range(4)]

    def admit(pod: dict[str, Any], policy: str, now: float) -> object:
        return gate.admit(pod, policy=policy, workload=state_of(pod, [pod]), now=now)

    assert isinstance(admit(pods[0], "shop/a", 0), Allowed)
    assert isinstance(admit(pods[1], "shop/a", 10), Allowed)
    limited = admit(pods[2], "shop/a", 20)
    assert isinstance(limited, RateLimited) and limited.scope == "policy"
    assert limited.retry_after == pytest.approx(40)
    assert isinstance(admit(pods[3], "shop/b", 20), Allowed), "another policy has its own"
    assert isinstance(admit(pods[2], "shop/a", 60), Allowed), "the first slot freed at 60 s"


def test_a_released_slot_does_not_count_and_frees_the_workload() -> None:
    """A 429 or a pod already gone disrupted nothing: the limit counts only evictions."""
    gate = EvictionGate(per_minute=1, per_policy_per_minute=1)
    pods = web_pods(2)
    assert isinstance(
        gate.admit(pods[0], policy=POLICY, workload=state_of(pods[0], pods), now=0), Allowed
    )
    gate.release(pods[0], policy=POLICY, now=1)
    assert isinstance(
        gate.admit(pods[1], policy=POLICY, workload=state_of(pods[1], pods), now=2), Allowed
    )
    limited = gate.admit(pods[0], policy=POLICY, workload=state_of(pods[0], pods), now=3)
    assert isinstance(limited, WorkloadBusy | RateLimited)


def test_a_scaled_down_workload_is_let_go_after_the_settle_timeout() -> None:
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100, settle_timeout=600)
    pods = web_pods(3)
    assert isinstance(
        gate.admit(pods[0], policy=POLICY, workload=state_of(pods[0], pods), now=0), Allowed
    )
    left = pods[1:2]  # evicted, then scaled from 3 to 1: fewer Ready than before, for good
    assert isinstance(
        gate.admit(left[0], policy=POLICY, workload=state_of(left[0], left), now=30), WorkloadBusy
    )
    assert isinstance(
        gate.admit(left[0], policy=POLICY, workload=state_of(left[0], left), now=600), Allowed
    )


def test_the_gate_needs_the_workload_of_the_pod_it_judges() -> None:
    gate = EvictionGate(per_minute=1, per_policy_per_minute=1)
    pod = owned("a")
    with pytest.raises(ValueError, match="Deployment/web"):
        gate.admit(pod, policy=POLICY, workload=None, now=0)


def test_limits_come_from_settings_and_the_environment() -> None:
    defaults = Settings()
    assert (
        defaults.updates.evictions_per_minute,
        defaults.updates.evictions_per_minute_per_policy,
    ) == (20, 5)
    settings = Settings.from_env(
        {
            "MEMWARDEN_UPDATE_EVICTIONS_PER_MINUTE": "7",
            "MEMWARDEN_UPDATE_EVICTIONS_PER_MINUTE_PER_POLICY": "2",
        }
    )
    gate = EvictionGate.from_settings(settings)
    assert (gate.per_minute, gate.per_policy_per_minute) == (7, 2)
    with pytest.raises(ValueError, match=r"updates\.evictions_per_minute"):
        Settings.from_env({"MEMWARDEN_UPDATE_EVICTIONS_PER_MINUTE": "0"})


def test_hostile_policies_are_bounded_by_their_own_limit_and_together_by_the_cluster_s() -> None:
    """A policy author who writes many policies over many one-pod workloads (each pod its
    own workload, so nothing is ever busy) and asks all the time gets at most
    ``per_policy_per_minute`` per policy and ``per_minute`` for all of them, in every 60 s
    (docs/security.md)."""
    gate = EvictionGate(per_minute=20, per_policy_per_minute=5)
    policies = [f"shop/hostile-{i}" for i in range(10)]
    pods = {
        policy: [
            owned(f"p{i}-{j}-0", owner=f"p{i}-{j}-h", labels={"pod-template-hash": "h"})
            for j in range(40)
        ]
        for i, policy in enumerate(policies)
    }
    evicted: list[tuple[float, str]] = []
    scopes: set[str] = set()
    for second in range(300):
        for policy in policies:
            while pods[policy]:
                pod = pods[policy][0]
                decision = gate.admit(pod, policy=policy, workload=state_of(pod, [pod]), now=second)
                if not isinstance(decision, Allowed):
                    assert isinstance(decision, RateLimited)
                    scopes.add(decision.scope)
                    break
                evicted.append((float(second), policy))
                pods[policy].pop(0)
    assert scopes == {"cluster", "policy"}, "both limits were reached"
    for start, _ in evicted:
        window = [(t, p) for t, p in evicted if start <= t < start + 60]
        assert len(window) <= 20
        for policy in policies:
            assert sum(p == policy for _, p in window) <= 5
    assert len(evicted) == 20 * 5, "300 s hold five windows of 20, and all of them are used"


@pytest.mark.parametrize(
    ("kind", "refused"),
    [
        pytest.param("Job", "owned by Job/x: an evicted Job pod fails", id="job"),
        pytest.param("Node", "owned by Node/x: a mirror (static) pod", id="mirror-pod"),
        pytest.param("StatefulSet", None, id="statefulset"),
    ],
)
def test_the_planner_never_plans_an_eviction_the_gate_would_refuse(
    kind: str, refused: str | None
) -> None:
    """Status shows a Job's or a static pod's as stuck with the reason (Wait), instead of
    an Evict that the gate would refuse at every pass."""
    import datetime as dt

    from memwarden.mutation import plan_pod
    from memwarden.selection import NamespacePolicies
    from memwarden.sizing import KubeletProfile
    from memwarden.status import pod_view
    from memwarden.updates import UpdateInputs, decide
    from memwarden_testing.builders import make_candidate

    pod = owned("p", kind=kind, owner="x", labels={"app": "checkout"})
    pod["spec"]["nodeName"] = "node-1"
    view = pod_view(pod)
    assert view is not None
    memory = {"request": "1Gi", "limit": "2Gi"}
    selection = NamespacePolicies.build(
        [make_candidate(memory=memory, update="Recreate")]
    ).select_pod(view)
    plan = plan_pod(pod=view, selection=selection, profile=KubeletProfile.defaults_for(37))
    update = decide(view=view, plan=plan, inputs=UpdateInputs(now=dt.datetime.now(dt.UTC)))
    if refused is None:
        assert update.action == "evict", update
    else:
        assert update.action == "wait" and update.stuck, update
        assert refused in update.reason


def test_precheck_spares_the_namespace_read_for_pods_of_a_workload_seen_busy() -> None:
    """Pods waiting on one workload: one of them looks (precheck None, then admit), the
    others are held without a read until ``busy_retry`` has passed."""
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100, busy_retry=5)
    pods = web_pods(4)
    pods[3] = owned("web-5d8f-3", ready=False)
    assert gate.precheck(pods[0], policy=POLICY, now=0) is None, "nothing known: look"
    # Concurrent with that look, another pod of the workload does not look too.
    looking = gate.precheck(pods[1], policy=POLICY, now=0)
    assert isinstance(looking, WorkloadBusy) and "being looked at" in looking.message
    held = gate.admit(pods[0], policy=POLICY, workload=state_of(pods[0], pods), now=0)
    assert isinstance(held, WorkloadBusy) and "web-5d8f-3 is not Ready" in held.message
    # Seen busy: the others are held without a look, and told when to ask again.
    again = gate.precheck(pods[1], policy=POLICY, now=2)
    assert isinstance(again, WorkloadBusy) and again.retry_after == pytest.approx(3)
    # The pod that alone makes it busy may still go: it looks.
    assert gate.precheck(pods[3], policy=POLICY, now=2) is None
    assert isinstance(
        gate.admit(pods[3], policy=POLICY, workload=state_of(pods[3], pods), now=2), Allowed
    )
    assert gate.precheck(pods[1], policy=POLICY, now=2.5) is not None
    assert gate.precheck(pods[1], policy=POLICY, now=7) is None, "after busy_retry: look again"


@pytest.mark.parametrize(
    ("pod", "expected"),
    [
        pytest.param(make_pod("bare"), NoController, id="bare"),
        pytest.param(
            owned("j", kind="Job", owner="x", labels={}, api_version="batch/v1"),
            NotRecreatable,
            id="job",
        ),
    ],
)
def test_precheck_refuses_without_looking(pod: dict[str, Any], expected: type) -> None:
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100)
    assert isinstance(gate.precheck(pod, policy=POLICY, now=0), expected)


def test_precheck_holds_rate_limited_pods_without_looking_and_never_allows() -> None:
    gate = EvictionGate(per_minute=100, per_policy_per_minute=1)
    first, second = (
        owned("a-0", owner="a-h", labels={"pod-template-hash": "h"}),
        owned("b-0", owner="b-h", labels={"pod-template-hash": "h"}),
    )
    assert gate.precheck(first, policy=POLICY, now=0) is None
    assert isinstance(
        gate.admit(first, policy=POLICY, workload=state_of(first, [first]), now=0), Allowed
    )
    limited = gate.precheck(second, policy=POLICY, now=10)
    assert isinstance(limited, RateLimited) and limited.retry_after == pytest.approx(50)
    assert gate.precheck(second, policy="shop/other", now=10) is None
