"""The node simulator as the kubelet's side of ``pods/resize`` (test infrastructure).

Every resize goes through the real v1.37.2 API server's ``pods/resize`` subresource, so
its validation is real; the simulator then does what a v1.35+ kubelet does: allocate the
new requests if the node has room (else ``PodResizePending`` Infeasible or Deferred),
apply them live or by restarting the container as ``resizePolicy`` says, refuse to set a
memory limit below current usage, and report ``resources`` / ``allocatedResources``.
The memwarden operator's in-place updates (issue #13) rely on each of these.
"""

from __future__ import annotations

import re
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client, watch
from kubernetes.client.rest import ApiException

from memwarden_testing.cluster import metric_sum, wait_for
from memwarden_testing.nodesim import NodeSimulator, read_pod, running_pod

pytestmark = pytest.mark.integration

MiB = 1 << 20
GiB = 1 << 30
LEAKY_IMAGE = "memwarden/leaky:dev"
#: A container that only sleeps (no image rule matches it): cheap scenery.
IDLE_IMAGE = "example.com/idle:1"


@pytest.fixture(scope="module")
def sim(devcluster: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[NodeSimulator]:
    """A 1 GiB node of the module's own, so allocation arithmetic is the test's."""
    state = tmp_path_factory.mktemp("nodesim-resize")
    with NodeSimulator(
        kubeconfig=devcluster, state_dir=state, taint=True, extra_args=("--memory=1Gi",)
    ) as simulator:
        yield simulator


def resources(
    *, request: str | None = None, limit: str | None = None, cpu: str | None = None
) -> dict[str, Any]:
    requests = {k: v for k, v in (("memory", request), ("cpu", cpu)) if v}
    limits = {k: v for k, v in (("memory", limit), ("cpu", cpu)) if v}
    return {
        **({"requests": requests} if requests else {}),
        **({"limits": limits} if limits else {}),
    }


def container(
    *,
    image: str = LEAKY_IMAGE,
    env: dict[str, str] | None = None,
    res: dict[str, Any],
    memory_policy: str | None = None,
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "name": "app",
        "image": image,
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "resources": res,
    }
    if memory_policy:
        out["resizePolicy"] = [{"resourceName": "memory", "restartPolicy": memory_policy}]
    return out


def create(
    core: client.CoreV1Api, sim: NodeSimulator, namespace: str, name: str, app: dict[str, Any]
) -> dict[str, Any]:
    spec = sim.pin({"terminationGracePeriodSeconds": 2, "containers": [app]})
    core.create_namespaced_pod(
        namespace, {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": name}, "spec": spec}
    )
    return running_pod(core, namespace, name)


def resize(core: client.CoreV1Api, namespace: str, name: str, res: dict[str, Any]) -> None:
    body = {"spec": {"containers": [{"name": "app", "resources": res}]}}
    core.patch_namespaced_pod_resize(name, namespace, body)


def condition(pod: dict[str, Any], kind: str) -> dict[str, Any] | None:
    for c in (pod.get("status") or {}).get("conditions") or []:
        if c.get("type") == kind:
            return dict(c)
    return None


def app_status(pod: dict[str, Any]) -> dict[str, Any]:
    (status,) = pod["status"]["containerStatuses"]
    return dict(status)


def rss(sim: NodeSimulator, namespace: str, name: str) -> int:
    """The simulator's last RSS sample of the pod's container ``app``."""
    for pod in sim.debug_pods():
        if pod["namespace"] == namespace and pod["name"] == name:
            return sum(int(c["rssBytes"]) for c in pod["containers"] if c["name"] == "app")
    return 0


def resize_conditions_since(
    core: client.CoreV1Api, namespace: str, name: str, since: dict[str, Any]
) -> list[tuple[str, str, int]]:
    """(type, status, observedGeneration) of every resize condition in the pod's writes
    after ``since`` (a watch from its resourceVersion replays them)."""
    stream = watch.Watch().stream(
        core.list_namespaced_pod,
        namespace,
        field_selector=f"metadata.name={name}",
        resource_version=since["metadata"]["resourceVersion"],
        timeout_seconds=2,
    )
    seen = []
    for event in stream:
        for c in event["object"].status.conditions or []:
            if c.type.startswith("PodResize"):
                seen.append((c.type, c.status, c.observed_generation))
    return seen


def settled(core: client.CoreV1Api, namespace: str, name: str, limit: str) -> dict[str, Any]:
    """Wait until the resize to memory limit ``limit`` is in effect and reported done."""

    def done() -> dict[str, Any] | None:
        pod = read_pod(core, namespace, name)
        limits = (app_status(pod).get("resources") or {}).get("limits") or {}
        busy = condition(pod, "PodResizeInProgress") or condition(pod, "PodResizePending")
        return pod if limits.get("memory") == limit and busy is None else None

    return wait_for(done, timeout=30, what=f"pod {name} resized to {limit}")


def test_not_required_resize_applies_live_and_the_new_limit_kills(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    app = container(env={"LEAKY_RATE": "4Mi"}, res=resources(request="64Mi", limit="512Mi"))
    before = create(core, sim, namespace, "live", app)
    pid = sim.pod_pids(namespace, "live")["app"][0]

    resize(core, namespace, "live", resources(request="64Mi", limit="96Mi"))
    pod = settled(core, namespace, "live", "96Mi")
    # As a kubelet: one status write says the allocated resize is in progress, a later
    # one that it is done.
    seen = resize_conditions_since(core, namespace, "live", before)
    assert ("PodResizeInProgress", "True", 2) in seen

    status = app_status(pod)
    assert status["restartCount"] == 0, "NotRequired: no restart"
    assert status["containerID"] == app_status(before)["containerID"]
    assert sim.pod_pids(namespace, "live")["app"][0] == pid
    assert status["resources"] == {"requests": {"memory": "64Mi"}, "limits": {"memory": "96Mi"}}
    assert status["allocatedResources"] == {"memory": "64Mi"}
    assert pod["metadata"]["generation"] == 2
    assert pod["status"]["observedGeneration"] == 2
    labels = {"namespace": namespace, "pod": "live", "container": "app"}
    assert metric_sum(sim.cadvisor(), "container_spec_memory_limit_bytes", **labels) == 96 * MiB

    # The leak (4 MiB/s) now crosses 96 MiB: the new limit kills it, the old one would not.
    def oom_killed() -> dict[str, Any] | None:
        status = app_status(read_pod(core, namespace, "live"))
        terminated = (status.get("lastState") or {}).get("terminated") or {}
        return status if terminated.get("reason") == "OOMKilled" else None

    killed = wait_for(oom_killed, timeout=60, what="an OOM kill at the new limit")
    assert killed["restartCount"] == 1
    assert killed["lastState"]["terminated"]["exitCode"] == 137


def test_restart_container_policy_restarts_it_with_the_new_resources(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    app = container(
        env={"LEAKY_RATE": "64Ki"},
        res=resources(request="64Mi", limit="128Mi"),
        memory_policy="RestartContainer",
    )
    # The downward API gives the process its limit: GOMEMLIMIT as plain bytes.
    app["env"].append(
        {
            "name": "GOMEMLIMIT",
            "valueFrom": {"resourceFieldRef": {"resource": "limits.memory"}},
        }
    )
    before = create(core, sim, namespace, "restarted", app)
    pid = sim.pod_pids(namespace, "restarted")["app"][0]

    resize(core, namespace, "restarted", resources(request="64Mi", limit="192Mi"))

    def restarted() -> dict[str, Any] | None:
        pod = read_pod(core, namespace, "restarted")
        status = app_status(pod)
        done = condition(pod, "PodResizeInProgress") is None
        return (
            pod if status["restartCount"] == 1 and "running" in status["state"] and done else None
        )

    pod = wait_for(restarted, timeout=30, what="the container restarted by the resize")
    status = app_status(pod)
    assert status["containerID"] != app_status(before)["containerID"]
    assert "terminated" in status["lastState"]
    assert status["lastState"]["terminated"]["reason"] != "OOMKilled"
    assert status["resources"]["limits"] == {"memory": "192Mi"}
    assert status["allocatedResources"] == {"memory": "64Mi"}
    new_pid = sim.pod_pids(namespace, "restarted")["app"][0]
    assert new_pid != pid
    # The new process was started from the allocated pod: its downward API says 192 MiB.
    ip = pod["status"]["podIP"]
    metrics = wait_for(lambda: _try_get(f"http://{ip}:6060/metrics"), what="leaky /metrics")
    assert metric_sum(metrics, "go_gc_gomemlimit_bytes") == 192 * MiB


def _try_get(url: str) -> str | None:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())
    except OSError:
        return None


def test_a_memory_limit_below_usage_is_refused_until_it_fits(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    app = container(
        env={"LEAKY_RATE": "64Mi", "LEAKY_MAX": "48Mi"},
        res=resources(request="32Mi", limit="256Mi"),
    )
    create(core, sim, namespace, "tight", app)
    wait_for(lambda: rss(sim, namespace, "tight") > 48 * MiB, timeout=20, what="the leak to 48 MiB")

    resize(core, namespace, "tight", resources(request="32Mi", limit="40Mi"))

    def refused() -> dict[str, Any] | None:
        pod = read_pod(core, namespace, "tight")
        progress = condition(pod, "PodResizeInProgress")
        return pod if progress and progress.get("reason") == "Error" else None

    pod = wait_for(refused, timeout=20, what="the kubelet's refusal to shrink below usage")
    progress = condition(pod, "PodResizeInProgress")
    assert progress is not None
    assert progress["status"] == "True"
    assert progress["observedGeneration"] == 2
    limit = 40 * MiB
    assert re.fullmatch(
        rf"cannot decrease memory limits: \[attempting to set pod memory limit \({limit}\)"
        rf" below current usage \(\d+\), attempting to set container \"app\" memory limit"
        rf" \({limit}\) below current usage \(\d+\)\]",
        progress["message"],
    ), progress["message"]
    status = app_status(pod)
    # Allocated, not actuated: the old limit stays in effect and nothing restarts.
    assert status["resources"]["limits"] == {"memory": "256Mi"}
    assert status["allocatedResources"] == {"memory": "32Mi"}
    assert status["restartCount"] == 0
    assert condition(pod, "PodResizePending") is None

    # A limit above the usage is applied; the error goes with it.
    resize(core, namespace, "tight", resources(request="32Mi", limit="128Mi"))
    pod = settled(core, namespace, "tight", "128Mi")
    assert app_status(pod)["restartCount"] == 0


def test_requests_beyond_the_nodes_allocatable_are_infeasible(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    """v1.37.2's PodResizeValidator admission plugin refuses a resize beyond the Node's
    reported allocatable, so the kubelet's own Infeasible check only sees those the API
    server let through on a stale Node status: the node judges by its own allocatable."""
    core = client.CoreV1Api(kube)
    app = container(image=IDLE_IMAGE, res=resources(request="64Mi", limit="128Mi"))
    create(core, sim, namespace, "huge", app)

    with pytest.raises(ApiException) as refused:
        resize(core, namespace, "huge", resources(request="2Gi", limit="2Gi"))
    assert refused.value.status == 403
    assert "node didn't have enough allocatable resources" in str(refused.value.body)

    stale = {"status": {"allocatable": {"memory": "4Gi"}, "capacity": {"memory": "4Gi"}}}
    try:

        def admitted() -> bool:
            core.patch_node_status(sim.node_name, stale)  # until the API server sees it
            try:
                resize(core, namespace, "huge", resources(request="2Gi", limit="2Gi"))
            except ApiException as exc:
                if exc.status != 403:
                    raise
                return False
            return True

        wait_for(admitted, timeout=20, what="the resize admitted against the stale status")

        def pending() -> dict[str, Any] | None:
            return condition(read_pod(core, namespace, "huge"), "PodResizePending")

        found = wait_for(pending, timeout=20, what="PodResizePending")
    finally:
        restore = {"status": {"allocatable": {"memory": "1Gi"}, "capacity": {"memory": "1Gi"}}}
        core.patch_node_status(sim.node_name, restore)
    assert found["reason"] == "Infeasible"
    assert found["status"] == "True"
    assert found["message"] == (
        f"Node didn't have enough capacity: memory, requested: {2 * GiB}, capacity: {GiB}"
    )
    assert found["observedGeneration"] == 2
    pod = read_pod(core, namespace, "huge")
    status = app_status(pod)
    assert status["allocatedResources"] == {"memory": "64Mi"}
    assert status["resources"] == {"requests": {"memory": "64Mi"}, "limits": {"memory": "128Mi"}}
    assert condition(pod, "PodResizeInProgress") is None


def test_a_deferred_resize_is_allocated_when_another_pod_goes_away(
    devcluster: Path, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    core = client.CoreV1Api(kube)
    # A node of its own: the "used" in the kubelet's message is exactly these two pods.
    with NodeSimulator(
        kubeconfig=devcluster, state_dir=tmp_path, taint=True, extra_args=("--memory=1Gi",)
    ) as own:
        grower = container(image=IDLE_IMAGE, res=resources(request="256Mi", limit="768Mi"))
        create(core, own, namespace, "grower", grower)
        hog = container(image=IDLE_IMAGE, res=resources(request="600Mi", limit="600Mi"))
        create(core, own, namespace, "hog", hog)

        resize(core, namespace, "grower", resources(request="512Mi", limit="768Mi"))

        def deferred() -> dict[str, Any] | None:
            return condition(read_pod(core, namespace, "grower"), "PodResizePending")

        found = wait_for(deferred, timeout=20, what="PodResizePending")
        assert found["reason"] == "Deferred"
        assert found["message"] == (
            f"Node didn't have enough resource: memory, requested: {512 * MiB},"
            f" used: {600 * MiB}, capacity: {GiB}"
        )
        assert found["observedGeneration"] == 2
        pod = read_pod(core, namespace, "grower")
        assert app_status(pod)["allocatedResources"] == {"memory": "256Mi"}

        core.delete_namespaced_pod("hog", namespace, grace_period_seconds=0)

        def allocated() -> dict[str, Any] | None:
            pod = read_pod(core, namespace, "grower")
            status = app_status(pod)
            ok = (
                condition(pod, "PodResizePending") is None
                and condition(pod, "PodResizeInProgress") is None
                and status.get("allocatedResources") == {"memory": "512Mi"}
            )
            return pod if ok else None

        pod = wait_for(allocated, timeout=30, what="the deferred resize to be allocated")
        status = app_status(pod)
        assert status["resources"]["requests"] == {"memory": "512Mi"}
        assert status["restartCount"] == 0


def test_a_guaranteed_pod_resizes_in_place_and_keeps_its_qos_class(
    sim: NodeSimulator, kube: client.ApiClient, namespace: str
) -> None:
    core = client.CoreV1Api(kube)
    guaranteed = resources(request="64Mi", limit="64Mi", cpu="100m")
    create(core, sim, namespace, "qos", container(image=IDLE_IMAGE, res=guaranteed))

    # The API server refuses what would make it Burstable; the node never hears of it.
    with pytest.raises(ApiException) as refused:
        resize(core, namespace, "qos", resources(request="64Mi", limit="128Mi", cpu="100m"))
    assert refused.value.status == 422
    assert "qos" in str(refused.value.body).lower()
    assert read_pod(core, namespace, "qos")["metadata"]["generation"] == 1

    # Requests and limits together: still Guaranteed, applied live.
    resize(core, namespace, "qos", resources(request="128Mi", limit="128Mi", cpu="100m"))
    pod = settled(core, namespace, "qos", "128Mi")
    status = app_status(pod)
    assert pod["status"]["qosClass"] == "Guaranteed"
    assert status["restartCount"] == 0
    assert status["allocatedResources"] == {"cpu": "100m", "memory": "128Mi"}
    assert status["resources"] == {
        "requests": {"cpu": "100m", "memory": "128Mi"},
        "limits": {"cpu": "100m", "memory": "128Mi"},
    }
