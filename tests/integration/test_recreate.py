"""update: Recreate end to end: the operator's update loop, its eviction gate, the real
control plane's controllers and PodDisruptionBudgets, pods on the node simulator.

Pods are created before their policy, so they run without it (drifted); the policy's
update mode then brings them to it by eviction, and the webhook admits each replacement
with the policy. Replacements stay not Ready until the test opens their readiness gate
(memwarden_testing.workloads), which is how the tests see what the operator does while a
replacement is not Ready.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from memwarden_testing.builders import make_policy, make_policy_spec
from memwarden_testing.cluster import apiserver_requests, kubectl, policy_status, wait_for
from memwarden_testing.nodesim import NodeSimulator
from memwarden_testing.operator import OperatorProcess
from memwarden_testing.workloads import (
    SLEEPER,
    create_budget,
    deploy,
    disruptions_allowed,
    evicted,
    is_ready,
    is_running,
    make_ready,
    pods_of,
    read_pod,
    running_and_ready,
    untouched,
)

pytestmark = pytest.mark.integration

#: Passes every second (5 s by default), and the default eviction limits (20, 5 a policy).
UPDATE_ENV = {"MEMWARDEN_UPDATE_INTERVAL_SECONDS": "1"}
MEMORY = {"request": "32Mi", "limit": "64Mi"}
FLEET = {"fleet": "f"}


@pytest.fixture(scope="module")
def sim(devcluster: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSimulator]:
    state = tmp_path_factory.mktemp("nodesim")
    with NodeSimulator(kubeconfig=devcluster, state_dir=state, taint=True) as simulator:
        yield simulator


def restarted(operator: OperatorProcess, env: dict[str, str]) -> None:
    operator.extra_env.update(env)
    operator.stop()
    operator.start()


@pytest.fixture(scope="module")
def updater(operator: OperatorProcess) -> Iterator[OperatorProcess]:
    """The session's operator with a 1 s update loop; restored after the module."""
    saved = dict(operator.extra_env)
    restarted(operator, UPDATE_ENV)
    yield operator
    operator.extra_env = saved
    operator.stop()
    operator.start()


@pytest.fixture
def warden(updater: OperatorProcess) -> OperatorProcess:
    """The update operator, running (with the test's env as the module set it)."""
    if updater.process is None or updater.process.poll() is not None:
        updater.start()
    return updater


def apply_policy(
    devcluster: Path, namespace: str, name: str, *, match_labels: dict[str, str]
) -> None:
    spec = make_policy_spec(match_labels=match_labels, memory=MEMORY, update="Recreate")
    policy = make_policy(name, namespace=namespace, spec=spec)
    kubectl(devcluster, "apply", "-f", "-", input=yaml.safe_dump(policy))


def has_policy(pod: dict[str, Any]) -> bool:
    """Admitted with the policy: the container's memory is the policy's."""
    resources = pod["spec"]["containers"][0].get("resources") or {}
    request = (resources.get("requests") or {}).get("memory")
    limit = (resources.get("limits") or {}).get("memory")
    return (request, limit) == (MEMORY["request"], MEMORY["limit"])


def pending_reasons(kube: client.ApiClient, namespace: str, policy: str) -> dict[str, str]:
    status = policy_status(kube, namespace, policy)
    return {p["pod"]: p["reason"] for p in status.get("pendingUpdates") or []}


def stays(predicate: Callable[[], bool], *, seconds: float, what: str) -> None:
    """``predicate`` holds at every look for ``seconds`` (several update passes)."""
    until = time.monotonic() + seconds
    while time.monotonic() < until:
        assert predicate(), what
        time.sleep(0.25)


def follow_one_at_a_time(
    kube: client.ApiClient, namespace: str, app: str, originals: list[dict[str, Any]]
) -> None:
    """Watch the operator recreate every pod of ``app``: never two down at once, each an
    eviction, nothing evicted while a replacement is not Ready (held so for several update
    passes, then let Ready), each replacement admitted with the policy."""
    count = len(originals)
    original_uids = {p["metadata"]["uid"] for p in originals}
    deadline = time.monotonic() + 60 * count
    replaced: list[str] = []
    while time.monotonic() < deadline:
        pods = pods_of(kube, namespace, app)
        healthy = [p for p in pods if is_running(p) and is_ready(p)]
        down = [p["metadata"]["name"] for p in pods if p not in healthy]
        assert len(healthy) >= count - 1, f"more than one pod of {app} down at once: {down}"
        for pod in pods:
            if pod["metadata"]["uid"] in original_uids and pod["metadata"].get("deletionTimestamp"):
                assert evicted(pod), "an eviction, not a delete"
        fresh = [p for p in pods if p["metadata"]["uid"] not in original_uids and is_running(p)]
        waiting = [p for p in fresh if not is_ready(p)]
        if waiting:
            (new,) = waiting
            assert has_policy(new), "the replacement is admitted with the policy"
            still = [p for p in originals if untouched(kube, p)]
            stays(
                lambda still=still: all(untouched(kube, p) for p in still),
                seconds=3.5,
                what="a pod was evicted while the last replacement was not Ready",
            )
            make_ready(kube, namespace, new["metadata"]["name"])
            replaced.append(new["metadata"]["name"])
        if len(pods) == count and len(fresh) == count and all(map(is_ready, fresh)):
            break
        time.sleep(0.25)
    else:
        raise AssertionError(f"{app} not recreated in time: {pods_of(kube, namespace, app)}")
    assert len(replaced) == count
    assert all(map(has_policy, pods_of(kube, namespace, app)))


