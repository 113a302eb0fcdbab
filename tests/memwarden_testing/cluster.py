"""Helpers for tests against the real local control plane (see ``hack/devcluster.py``)."""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from kubernetes import client, config
from kubernetes.client.rest import ApiException

from memwarden_testing.builders import make_container

REPO = Path(__file__).resolve().parents[2]
KUBECTL = REPO / ".venv" / "bin" / "kubectl"

T = TypeVar("T")


def wait_for(
    predicate: Callable[[], T | None],
    *,
    timeout: float = 30.0,
    interval: float = 0.2,
    what: str = "condition",
) -> T:
    """Poll ``predicate`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def absent(read: Callable[[], object]) -> bool:
    """True when ``read`` (a get of one object) answers 404: for ``wait_for`` on a deletion."""
    try:
        read()
    except ApiException as exc:
        if exc.status == 404:
            return True
        raise
    return False


def api_client(kubeconfig: Path) -> client.ApiClient:
    """A kubernetes ApiClient for the given kubeconfig, independent of global config."""
    configuration = client.Configuration()
    config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    return client.ApiClient(configuration)


def as_token(kube: client.ApiClient, token: str) -> client.ApiClient:
    """An ApiClient for the same API server as ``kube`` that authenticates with ``token``."""
    admin = kube.configuration
    configuration = client.Configuration()
    configuration.host = admin.host
    configuration.ssl_ca_cert = admin.ssl_ca_cert
    configuration.verify_ssl = admin.verify_ssl
    configuration.api_key = {"authorization": f"Bearer {token}"}
    return client.ApiClient(configuration)


def acting_as(kube: client.ApiClient, namespace: str, name: str) -> client.ApiClient:
    """An ApiClient acting as the existing ServiceAccount ``name`` (a 10-minute token)."""
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    core = client.CoreV1Api(kube)
    token = core.create_namespaced_service_account_token(name, namespace, request).status.token
    return as_token(kube, str(token))


def service_account_client(kube: client.ApiClient, namespace: str, name: str) -> client.ApiClient:
    """A new ServiceAccount ``name`` in ``namespace`` and an ApiClient acting as it: a real
    identity for RBAC and admission to judge."""
    client.CoreV1Api(kube).create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=name))
    )
    return acting_as(kube, namespace, name)


def delete_namespaces(kubeconfig: Path, *names: str, check: bool = True) -> None:
    """``kubectl delete namespace``, waiting up to 2 minutes; a missing one is no error."""
    kubectl(
        kubeconfig,
        "delete",
        "namespace",
        *names,
        "--ignore-not-found",
        "--timeout=120s",
        check=check,
    )


def kubectl(
    kubeconfig: Path, *args: str, input: str | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """Run the project's kubectl (same minor as the control plane) against ``kubeconfig``."""
    return subprocess.run(
        [str(KUBECTL), f"--kubeconfig={kubeconfig}", *args],
        input=input,
        capture_output=True,
        text=True,
        check=check,
        timeout=120,
        env={**os.environ, "KUBECTL_EXTERNAL_DIFF": ""},
    )


def unique_name(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def ensure_namespace(
    core: client.CoreV1Api, name: str, *, labels: dict[str, str] | None = None
) -> None:
    """Create ``name`` if absent and wait for its default ServiceAccount: the
    ServiceAccount admission plugin refuses pods until the controller-manager made it."""

    try:
        core.create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=name, labels=labels))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise

    def ready() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return True

    wait_for(ready, timeout=60, what=f"the default ServiceAccount of namespace {name}")


def grant_in_namespace(
    kube: client.ApiClient,
    namespace: str,
    *,
    name: str,
    account: str,
    group: str,
    resources: list[str],
    verbs: list[str],
) -> None:
    """A Role and a RoleBinding for ServiceAccount ``account``; returns once the API
    server's authorizer sees them (it learns bindings through a watch, so a request sent
    right after the create can still be refused)."""
    rbac = client.RbacAuthorizationV1Api(kube)
    rule = {"apiGroups": [group], "resources": resources, "verbs": verbs}
    rbac.create_namespaced_role(namespace, {"metadata": {"name": name}, "rules": [rule]})
    rbac.create_namespaced_role_binding(
        namespace,
        {
            "metadata": {"name": name},
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": account, "namespace": namespace}],
        },
    )
    review = {
        "spec": {
            "user": f"system:serviceaccount:{namespace}:{account}",
            "groups": ["system:serviceaccounts", f"system:serviceaccounts:{namespace}"],
            "resourceAttributes": {
                "namespace": namespace,
                "group": group,
                "resource": resources[0].split("/")[0],
                "subresource": resources[0].partition("/")[2],
                "verb": verbs[0],
            },
        }
    }
    authorization = client.AuthorizationV1Api(kube)
    wait_for(
        lambda: authorization.create_subject_access_review(review).status.allowed,
        timeout=30,
        what=f"the authorizer to allow {account} {verbs[0]} {resources[0]}",
    )


