"""Deployments on the node simulator whose pods are Ready when the test says (test helpers).

The simulator runs no probes (a running container is ready), so a pod template here has a
readiness gate (``READY_GATE``) that only ``make_ready`` opens: a replacement pod stays
not Ready until the test lets it, which is how the eviction tests hold a rollout.
"""

from __future__ import annotations

from typing import Any

from kubernetes import client
from kubernetes.client.rest import ApiException

from memwarden_testing.cluster import wait_for
from memwarden_testing.nodesim import NodeSimulator

READY_GATE = "memwarden.dev/test-ready"
#: Ignores SIGTERM (children inherit the ignored signal): terminating for the grace period.
STUBBORN = ["sh", "-c", "trap '' TERM; while :; do sleep 1; done"]
#: Stops at once on SIGTERM; a host program, far lighter than the Python placeholder.
SLEEPER = ["sleep", "3600"]


def deploy(
    kube: client.ApiClient,
    sim: NodeSimulator,
    namespace: str,
    name: str,
    *,
    replicas: int,
    command: list[str] | None = None,
    grace_seconds: int = 3,
    gated: bool = True,
    labels: dict[str, str] | None = None,
) -> None:
    """A Deployment ``name`` (pods labelled ``app: name`` and ``labels``) pinned to ``sim``."""
    spec: dict[str, Any] = {
        "terminationGracePeriodSeconds": grace_seconds,
        "containers": [
            {"name": "app", "image": "example.com/app:1", "command": command or STUBBORN}
        ],
    }
    if gated:
        spec["readinessGates"] = [{"conditionType": READY_GATE}]
    labels = {**(labels or {}), "app": name}
    create_deployment(kube, namespace, name, replicas=replicas, labels=labels, spec=sim.pin(spec))


def create_deployment(
    kube: client.ApiClient,
    namespace: str,
    name: str,
    *,
    replicas: int,
    labels: dict[str, str],
    spec: dict[str, Any],
) -> None:
    """A Deployment ``name`` whose pods carry ``labels`` (its selector) and ``spec``."""
    client.AppsV1Api(kube).create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": name},
            "spec": {
                "replicas": replicas,
                "selector": {"matchLabels": labels},
                "template": {"metadata": {"labels": labels}, "spec": spec},
            },
        },
    )


def pods_of(kube: client.ApiClient, namespace: str, app: str) -> list[dict[str, Any]]:
    """The app's pods as plain dicts, oldest first, terminating ones included."""
    listed = client.CoreV1Api(kube).list_namespaced_pod(namespace, label_selector=f"app={app}")
    pods = [kube.sanitize_for_serialization(p) for p in listed.items]
    return sorted(pods, key=lambda p: (p["metadata"]["creationTimestamp"], p["metadata"]["name"]))


def is_ready(pod: dict[str, Any]) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)


def is_running(pod: dict[str, Any]) -> bool:
    return (
        not pod["metadata"].get("deletionTimestamp")
        and (pod.get("status") or {}).get("phase") == "Running"
    )


def read_pod(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """The pod as a plain dict; None when it is gone."""
    try:
        pod = client.CoreV1Api(kube).read_namespaced_pod(name, namespace)
    except ApiException as exc:
        if exc.status == 404:
            return None
        raise
    return dict(kube.sanitize_for_serialization(pod))


def make_ready(kube: client.ApiClient, namespace: str, name: str) -> None:
    """Open the pod's readiness gate, and wait until the pod reports Ready."""
    condition = {"type": READY_GATE, "status": "True"}
    client.CoreV1Api(kube).patch_namespaced_pod_status(
        name, namespace, {"status": {"conditions": [condition]}}
    )
    wait_for(
        lambda: is_ready(read_pod(kube, namespace, name) or {}),
        timeout=30,
        what=f"pod {name} Ready",
    )


def running_and_ready(
    kube: client.ApiClient, namespace: str, app: str, count: int, *, timeout: float = 60
) -> list[dict[str, Any]]:
    """Wait for ``count`` running pods of the app, open their gates; the pods, Ready."""

    def running() -> list[dict[str, Any]] | None:
        pods = [p for p in pods_of(kube, namespace, app) if is_running(p)]
        return pods if len(pods) == count else None

    for pod in wait_for(running, timeout=timeout, what=f"{count} running pods of {app}"):
        if not is_ready(pod):
            make_ready(kube, namespace, pod["metadata"]["name"])
    pods = pods_of(kube, namespace, app)
    assert len(pods) == count and all(map(is_ready, pods))
    return pods


def create_budget(
    kube: client.ApiClient, namespace: str, app: str, *, max_unavailable: int
) -> None:
    """A PodDisruptionBudget ``app`` over the app's pods."""
    client.PolicyV1Api(kube).create_namespaced_pod_disruption_budget(
        namespace,
        {
            "apiVersion": "policy/v1",
            "kind": "PodDisruptionBudget",
            "metadata": {"name": app},
            "spec": {
                "maxUnavailable": max_unavailable,
                "selector": {"matchLabels": {"app": app}},
            },
        },
    )


def disruptions_allowed(kube: client.ApiClient, namespace: str, app: str, expected: int) -> None:
    """Wait for the disruption controller to say ``expected`` disruptions are allowed."""
    policy = client.PolicyV1Api(kube)

    def settled() -> bool:
        pdb = policy.read_namespaced_pod_disruption_budget(app, namespace)
        return pdb.status is not None and pdb.status.disruptions_allowed == expected

    wait_for(settled, timeout=60, what=f"PodDisruptionBudget {app} allowing {expected}")


def evicted(pod: dict[str, Any]) -> bool:
    """The API server marks a pod it evicts (DisruptionTarget, EvictionByEvictionAPI); a
    plain delete would not."""
    conditions = {c["type"]: c for c in (pod.get("status") or {}).get("conditions") or []}
    return (conditions.get("DisruptionTarget") or {}).get("reason") == "EvictionByEvictionAPI"


def untouched(kube: client.ApiClient, pod: dict[str, Any]) -> bool:
    """The same pod (uid) is still there and not terminating."""
    now = read_pod(kube, pod["metadata"]["namespace"], pod["metadata"]["name"])
    return (
        now is not None
        and now["metadata"]["uid"] == pod["metadata"]["uid"]
        and not now["metadata"].get("deletionTimestamp")
    )