def test_recreate_evicts_one_pod_at_a_time_within_the_budget_and_replacements_get_the_policy(
    sim: NodeSimulator,
    kube: client.ApiClient,
    devcluster: Path,
    namespace: str,
    warden: OperatorProcess,
) -> None:
    deploy(kube, sim, namespace, "web", replicas=3)
    originals = running_and_ready(kube, namespace, "web", 3)
    assert not any(map(has_policy, originals)), "created before the policy: drifted"
    create_budget(kube, namespace, "web", max_unavailable=1)
    disruptions_allowed(kube, namespace, "web", 1)
    apply_policy(devcluster, namespace, "web", match_labels={"app": "web"})
    follow_one_at_a_time(kube, namespace, "web", originals)
    wait_for(
        lambda: policy_status(kube, namespace, "web").get("compliantPods") == 3,
        timeout=30,
        what="policy web: 3 compliant pods",
    )


def test_without_a_budget_recreate_still_replaces_one_pod_of_a_workload_at_a_time(
    sim: NodeSimulator,
    kube: client.ApiClient,
    devcluster: Path,
    namespace: str,
    warden: OperatorProcess,
) -> None:
    """No PodDisruptionBudget: the gate's own rule (one pod of the Deployment in flight
    until its replacement is Ready) is all that holds the second eviction."""
    deploy(kube, sim, namespace, "api", replicas=3)
    originals = running_and_ready(kube, namespace, "api", 3)
    apply_policy(devcluster, namespace, "api", match_labels={"app": "api"})
    follow_one_at_a_time(kube, namespace, "api", originals)


def test_a_bare_pod_under_recreate_is_not_evicted_and_is_reported(
    sim: NodeSimulator,
    kube: client.ApiClient,
    devcluster: Path,
    namespace: str,
    warden: OperatorProcess,
) -> None:
    spec = {
        "terminationGracePeriodSeconds": 1,
        "containers": [{"name": "app", "image": "example.com/app:1", "command": SLEEPER}],
    }
    client.CoreV1Api(kube).create_namespaced_pod(
        namespace,
        {"metadata": {"name": "bare", "labels": {"group": "g"}}, "spec": sim.pin(spec)},
    )
    # Beside it, a Deployment's pod under the same policy: there the loop does act.
    deploy(
        kube,
        sim,
        namespace,
        "owned",
        replicas=1,
        command=SLEEPER,
        gated=False,
        labels={"group": "g"},
    )
    wait_for(
        lambda: is_running(read_pod(kube, namespace, "bare") or {"metadata": {}}),
        timeout=60,
        what="the bare pod Running",
    )
    bare = read_pod(kube, namespace, "bare")
    assert bare is not None
    (owned,) = running_and_ready(kube, namespace, "owned", 1)
    apply_policy(devcluster, namespace, "g", match_labels={"group": "g"})

    def owned_replaced() -> bool:
        pods = [p for p in pods_of(kube, namespace, "owned") if is_running(p)]
        return (
            len(pods) == 1
            and pods[0]["metadata"]["uid"] != owned["metadata"]["uid"]
            and has_policy(pods[0])
        )

    wait_for(owned_replaced, timeout=60, what="the Deployment's pod recreated with the policy")
    reason = wait_for(
        lambda: pending_reasons(kube, namespace, "g").get("bare"),
        timeout=30,
        what="the bare pod reported in pendingUpdates",
    )
    assert "no controller" in reason
    assert untouched(kube, bare)
    after = read_pod(kube, namespace, "bare") or {}
    assert not evicted(after)


def test_the_rate_limit_holds_with_fifty_drifted_pods(
    sim: NodeSimulator,
    kube: client.ApiClient,
    devcluster: Path,
    namespace: str,
    warden: OperatorProcess,
) -> None:
    """50 one-pod Deployments (50 workloads, so only the rate limits hold them) under one
    Recreate policy: 5 evictions in the first minute (the per-policy default), the next
    only once that minute has passed."""
    apps = [f"w{i:02d}" for i in range(50)]
    for app in apps:
        deploy(kube, sim, namespace, app, replicas=1, command=SLEEPER, gated=False, labels=FLEET)
    core = client.CoreV1Api(kube)

    def all_running() -> dict[str, dict[str, Any]] | None:
        listed = core.list_namespaced_pod(namespace, label_selector="fleet=f").items
        pods = [kube.sanitize_for_serialization(p) for p in listed]
        running = {p["metadata"]["labels"]["app"]: p for p in pods if is_running(p)}
        return running if len(running) == 50 else None

    originals = wait_for(all_running, timeout=240, interval=1, what="50 running pods")
    held_before = warden.metric("memwarden_evictions_total", outcome="rate_limited")
    apply_policy(devcluster, namespace, "fleet", match_labels=FLEET)

    def gone() -> list[str]:
        return [app for app, pod in originals.items() if not untouched(kube, pod)]

    wait_for(lambda: gone() or None, timeout=60, what="the first evictions")
    # For most of that minute (dozens of 1 s update passes), five and no more.
    stays(lambda: len(gone()) <= 5, seconds=45, what="more than 5 evictions within a minute")
    assert len(gone()) == 5, gone()
    assert warden.metric("memwarden_evictions_total", outcome="rate_limited") > held_before
    # Once the minute has passed, the next ones go.
    wait_for(lambda: len(gone()) > 5, timeout=45, interval=1, what="evictions after the minute")
    assert len(gone()) <= 10


