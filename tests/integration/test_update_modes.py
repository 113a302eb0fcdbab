"""Update modes on the real control plane: running Deployments brought to a changed policy.

Each test runs its own operator (``memwarden run``) as memwarden's ServiceAccount with the
chart's RBAC (rbac.py: ``pods/resize patch``, ``pods/eviction create``), watching only the
test's namespace, with its webhook registered so replacements are admitted with the policy.
Pods run on a tainted node simulator; the real v1.37 API server validates every resize
(``pods/resize``) and every eviction, the real controller-manager recreates evicted pods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from memwarden.api import APPLIED_ANNOTATION
from memwarden_testing.builders import make_policy, make_policy_spec
from memwarden_testing.cluster import ensure_namespace, kubectl, policy_status, wait_for
from memwarden_testing.nodesim import NodeSimulator
from memwarden_testing.operator import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    least_privilege_kubeconfig,
    operators_paused,
)
from memwarden_testing.prometheus import (
    ContainerSeries,
    PrometheusServer,
    SeriesExporter,
    flat,
)
from memwarden_testing.workloads import create_deployment

pytestmark = pytest.mark.integration

GO90 = {"memoryLimit": "90%"}
SMALL = {"request": "64Mi", "limit": "128Mi"}
BIGGER = {"request": "128Mi", "limit": "256Mi"}


@pytest.fixture(scope="module")
def sim(devcluster: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSimulator]:
    with NodeSimulator(
        kubeconfig=devcluster, state_dir=tmp_path_factory.mktemp("nodesim"), taint=True
    ) as simulator:
        yield simulator


@pytest.fixture(scope="module")
def identity(crds: Path, kube: client.ApiClient, tmp_path_factory: pytest.TempPathFactory) -> Path:
    ensure_namespace(client.CoreV1Api(kube), OPERATOR_NAMESPACE)
    return least_privilege_kubeconfig(
        kube, admin_kubeconfig=crds, workdir=tmp_path_factory.mktemp("identity")
    )


@pytest.fixture
def start_operator(
    crds: Path, identity: Path, namespace: str, tmp_path: Path
) -> Iterator[Callable[..., OperatorProcess]]:
    """Starts this test's operator (``env``: more settings); stopped and unregistered after.

    Every other operator (the session's, which watches the whole cluster) is paused for
    the test: two controllers updating the same pods would hide what this one does (the
    session's resized the kill-switch test's pods in CI)."""
    started: list[OperatorProcess] = []

    def start(**env: str) -> OperatorProcess:
        process = OperatorProcess(
            kubeconfig=crds,
            workdir=tmp_path,
            identity=identity,
            extra_env={"MEMWARDEN_UPDATE_INTERVAL_SECONDS": "0.5", **env},
            extra_args=[f"--namespace={namespace}"],
        )
        ca_pem = process.make_certificates()
        process.start()
        process.register_webhook(ca_pem)
        started.append(process)
        return process

    with operators_paused():
        yield start
        for process in started:
            process.stop()
            kubectl(
                crds,
                "delete",
                "mutatingwebhookconfiguration",
                process.webhook_name,
                "--ignore-not-found",
            )


def apply_policy(crds: Path, namespace: str, **spec: Any) -> None:
    body = make_policy(
        "web", namespace=namespace, spec=make_policy_spec(match_labels={"app": "web"}, **spec)
    )
    kubectl(crds, "apply", "-f", "-", input=yaml.safe_dump(body))


def deploy(
    kube: client.ApiClient,
    sim: NodeSimulator,
    namespace: str,
    name: str,
    *,
    resources: dict[str, Any] | None = None,
    replicas: int = 3,
    memory_resize: str | None = None,
) -> None:
    container: dict[str, Any] = {"name": "app", "image": "example.com/app:1"}
    if resources:
        container["resources"] = resources
    if memory_resize:
        container["resizePolicy"] = [{"resourceName": "memory", "restartPolicy": memory_resize}]
    spec = sim.pin({"terminationGracePeriodSeconds": 1, "containers": [container]})
    labels = {"app": "web", "deployment": name}
    create_deployment(kube, namespace, name, replicas=replicas, labels=labels, spec=spec)


def pods(kube: client.ApiClient, namespace: str, deployment: str) -> list[dict[str, Any]]:
    """The deployment's pods that are not terminating, as dicts."""
    found = client.CoreV1Api(kube).list_namespaced_pod(
        namespace, label_selector=f"deployment={deployment}"
    )
    serialised = client.ApiClient().sanitize_for_serialization(found.items)
    return [p for p in serialised if not p["metadata"].get("deletionTimestamp")]


def running(
    kube: client.ApiClient, namespace: str, deployment: str, n: int = 3
) -> list[dict[str, Any]]:
    """Wait for ``n`` Ready pods of the deployment; returns them."""

    def ready() -> list[dict[str, Any]] | None:
        found = pods(kube, namespace, deployment)
        ok = [
            p
            for p in found
            if any(
                c["type"] == "Ready" and c["status"] == "True"
                for c in p["status"].get("conditions") or []
            )
        ]
        return ok if len(ok) == n == len(found) else None

    return wait_for(ready, timeout=90, what=f"{n} Ready pods of {deployment}")


def memory(pod: dict[str, Any]) -> tuple[str | None, str | None]:
    resources = pod["spec"]["containers"][0].get("resources") or {}
    return (resources.get("requests") or {}).get("memory"), (resources.get("limits") or {}).get(
        "memory"
    )


def env(pod: dict[str, Any], name: str) -> str | None:
    return next(
        (
            e.get("value")
            for e in pod["spec"]["containers"][0].get("env") or []
            if e["name"] == name
        ),
        None,
    )


def restarts(pod: dict[str, Any]) -> int:
    return int(pod["status"]["containerStatuses"][0]["restartCount"])


def status_when(
    kube: client.ApiClient,
    namespace: str,
    check: Callable[[dict[str, Any]], bool],
    what: str,
    timeout: float = 60,
) -> dict[str, Any]:
    seen: list[dict[str, Any] | None] = [None]

    def matching() -> dict[str, Any] | None:
        seen[0] = policy_status(kube, namespace, "web")
        return seen[0] if seen[0] and check(seen[0]) else None

    try:
        return wait_for(matching, timeout=timeout, what=what)
    except AssertionError as exc:  # say what the status was, not just "False"
        raise AssertionError(f"{exc}; the policy's status then: {seen[0]!r}") from None


def passes(process: OperatorProcess, more: int) -> None:
    """Wait until the update loop has made ``more`` passes from now: what it would do, it
    has had the chance to do."""
    start = process.metric("memwarden_update_passes_total")
    wait_for(
        lambda: process.metric("memwarden_update_passes_total") >= start + more,
        timeout=30,
        what=f"{more} update passes",
    )


def reasons(kube: client.ApiClient, namespace: str) -> list[tuple[str, str, str]]:
    """(reason, pod, message) of every Event in the namespace."""
    events = client.CoreV1Api(kube).list_namespaced_event(namespace).items
    return [(e.reason, e.involved_object.name, e.message or "") for e in events]


def test_in_place_resizes_all_three_without_restarts_and_reports_gomemlimit_stale(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    warden = start_operator()
    apply_policy(crds, namespace, memory=SMALL, go=GO90)
    status_when(kube, namespace, lambda s: "conditions" in s, "policy reconciled")
    deploy(kube, sim, namespace, "web")
    before = running(kube, namespace, "web")
    assert {memory(p) for p in before} == {("64Mi", "128Mi")}
    assert {env(p, "GOMEMLIMIT") for p in before} == {"115MiB"}
    names = {p["metadata"]["name"] for p in before}

    apply_policy(crds, namespace, memory=BIGGER, go=GO90, update="InPlace")

    def resized() -> list[dict[str, Any]] | None:
        found = pods(kube, namespace, "web")
        return found if {memory(p) for p in found} == {("128Mi", "256Mi")} else None

    after = wait_for(resized, timeout=60, what="all three pods resized")
    assert {p["metadata"]["name"] for p in after} == names, "resized in place, not recreated"
    assert [restarts(p) for p in after] == [0, 0, 0]
    assert {env(p, "GOMEMLIMIT") for p in after} == {"115MiB"}, "env cannot change in place"
    wait_for(
        lambda: all(
            (p["status"]["containerStatuses"][0].get("resources") or {})
            .get("limits", {})
            .get("memory")
            == "256Mi"
            for p in pods(kube, namespace, "web")
        ),
        what="the node reports the new limit",
    )
    # The node reports a resize in progress (PodResizeInProgress) before it reports it
    # done, and the operator's status follows: wait for the status after the last one.
    status = status_when(
        kube,
        namespace,
        lambda s: (
            s.get("updatedPods") == 3
            and s.get("staleRuntimePods") == 3
            and s.get("pendingPods", 0) == 0
        ),
        "updated 3, stale runtime 3, none pending",
    )
    assert sorted(status["staleRuntimePodNames"]) == sorted(names)
    updated = next(c for c in status["conditions"] if c["type"] == "Updated")
    assert (updated["status"], updated["reason"]) == ("True", "UpToDate")
    told = wait_for(
        lambda: (
            {pod for reason, pod, _ in reasons(kube, namespace) if reason == "StaleRuntime"}
            == names
            and reasons(kube, namespace)
        ),
        what="a StaleRuntime Event on each pod",
    )
    resizing = [m for reason, _, m in told if reason == "Resizing"]
    assert len(resizing) == 3 and all("app: limit 128Mi -> 256Mi" in m for m in resizing)
    stale = next(m for reason, _, m in told if reason == "StaleRuntime")
    assert "GOMEMLIMIT 115MiB, policy wants 230MiB" in stale
    assert warden.metric("memwarden_resizes_total", outcome="accepted") == 3


def test_in_place_reports_an_injected_node_old_space_stale_and_a_jvm_percentage_not(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    """NODE_OPTIONS carries a number of MiB (stale after a resize); -XX:MaxRAMPercentage
    without memory.high is applied by the JVM to the new memory.max (never stale)."""
    runtimes = {"jvm": {"maxRAMPercentage": 70}, "node": {"maxOldSpaceSize": "75%"}}
    start_operator()
    apply_policy(crds, namespace, memory=SMALL, **runtimes)
    status_when(kube, namespace, lambda s: "conditions" in s, "policy reconciled")
    deploy(kube, sim, namespace, "web")
    before = running(kube, namespace, "web")
    assert {env(p, "NODE_OPTIONS") for p in before} == {"--max-old-space-size=96"}
    assert {env(p, "JAVA_TOOL_OPTIONS") for p in before} == {"-XX:MaxRAMPercentage=70"}
    names = {p["metadata"]["name"] for p in before}

    apply_policy(crds, namespace, memory=BIGGER, update="InPlace", **runtimes)
    status = status_when(
        kube,
        namespace,
        lambda s: s.get("updatedPods") == 3 and s.get("staleRuntimePods") == 3,
        "updated 3, stale runtime 3",
    )
    assert sorted(status["staleRuntimePodNames"]) == sorted(names)
    stale = wait_for(
        lambda: [m for reason, _, m in reasons(kube, namespace) if reason == "StaleRuntime"],
        what="StaleRuntime Events",
    )
    wanted = "app: NODE_OPTIONS has --max-old-space-size=96, policy wants --max-old-space-size=192"
    assert all(m.startswith(f"{wanted}: env cannot change in place") for m in stale), stale


GUARANTEED = {
    "requests": {"cpu": "100m", "memory": "128Mi"},
    "limits": {"cpu": "100m", "memory": "128Mi"},
}


def test_a_guaranteed_pod_the_policy_would_make_burstable_is_not_resized(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    warden = start_operator()
    deploy(kube, sim, namespace, "web", resources=GUARANTEED, replicas=1)
    [pod] = running(kube, namespace, "web", 1)
    assert pod["status"]["qosClass"] == "Guaranteed"
    apply_policy(crds, namespace, memory=BIGGER, update="InPlace")

    status = status_when(
        kube,
        namespace,
        lambda s: any(
            c["type"] == "Updated" and c["reason"] == "Stuck" for c in s.get("conditions") or []
        ),
        "the Updated condition says Stuck",
    )
    [pending] = status["pendingUpdates"]
    assert pending["action"] == "Wait"
    assert "QoS class would change from Guaranteed to Burstable" in pending["reason"]
    wait_for(
        lambda: any(
            reason == "UpdateBlocked" and "Guaranteed to Burstable" in message
            for reason, _, message in reasons(kube, namespace)
        ),
        what="an UpdateBlocked Event on the pod",
    )
    passes(warden, 3)
    [after] = pods(kube, namespace, "web")
    assert memory(after) == ("128Mi", "128Mi")
    assert warden.metric("memwarden_resizes_total") == 0


def test_in_place_or_recreate_resizes_where_it_can_and_evicts_where_qos_would_change(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator()
    deploy(
        kube,
        sim,
        namespace,
        "burst",
        resources={"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}},
        replicas=2,
    )
    deploy(kube, sim, namespace, "guar", resources=GUARANTEED, replicas=1)
    burst = {p["metadata"]["name"] for p in running(kube, namespace, "burst", 2)}
    [guaranteed] = running(kube, namespace, "guar", 1)

    apply_policy(crds, namespace, memory=BIGGER, update="InPlaceOrRecreate")

    def settled() -> bool:
        b, g = pods(kube, namespace, "burst"), pods(kube, namespace, "guar")
        return (
            {memory(p) for p in b} == {("128Mi", "256Mi")}
            and len(g) == 1
            and memory(g[0]) == ("128Mi", "256Mi")
        )

    wait_for(settled, timeout=90, what="burst resized, guar recreated")
    assert {p["metadata"]["name"] for p in pods(kube, namespace, "burst")} == burst
    [replacement] = running(kube, namespace, "guar", 1)
    assert replacement["metadata"]["name"] != guaranteed["metadata"]["name"]
    assert replacement["status"]["qosClass"] == "Burstable"
    assert APPLIED_ANNOTATION in replacement["metadata"]["annotations"], "admitted with the policy"
    evicting = [m for reason, pod, m in reasons(kube, namespace) if reason == "Evicting"]
    assert (
        len(evicting) == 1 and "QoS class would change from Guaranteed to Burstable" in evicting[0]
    )


def test_in_place_or_recreate_evicts_when_the_injected_gomemlimit_exceeds_the_new_limit(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    """And an operator restart in the middle of that rollout neither evicts a pod twice nor
    forgets one: what was done is read from the pods."""
    warden = start_operator()
    apply_policy(crds, namespace, memory=BIGGER, go=GO90)
    status_when(kube, namespace, lambda s: "conditions" in s, "policy reconciled")
    deploy(kube, sim, namespace, "web")
    originals = {p["metadata"]["name"] for p in running(kube, namespace, "web")}

    apply_policy(
        crds,
        namespace,
        memory={"request": "96Mi", "limit": "192Mi"},
        go=GO90,
        update="InPlaceOrRecreate",
    )
    wait_for(
        lambda: originals - {p["metadata"]["name"] for p in pods(kube, namespace, "web")},
        what="the first pod evicted",
    )
    warden.stop()  # mid-rollout: one pod at a time, so two are still to go
    warden.start()

    def replaced() -> list[dict[str, Any]] | None:
        found = pods(kube, namespace, "web")
        names = {p["metadata"]["name"] for p in found}
        done = {memory(p) for p in found} == {("96Mi", "192Mi")}
        return found if len(found) == 3 and done and not names & originals else None

    # A replacement the ReplicaSet made while the operator was down was admitted without
    # the policy (failurePolicy Ignore): it is brought to the policy too.
    final = wait_for(replaced, timeout=180, what="every pod replaced with the policy")
    assert {env(p, "GOMEMLIMIT") for p in final} == {"172MiB"}, "the replacements' own"
    evicted = [pod for reason, pod, _ in reasons(kube, namespace) if reason == "Evicting"]
    assert set(evicted) >= originals
    assert len(evicted) == len(set(evicted)), "no pod evicted twice"
    messages = [
        m
        for reason, pod, m in reasons(kube, namespace)
        if reason == "Evicting" and pod in originals
    ]
    assert all("GOMEMLIMIT 230Mi would be above its new limit 192Mi" in m for m in messages)
    running(kube, namespace, "web")
    status = status_when(
        kube, namespace, lambda s: s.get("compliantPods") == 3, "three compliant pods"
    )
    assert (status.get("pendingPods", 0), status.get("staleRuntimePods", 0)) == (0, 0)


def test_audit_changes_nothing_and_status_says_what_would_happen(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    warden = start_operator()
    deploy(
        kube,
        sim,
        namespace,
        "web",
        resources={"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}},
    )
    names = {p["metadata"]["name"] for p in running(kube, namespace, "web")}
    apply_policy(crds, namespace, memory=BIGGER, update="InPlace", mode="Audit")

    # Until the operator's index sees all three running, one may wait for that instead.
    status = status_when(
        kube,
        namespace,
        lambda s: [p["action"] for p in s.get("pendingUpdates") or []] == ["Resize"] * 3,
        "three pods that would be resized",
    )
    assert {p["pod"] for p in status["pendingUpdates"]} == names
    assert all("app: limit 128Mi -> 256Mi" in p["reason"] for p in status["pendingUpdates"])
    updated = next(c for c in status["conditions"] if c["type"] == "Updated")
    assert (updated["status"], updated["reason"]) == ("False", "Audit")
    passes(warden, 3)
    assert {memory(p) for p in pods(kube, namespace, "web")} == {("64Mi", "128Mi")}
    assert warden.metric("memwarden_resizes_total") == 0


def test_the_kill_switch_stops_updates(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    warden = start_operator(MEMWARDEN_UPDATES_ENABLED="false")
    deploy(
        kube,
        sim,
        namespace,
        "web",
        resources={"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}},
    )
    running(kube, namespace, "web")
    apply_policy(crds, namespace, memory=BIGGER, update="InPlace")

    # A pod the operator's index still sees starting waits with that reason first; once
    # all three run there, each waits on the kill switch alone.
    def held_by_the_switch(status: dict[str, Any]) -> bool:
        pending = status.get("pendingUpdates") or []
        return len(pending) == 3 and all(
            p["action"] == "Wait"
            and p["reason"].startswith("updates are off (operator kill switch)")
            for p in pending
        )

    status_when(kube, namespace, held_by_the_switch, "three pods held by the kill switch")
    passes(warden, 3)
    assert {memory(p) for p in pods(kube, namespace, "web")} == {("64Mi", "128Mi")}
    assert warden.metric("memwarden_resizes_total") == 0

    warden.stop()
    warden.extra_env["MEMWARDEN_UPDATES_ENABLED"] = "true"
    warden.start()
    wait_for(
        lambda: {memory(p) for p in pods(kube, namespace, "web")} == {("128Mi", "256Mi")},
        timeout=60,
        what="resized once the switch is on",
    )


def test_a_resize_beyond_the_nodes_allocatable_is_refused_reported_and_not_forced(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    """The v1.37 API server refuses a resize above the node's allocatable (8Gi): memwarden
    reports the refusal, backs off, and InPlace never evicts."""
    warden = start_operator()
    small = {"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    deploy(kube, sim, namespace, "web", resources=small, replicas=1)
    [pod] = running(kube, namespace, "web", 1)
    apply_policy(crds, namespace, memory={"request": "16Gi", "limit": "16Gi"}, update="InPlace")

    status = status_when(
        kube,
        namespace,
        lambda s: any(
            "the API server refused the resize" in p["reason"] and "allocatable" in p["reason"]
            for p in s.get("pendingUpdates") or []
        ),
        "the refusal reported",
    )
    updated = next(c for c in status["conditions"] if c["type"] == "Updated")
    assert (updated["status"], updated["reason"]) == ("False", "Stuck")
    passes(warden, 10)
    refused = warden.metric("memwarden_resizes_total", outcome="refused")
    assert 1 <= refused <= 4, f"backoff: {refused} attempts in 10 passes of 0.5 s"
    [after] = pods(kube, namespace, "web")
    assert after["metadata"]["name"] == pod["metadata"]["name"], "not evicted"
    assert memory(after) == ("64Mi", "128Mi")
    assert any(reason == "ResizeRefused" for reason, _, _ in reasons(kube, namespace))


def test_a_deferred_resize_waits_in_place_and_is_evicted_by_in_place_or_recreate(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    """Two pods asking 5Gi each on an 8Gi node: the kubelet takes one resize and defers
    the other (PodResizePending, Deferred). InPlace waits and says so; InPlaceOrRecreate
    evicts the deferred pod once it has waited update_deferred_grace_seconds."""
    start_operator(MEMWARDEN_UPDATE_DEFERRED_GRACE_SECONDS="3")
    small = {"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    deploy(kube, sim, namespace, "web", resources=small, replicas=2)
    originals = {p["metadata"]["name"] for p in running(kube, namespace, "web", 2)}
    big = {"request": "5Gi", "limit": "5Gi"}
    apply_policy(crds, namespace, memory=big, update="InPlace")

    status = status_when(
        kube,
        namespace,
        lambda s: any(
            "resize deferred by the kubelet (Deferred" in p["reason"]
            for p in s.get("pendingUpdates") or []
        ),
        "the deferred resize reported",
    )
    [deferred] = [p["pod"] for p in status["pendingUpdates"]]
    assert not any(reason == "Evicting" for reason, _, _ in reasons(kube, namespace))

    apply_policy(crds, namespace, memory=big, update="InPlaceOrRecreate")
    message = wait_for(
        lambda: next(
            (m for reason, pod, m in reasons(kube, namespace) if reason == "Evicting"), None
        ),
        timeout=60,
        what="the deferred pod evicted",
    )
    assert "resize deferred for more than 3s (Deferred" in message
    evicted = [pod for reason, pod, _ in reasons(kube, namespace) if reason == "Evicting"]
    assert evicted == [deferred]
    kept = originals - {deferred}
    assert kept <= {p["metadata"]["name"] for p in pods(kube, namespace, "web")}


def test_a_restart_container_resize_policy_is_announced_and_the_container_restarts(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
) -> None:
    start_operator()
    small = {"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    deploy(
        kube, sim, namespace, "web", resources=small, replicas=1, memory_resize="RestartContainer"
    )
    [pod] = running(kube, namespace, "web", 1)
    assert restarts(pod) == 0
    apply_policy(crds, namespace, memory=BIGGER, update="InPlace")

    message = wait_for(
        lambda: next(
            (m for reason, _, m in reasons(kube, namespace) if reason == "Resizing"), None
        ),
        what="the Resizing Event",
    )
    assert "restarts app (resizePolicy RestartContainer)" in message
    after = wait_for(
        lambda: (
            (found := pods(kube, namespace, "web"))
            and memory(found[0]) == ("128Mi", "256Mi")
            and restarts(found[0]) == 1
            and found[0]
        ),
        timeout=60,
        what="resized, the container restarted once by the kubelet",
    )
    assert after["metadata"]["name"] == pod["metadata"]["name"]


def test_a_limit_is_never_lowered_below_the_working_set_prometheus_reports(
    crds: Path,
    kube: client.ApiClient,
    namespace: str,
    sim: NodeSimulator,
    start_operator: Callable[..., OperatorProcess],
    prometheus: PrometheusServer,
    series_exporter: SeriesExporter,
) -> None:
    """1Gi -> 256Mi with a working set of 700Mi: the first step stops at the working set
    (not at the 50% step, 512Mi), and then the update waits, saying why."""
    deploy(
        kube,
        sim,
        namespace,
        "web",
        resources={"requests": {"memory": "64Mi"}, "limits": {"memory": "1Gi"}},
        replicas=1,
    )
    [pod] = running(kube, namespace, "web", 1)
    name = pod["metadata"]["name"]
    series_exporter.set(
        ContainerSeries(
            namespace=namespace, pod=name, container="app", working_set=flat(700 * 2**20)
        )
    )
    try:
        prometheus.wait_for_series(f'container_memory_working_set_bytes{{namespace="{namespace}"}}')
        start_operator(MEMWARDEN_PROMETHEUS_URL=prometheus.url)
        apply_policy(
            crds, namespace, memory={"request": "64Mi", "limit": "256Mi"}, update="InPlace"
        )

        stepped = wait_for(
            lambda: (
                (found := pods(kube, namespace, "web"))
                and memory(found[0])[1] != "1Gi"
                and found[0]
            ),
            timeout=60,
            what="the first step",
        )
        assert memory(stepped) == ("64Mi", "700Mi")
        status = status_when(
            kube,
            namespace,
            lambda s: any(
                "below its working set 700Mi (Prometheus)" in p["reason"]
                for p in s.get("pendingUpdates") or []
            ),
            "the wait at the working set reported",
        )
        updated = next(c for c in status["conditions"] if c["type"] == "Updated")
        assert updated["reason"] == "Stuck"
        [after] = pods(kube, namespace, "web")
        assert memory(after) == ("64Mi", "700Mi")
    finally:
        series_exporter.remove_namespace(namespace)
