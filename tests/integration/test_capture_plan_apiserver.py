"""The capture plan against the real API server: PATCH ``pods/NAME/ephemeralcontainers``.

The pods stay Pending (no node): the API server validates and admits ephemeral containers
all the same, Pod Security included, which is what these tests are about.
"""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from memwarden.capture.plan import (
    ALL_ARTIFACTS,
    POD_SECURITY_ENFORCE_LABEL,
    ephemeral_container_patch,
    plan_debug_identity,
    plan_ephemeral_container,
    ptrace_allowed_by_pod_security,
)
from memwarden_testing.builders import make_container, make_pod
from memwarden_testing.cluster import wait_for

pytestmark = pytest.mark.integration

STRATEGIC = "application/strategic-merge-patch+json"
RESTRICTED_POD_SECURITY = {"runAsNonRoot": True, "seccompProfile": {"type": "RuntimeDefault"}}
NON_ROOT = {"runAsUser": 65532, "runAsGroup": 65532}
RESTRICTED_CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def plan(
    incident: str, *, ptrace_allowed: bool, pod: dict[str, Any] | None = None
) -> dict[str, Any]:
    identity = None
    if pod is not None:
        identity = plan_debug_identity(
            pod=pod, target_container="app", ptrace_allowed=ptrace_allowed
        )
    return plan_ephemeral_container(
        incident=incident,
        incident_uid=f"uid-of-{incident}",
        target_container="app",
        image="example.com/memwarden-toolbox:0.1.0",
        upload_url="https://memwarden.memwarden-system.svc:8443/v1/upload/x",
        upload_token="single-incident-token",
        pprof_port=6060,
        trace_seconds=5,
        artifacts=ALL_ARTIFACTS,
        max_core_bytes=2 << 30,
        ptrace_allowed=ptrace_allowed,
        identity=identity,
    )


def create_pod(
    kube: client.ApiClient, namespace: str, *, restricted: bool = False, non_root: bool = False
) -> str:
    container = make_container("app")
    pod = make_pod("target", namespace=namespace, containers=[container])
    if restricted:
        pod["spec"]["securityContext"] = RESTRICTED_POD_SECURITY
        container["securityContext"] = RESTRICTED_CONTAINER_SECURITY
    if non_root:
        container.setdefault("securityContext", {}).update(NON_ROOT)
    client.CoreV1Api(kube).create_namespaced_pod(namespace, pod)
    return "target"