def test_the_kill_switch_stops_evictions_and_says_so(
    sim: NodeSimulator,
    kube: client.ApiClient,
    devcluster: Path,
    namespace: str,
    warden: OperatorProcess,
) -> None:
    restarted(warden, {"MEMWARDEN_UPDATES_ENABLED": "false"})
    try:
        deploy(kube, sim, namespace, "quiet", replicas=1, command=SLEEPER, gated=False)
        (pod,) = running_and_ready(kube, namespace, "quiet", 1)
        apply_policy(devcluster, namespace, "quiet", match_labels={"app": "quiet"})
        name = pod["metadata"]["name"]
        reason = wait_for(
            lambda: pending_reasons(kube, namespace, "quiet").get(name),
            timeout=30,
            what="the pod reported pending",
        )
        assert "kill switch" in reason
        stays(lambda: untouched(kube, pod), seconds=4, what="evicted with updates off")
    finally:
        restarted(warden, {"MEMWARDEN_UPDATES_ENABLED": "true"})
    # Switched back on, the same pod is recreated: the switch was what held it.
    wait_for(lambda: not untouched(kube, pod), timeout=60, what="the pod evicted with updates on")


def test_pods_waiting_on_one_workload_cost_one_read_of_the_namespace_per_look(
    sim: NodeSimulator,
    kube: client.ApiClient,
    devcluster: Path,
    namespace: str,
    warden: OperatorProcess,
) -> None:
    """Ten drifted pods of one Deployment, the first replacement held not Ready: the nine
    waiting are held by the gate's memory, not by reading their namespace each (each read
    is a pod list and a budget list; only those reads list budgets, so the API server's
    count of budget lists is the count of reads)."""
    deploy(kube, sim, namespace, "many", replicas=10, command=SLEEPER)
    originals = running_and_ready(kube, namespace, "many", 10)
    apply_policy(devcluster, namespace, "many", match_labels={"app": "many"})
    uids = {p["metadata"]["uid"] for p in originals}

    def held_replacement() -> dict[str, Any] | None:
        fresh = [
            p
            for p in pods_of(kube, namespace, "many")
            if p["metadata"]["uid"] not in uids and is_running(p)
        ]
        return fresh[0] if fresh else None

    new = wait_for(held_replacement, timeout=60, what="the first replacement running")
    assert not is_ready(new)
    before = apiserver_requests(kube, resource="poddisruptionbudgets", verb="LIST")
    stays(
        lambda: sum(untouched(kube, p) for p in originals) == 9,
        seconds=15,
        what="another pod evicted while the first replacement was not Ready",
    )
    reads = apiserver_requests(kube, resource="poddisruptionbudgets", verb="LIST") - before
    # A look every busy_retry (5 s) at most, for nine waiting pods over 15 s: about three
    # (reading for each waiting pod at every retry would be about 27).
    assert reads <= 6, f"{reads} reads of the namespace in 15 s"
    make_ready(kube, namespace, new["metadata"]["name"])


def test_an_operator_restart_mid_recreate_neither_repeats_nor_forgets(
    sim: NodeSimulator,
    kube: client.ApiClient,
    devcluster: Path,
    namespace: str,
    warden: OperatorProcess,
) -> None:
    """Restarted while a replacement is not Ready, the operator (its gate's memory gone)
    still sees the workload busy in the pods themselves, evicts nothing more until the
    replacement is Ready, then finishes the rollout: each pod evicted once."""
    deploy(kube, sim, namespace, "roll", replicas=3)
    originals = running_and_ready(kube, namespace, "roll", 3)
    apply_policy(devcluster, namespace, "roll", match_labels={"app": "roll"})
    uids = {p["metadata"]["uid"] for p in originals}

    def held_replacement() -> dict[str, Any] | None:
        fresh = [
            p
            for p in pods_of(kube, namespace, "roll")
            if p["metadata"]["uid"] not in uids and is_running(p)
        ]
        return fresh[0] if fresh else None

    wait_for(held_replacement, timeout=60, what="the first replacement running")
    warden.stop()
    warden.start()
    still = [p for p in originals if untouched(kube, p)]
    assert len(still) == 2
    stays(
        lambda: all(untouched(kube, p) for p in still),
        seconds=5,
        what="evicted after the restart while the replacement was not Ready",
    )
    follow_one_at_a_time(kube, namespace, "roll", originals)