def events_on(kube: client.ApiClient, namespace: str, name: str) -> list[Any]:
    """The Events whose involved object is ``name`` in ``namespace``."""
    events = client.CoreV1Api(kube).list_namespaced_event(
        namespace, field_selector=f"involvedObject.name={name}"
    )
    return list(events.items)


def stop_process_group(process: subprocess.Popen[bytes] | None, *, grace: float = 20) -> None:
    """SIGTERM a process started with ``start_new_session`` and its children, SIGKILL them
    after ``grace`` seconds; returns once the leader has exited."""
    import signal

    if process is None or process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=grace)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


def apiserver_requests(kube: client.ApiClient, *, resource: str, verb: str) -> float:
    """How many ``verb`` requests on ``resource`` the API server has served since it
    started (``apiserver_request_total``, every code): to count what a client really sent."""
    # The admin kubeconfig authenticates with a client certificate: no header to add.
    response = kube.call_api("GET", f"{kube.configuration.host}/metrics")
    assert response.status == 200, response.status
    text = bytes(response.read()).decode()
    return metric_sum(text, "apiserver_request_total", resource=resource, verb=verb)


def metric_sum(text: str, name: str, **labels: str) -> float:
    """The sum of the samples of metric ``name`` (exactly) whose labels include ``labels``,
    in a Prometheus text exposition."""
    total = 0.0
    wanted = [f'{k}="{v}"' for k, v in labels.items()]
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        series, _, value = line.rpartition(" ")
        if series.split("{", 1)[0] == name and all(w in series for w in wanted):
            total += float(value)
    return total


# -- MemoryPolicies and pods, as the admission tests use them ----------------------------


def policy_status(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        "memwarden.dev", "v1alpha1", namespace, "memorypolicies", name
    )
    return dict(obj.get("status") or {})


def create_pod(
    kube: client.ApiClient,
    namespace: str,
    name: str,
    *,
    labels: dict[str, str],
    containers: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": containers or [make_container()]},
    }
    created = client.CoreV1Api(kube).create_namespaced_pod(namespace, body)
    return dict(client.ApiClient().sanitize_for_serialization(created))


def wait_policy_indexed(kube: client.ApiClient, namespace: str, name: str) -> None:
    """The operator has seen the policy once its status carries the Ready condition."""
    wait_for(
        lambda: any(
            c.get("type") == "Ready"
            for c in policy_status(kube, namespace, name).get("conditions", [])
        ),
        timeout=30,
        what=f"policy {name} reconciled",
    )


def child_pids(parent: int, marker: bytes) -> list[int]:
    """The live children of ``parent`` whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == parent and marker in cmdline:
            found.append(int(entry.name))
    return found


def create_running_pod(
    kube: client.ApiClient,
    namespace: str,
    name: str,
    *,
    labels: dict[str, str],
    pod_ip: str | None = None,
) -> None:
    """A pod (one container ``app``) that the operator sees Running, with ``pod_ip`` as its
    address if given, though no node ever runs it: its status is written here, and a
    node selector no node matches keeps the scheduler away."""
    from memwarden_testing.builders import make_pod

    pod = make_pod(name, namespace=namespace, labels=labels)
    pod["spec"]["nodeSelector"] = {"memwarden.dev/test": "no-such-node"}
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(namespace, pod)
    status: dict[str, Any] = {
        "phase": "Running",
        "containerStatuses": [
            {
                "name": "app",
                "image": "example.com/app:1",
                "imageID": "",
                "ready": True,
                "restartCount": 0,
                "state": {"running": {"startedAt": "2026-11-25T10:00:00Z"}},
            }
        ],
    }
    if pod_ip is not None:
        status |= {"podIP": pod_ip, "podIPs": [{"ip": pod_ip}]}
    core.patch_namespaced_pod_status(name, namespace, {"status": status})
