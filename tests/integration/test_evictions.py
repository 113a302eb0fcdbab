"""Recreate through the Eviction API on the real control plane (eviction.py).

Deployments run on a tainted node simulator; the controller-manager's ReplicaSet and
disruption controllers and the API server's eviction subresource are the real ones. The
evictions are sent as memwarden's ServiceAccount with the chart's RBAC (rbac.py), so
they also prove the rules suffice. Each pod template has a readiness gate the test sets,
so a replacement is Ready exactly when the test says (the simulator runs no probes), and
its container ignores SIGTERM, so an evicted pod stays terminating for its grace period.
"""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from memwarden.eviction import EvictionOutcome, evict, observe_workload, recreate
from memwarden.eviction_gate import EvictionGate, NoController, RateLimited, WorkloadBusy
from memwarden.kube import Kube
from memwarden_testing.cluster import api_client, ensure_namespace, wait_for
from memwarden_testing.nodesim import NodeSimulator
from memwarden_testing.operator import OPERATOR_NAMESPACE, least_privilege_kubeconfig
from memwarden_testing.workloads import (
    create_budget,
    deploy,
    disruptions_allowed,
    evicted,
    is_ready,
    make_ready,
    pods_of,
    read_pod,
    running_and_ready,
    untouched,
)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sim(devcluster: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSimulator]:
    state = tmp_path_factory.mktemp("nodesim")
    with NodeSimulator(kubeconfig=devcluster, state_dir=state, taint=True) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def warden(
    devcluster: Path, kube: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Kube:
    """The adapter as memwarden's ServiceAccount, holding exactly rbac.py's rules."""
    ensure_namespace(client.CoreV1Api(kube), OPERATOR_NAMESPACE)
    path = least_privilege_kubeconfig(
        kube, admin_kubeconfig=devcluster, workdir=tmp_path_factory.mktemp("warden")
    )
    return Kube(api_client(path))


def assert_evicted_not_deleted(kube: client.ApiClient, namespace: str, name: str) -> None:
    """Evicted (not deleted), and still terminating: the container ignores SIGTERM."""
    pod = read_pod(kube, namespace, name)
    assert pod is not None and pod["metadata"].get("deletionTimestamp"), pod
    assert evicted(pod), pod["status"].get("conditions")


def test_a_budget_holds_the_second_eviction_until_the_first_replacement_is_ready(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str, warden: Kube
) -> None:
    deploy(kube, sim, namespace, "web", replicas=3)
    create_budget(kube, namespace, "web", max_unavailable=1)
    first, second, third = running_and_ready(kube, namespace, "web", 3)
    disruptions_allowed(kube, namespace, "web", 1)

    def send(pod: dict[str, Any]) -> EvictionOutcome:
        meta = pod["metadata"]
        return asyncio.run(evict(warden, namespace=namespace, name=meta["name"], uid=meta["uid"]))

    accepted = send(first)
    assert accepted.result == "evicted", accepted
    assert_evicted_not_deleted(kube, namespace, first["metadata"]["name"])

    # The ReplicaSet made a replacement; it is not Ready (its gate is closed).
    def replacement() -> dict[str, Any] | None:
        known = {p["metadata"]["name"] for p in (first, second, third)}
        new = [p for p in pods_of(kube, namespace, "web") if p["metadata"]["name"] not in known]
        return new[0] if new else None

    new = wait_for(replacement, timeout=30, what="the replacement pod")
    assert not is_ready(new)

    # The second eviction meets the budget: 429, a retry-later outcome, nothing evicted.
    refused = send(second)
    assert refused.result == "retry_later", refused
    assert refused.retry_after and refused.retry_after > 0
    assert "disruption budget" in refused.message.lower()
    assert untouched(kube, second)
    # The gate, asked first, would not even have sent it.
    workload = asyncio.run(observe_workload(warden, second))
    assert workload is not None and workload.budget == "web"
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100)
    held = gate.admit(second, policy=f"{namespace}/p", workload=workload, now=0.0)
    assert isinstance(held, WorkloadBusy) and "PodDisruptionBudget web" in held.message

    # The replacement turns Ready: the budget allows one again, the next is accepted.
    make_ready(kube, namespace, new["metadata"]["name"])
    disruptions_allowed(kube, namespace, "web", 1)
    again = send(second)
    assert again.result == "evicted", again
    assert_evicted_not_deleted(kube, namespace, second["metadata"]["name"])
    assert untouched(kube, third)