def read_pod(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    pod = client.CoreV1Api(kube).read_namespaced_pod(name, namespace)
    body: dict[str, Any] = kube.sanitize_for_serialization(pod)
    return body


def patch(kube: client.ApiClient, namespace: str, name: str, body: dict[str, Any]) -> None:
    client.CoreV1Api(kube).patch_namespaced_pod_ephemeralcontainers(
        name, namespace, body, _content_type=STRATEGIC
    )


def add(kube: client.ApiClient, namespace: str, name: str, container: dict[str, Any]) -> None:
    """Decide (plan the patch on the pod as read), then act: what the handler will do."""
    body = ephemeral_container_patch(read_pod(kube, namespace, name), container)
    assert body is not None
    patch(kube, namespace, name, body)


def ephemeral(pod: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in pod["spec"].get("ephemeralContainers") or []}


def enforce(kube: client.ApiClient, namespace: str, level: str) -> dict[str, str]:
    """Label the namespace, then wait until Pod Security enforces it (its cache lags)."""
    core = client.CoreV1Api(kube)
    core.patch_namespace(namespace, {"metadata": {"labels": {POD_SECURITY_ENFORCE_LABEL: level}}})
    probe = make_pod("psa-probe", namespace=namespace)
    probe["spec"]["containers"][0]["securityContext"] = {"capabilities": {"add": ["SYS_PTRACE"]}}

    def refused() -> bool:
        try:
            core.create_namespaced_pod(namespace, probe, dry_run="All")
        except ApiException as exc:
            if exc.status == 403:
                return True
            raise
        return False

    wait_for(refused, timeout=15, interval=0.1, what=f"Pod Security {level} in {namespace}")
    labels: dict[str, str] = core.read_namespace(namespace).metadata.labels
    return labels


def test_plan_is_admitted_once(kube: client.ApiClient, namespace: str) -> None:
    name = create_pod(kube, namespace)
    container = plan("checkout-20261125-1812", ptrace_allowed=True)

    add(kube, namespace, name, container)

    pod = read_pod(kube, namespace, name)
    added = ephemeral(pod)[container["name"]]
    assert added["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}
    assert added["targetContainerName"] == "app"
    assert pod["status"]["phase"] == "Pending"
    # Planned again (a retry, an operator restart): nothing to do.
    assert ephemeral_container_patch(pod, container) is None
    # And sent again anyway: the API server changes nothing.
    patch(kube, namespace, name, {"spec": {"ephemeralContainers": [container]}})
    again = read_pod(kube, namespace, name)
    assert again["metadata"]["resourceVersion"] == pod["metadata"]["resourceVersion"]
    assert list(ephemeral(again)) == [container["name"]]


def test_patch_planned_on_a_stale_pod_keeps_the_other_container(
    kube: client.ApiClient, namespace: str
) -> None:
    name = create_pod(kube, namespace)
    stale = read_pod(kube, namespace, name)
    first = plan("incident-a", ptrace_allowed=True)
    add(kube, namespace, name, first)  # meanwhile, another capture (or kubectl debug)
    second = plan("incident-b", ptrace_allowed=True)
    body = ephemeral_container_patch(stale, second)
    assert body is not None

    patch(kube, namespace, name, body)

    assert set(ephemeral(read_pod(kube, namespace, name))) == {first["name"], second["name"]}


@pytest.mark.parametrize("level", ["baseline", "restricted"])
def test_pod_security_refuses_ptrace_and_admits_the_targets_identity(
    kube: client.ApiClient, namespace: str, level: str
) -> None:
    labels = enforce(kube, namespace, level)
    allowed, reason = ptrace_allowed_by_pod_security(labels)
    assert not allowed
    assert level in reason
    name = create_pod(kube, namespace, restricted=level == "restricted", non_root=True)
    pod = read_pod(kube, namespace, name)

    with pytest.raises(ApiException) as raised:
        add(kube, namespace, name, plan("incident-ptrace", ptrace_allowed=True))

    assert raised.value.status == 403
    assert "capabilities" in str(raised.value.body)
    assert "SYS_PTRACE" in str(raised.value.body)
    # The fallback: no SYS_PTRACE, as the target's own user (it reads the target's /proc).
    container = plan("incident-no-ptrace", ptrace_allowed=False, pod=pod)
    add(kube, namespace, name, container)
    added = ephemeral(read_pod(kube, namespace, name))
    assert list(added) == [container["name"]]
    security = added[container["name"]]["securityContext"]
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert (security["runAsUser"], security["runAsGroup"]) == (65532, 65532)
    assert "gcore" not in container["command"][container["command"].index("--artifacts") + 1]


@pytest.mark.parametrize("level", [None, "privileged"], ids=["no-label", "privileged"])
def test_root_with_only_sys_ptrace_is_admitted_where_pod_security_allows_it(
    kube: client.ApiClient, namespace: str, level: str | None
) -> None:
    labels = {POD_SECURITY_ENFORCE_LABEL: level} if level else {}
    if level:
        client.CoreV1Api(kube).patch_namespace(namespace, {"metadata": {"labels": labels}})
    allowed, _ = ptrace_allowed_by_pod_security(labels)
    assert allowed
    name = create_pod(kube, namespace, non_root=True)

    container = plan("incident-ptrace", ptrace_allowed=True, pod=read_pod(kube, namespace, name))
    add(kube, namespace, name, container)

    security = ephemeral(read_pod(kube, namespace, name))[container["name"]]["securityContext"]
    assert security["runAsUser"] == 0
    assert security["runAsNonRoot"] is False
    assert security["capabilities"] == {"drop": ["ALL"], "add": ["SYS_PTRACE"]}