def test_without_a_budget_the_gate_keeps_one_pod_of_a_workload_in_flight(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str, warden: Kube
) -> None:
    deploy(kube, sim, namespace, "api", replicas=2)
    first, second = running_and_ready(kube, namespace, "api", 2)
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100)
    policy = f"{namespace}/api"

    outcome = asyncio.run(recreate(warden, gate, first, policy=policy))
    assert isinstance(outcome, EvictionOutcome) and outcome.result == "evicted", outcome
    assert_evicted_not_deleted(kube, namespace, first["metadata"]["name"])

    held = asyncio.run(recreate(warden, gate, second, policy=policy))
    assert isinstance(held, WorkloadBusy), held
    assert untouched(kube, second)

    # Old pod gone, replacement Ready: the workload has settled, the second may go.
    def replaced() -> list[dict[str, Any]] | None:
        pods = pods_of(kube, namespace, "api")
        names = {p["metadata"]["name"] for p in pods}
        done = first["metadata"]["name"] not in names and len(pods) == 2
        return pods if done else None

    for pod in wait_for(replaced, timeout=60, what="the first api pod replaced"):
        if not is_ready(pod):
            make_ready(kube, namespace, pod["metadata"]["name"])

    # The gate looks again once its busy_retry has passed since it last saw the workload.
    def second_goes() -> EvictionOutcome | None:
        outcome = asyncio.run(recreate(warden, gate, second, policy=policy))
        if isinstance(outcome, WorkloadBusy):
            assert outcome.retry_after <= gate.busy_retry
            return None
        assert isinstance(outcome, EvictionOutcome), outcome
        return outcome

    outcome = wait_for(second_goes, timeout=30, interval=1, what="the second api pod evicted")
    assert outcome.result == "evicted", outcome


def test_a_bare_pod_is_refused_by_the_gate_with_its_reason_and_never_evicted(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str, warden: Kube
) -> None:
    core = client.CoreV1Api(kube)
    spec = {"terminationGracePeriodSeconds": 1, "containers": [{"name": "app", "image": "x:1"}]}
    core.create_namespaced_pod(
        namespace, {"metadata": {"name": "bare", "labels": {"app": "bare"}}, "spec": sim.pin(spec)}
    )
    wait_for(
        lambda: (
            (read_pod(kube, namespace, "bare") or {}).get("status", {}).get("phase") == "Running"
        ),
        timeout=60,
        what="the bare pod Running",
    )
    pod = read_pod(kube, namespace, "bare")
    assert pod is not None
    gate = EvictionGate(per_minute=100, per_policy_per_minute=100)

    decision = asyncio.run(recreate(warden, gate, pod, policy=f"{namespace}/p"))
    assert isinstance(decision, NoController), decision
    assert decision.permanent and "would not come back" in decision.message
    assert untouched(kube, pod)
    conditions = {
        c["type"] for c in (read_pod(kube, namespace, "bare") or {})["status"]["conditions"]
    }
    assert "DisruptionTarget" not in conditions


def test_the_rate_limits_hold_on_the_real_path(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str, warden: Kube
) -> None:
    """Four one-pod workloads, three under policy a (at most 2 a minute), one under b."""
    apps = ["a0", "a1", "a2", "b0"]
    for app in apps:
        deploy(kube, sim, namespace, app, replicas=1)
    pods = {app: running_and_ready(kube, namespace, app, 1)[0] for app in apps}
    gate = EvictionGate(per_minute=100, per_policy_per_minute=2)
    clock = itertools.count(1000.0, 1.0).__next__  # a virtual minute, far from running out

    async def all_at_once() -> list[object]:
        return await asyncio.gather(
            *(
                recreate(warden, gate, pods[app], policy=f"{namespace}/{app[0]}", clock=clock)
                for app in apps
            )
        )

    results = dict(zip(apps, asyncio.run(all_at_once()), strict=True))
    evicted = sorted(a for a, r in results.items() if getattr(r, "result", None) == "evicted")
    limited = [a for a, r in results.items() if isinstance(r, RateLimited)]
    assert len(limited) == 1 and limited[0].startswith("a"), results
    assert evicted == sorted(set(apps) - set(limited)), results
    limit = results[limited[0]]
    assert isinstance(limit, RateLimited) and limit.scope == "policy"
    assert 0 < limit.retry_after <= 60
    assert untouched(kube, pods[limited[0]])
    for app in evicted:
        assert_evicted_not_deleted(kube, namespace, pods[app]["metadata"]["name"])
