"""The CRD conventions users expect, on the real API server and the real operator.

Uninstalling must not hang anything: a policy holds no finalizer (and loses the one an
older memwarden left, at start-up); with the operator stopped, deleting a namespace holding
a policy and an incident completes once the incidents are released with the command
docs/evidence.md gives. Every write the operator makes is managed by ``memwarden`` (not
``kopf``); an incident's conditions follow its phase; the printer columns and
``kubectl wait --for=condition=...`` work.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from memwarden.api import GROUP, VERSION
from memwarden.kube import FIELD_MANAGER
from memwarden_testing.builders import make_policy
from memwarden_testing.cluster import KUBECTL, REPO, absent, acting_as, kubectl, wait_for
from memwarden_testing.evidence import make_incident
from memwarden_testing.operator import OPERATOR_ACCOUNT, OPERATOR_NAMESPACE, OperatorProcess

pytestmark = pytest.mark.integration

KOPF_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


def get(kube: client.ApiClient, namespace: str, plural: str, name: str) -> dict[str, Any]:
    return dict(
        client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, plural, name
        )
    )


def create(kube: client.ApiClient, namespace: str, plural: str, body: dict[str, Any]) -> None:
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, plural, body
    )


def managers(obj: dict[str, Any]) -> dict[str, set[str]]:
    """Field manager -> what it manages: top-level fields, ``status`` per subresource."""
    owned: dict[str, set[str]] = {}
    for entry in obj["metadata"].get("managedFields") or []:
        fields = entry.get("fieldsV1") or {}
        keys = {k.removeprefix("f:") for k in fields}
        keys |= {k.removeprefix("f:") for k in (fields.get("f:metadata") or {})}
        owned.setdefault(entry["manager"], set()).update(keys)
    return owned


def release_command(namespace: str) -> str:
    """The way out docs/evidence.md documents, for ``namespace``: the doc is what is tested."""
    text = (REPO / "docs" / "evidence.md").read_text()
    block = re.search(
        r"<!-- release-incidents: begin.*?```sh\n(.*?)```\n<!-- release-incidents: end -->",
        text,
        re.S,
    )
    assert block, "docs/evidence.md lost its release-incidents block"
    return block.group(1).replace("NAMESPACE", namespace)


def test_operator_writes_are_managed_by_memwarden_and_incident_conditions_follow_the_phase(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    create(kube, namespace, "memorypolicies", make_policy("checkout", namespace=namespace))
    create(kube, namespace, "memoryincidents", make_incident("gone", pod="no-such-pod"))
    incident = wait_for(
        lambda: (
            (i := get(kube, namespace, "memoryincidents", "gone")).get("status", {}).get("phase")
            == "Failed"
            and i
        ),
        what="the incident for a missing pod to fail",
    )
    status = incident["status"]
    conditions = {c["type"]: c for c in status["conditions"]}
    assert (conditions["Complete"]["status"], conditions["Complete"]["reason"]) == (
        "True",
        "Failed",
    )
    assert conditions["EvidenceCollected"]["status"] == "False"
    assert conditions["EvidenceCollected"]["reason"] == "PodNotFound"
    generation = incident["metadata"]["generation"]
    assert status["observedGeneration"] == generation
    assert {c["observedGeneration"] for c in conditions.values()} == {generation}

    policy = wait_for(
        lambda: (
            (p := get(kube, namespace, "memorypolicies", "checkout"))
            .get("status", {})
            .get("conditions")
            and p
        ),
        what="the policy's status",
    )
    for obj in (incident, policy):
        owned = managers(obj)
        assert "kopf" not in owned, owned
        assert "status" in owned[FIELD_MANAGER], owned
    # kopf's finalizer on the incident is written by the operator, under its name.
    assert "finalizers" in managers(incident)[FIELD_MANAGER]
    assert KOPF_FINALIZER in incident["metadata"]["finalizers"]
    assert not policy["metadata"].get("finalizers")


def test_a_finalizer_an_older_operator_left_on_a_policy_is_removed_at_start(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    memwarden.stop()
    legacy = make_policy("legacy", namespace=namespace)
    legacy["metadata"]["finalizers"] = [KOPF_FINALIZER]
    create(kube, namespace, "memorypolicies", legacy)
    memwarden.start()
    wait_for(
        lambda: not get(kube, namespace, "memorypolicies", "legacy")["metadata"].get("finalizers"),
        what="kopf's finalizer removed from the policy",
    )


def test_namespace_deletion_completes_with_the_operator_stopped(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str, crds: Path
) -> None:
    create(kube, namespace, "memorypolicies", make_policy("checkout", namespace=namespace))
    create(kube, namespace, "memoryincidents", make_incident("gone", pod="no-such-pod"))
    wait_for(
        lambda: (
            KOPF_FINALIZER
            in (get(kube, namespace, "memoryincidents", "gone")["metadata"].get("finalizers") or [])
        ),
        what="the incident to carry the operator's finalizer",
    )
    memwarden.stop()

    kubectl(crds, "delete", "namespace", namespace, "--wait=false")

    # The policy goes at once; the incident holds the namespace until released.
    wait_for(
        lambda: absent(lambda: get(kube, namespace, "memorypolicies", "checkout")),
        timeout=60,
        what="the policy deleted with its namespace",
    )
    wait_for(
        lambda: get(kube, namespace, "memoryincidents", "gone")["metadata"].get(
            "deletionTimestamp"
        ),
        what="the incident marked for deletion, held by its finalizer",
    )
    subprocess.run(
        ["bash", "-euo", "pipefail", "-c", release_command(namespace)],
        check=True,
        env={
            **os.environ,
            "KUBECONFIG": str(crds),
            "PATH": f"{Path(KUBECTL).parent}{os.pathsep}{os.environ['PATH']}",
        },
        capture_output=True,
    )
    core = client.CoreV1Api(kube)
    wait_for(
        lambda: absent(lambda: core.read_namespace(namespace)),
        timeout=90,
        what="the namespace deleted",
    )


def table(kubeconfig: Path, *args: str) -> list[dict[str, str]]:
    """``kubectl get`` as rows keyed by column header, cut where each header starts (an
    empty cell is "")."""
    lines = kubectl(kubeconfig, "get", *args).stdout.splitlines()
    starts = [m.start() for m in re.finditer(r"\S+", lines[0])]
    bounds = list(zip(starts, [*starts[1:], None], strict=True))
    header = [lines[0][a:b].strip() for a, b in bounds]
    return [
        dict(zip(header, (line[a:b].strip() for a, b in bounds), strict=True)) for line in lines[1:]
    ]


def test_printer_columns_and_kubectl_wait(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str, crds: Path
) -> None:
    create(kube, namespace, "memorypolicies", make_policy("checkout", namespace=namespace))
    create(kube, namespace, "memoryincidents", make_incident("gone", pod="no-such-pod"))
    kubectl(crds, "wait", "-n", namespace, "--for=condition=Complete", "--timeout=60s", "minc/gone")
    kubectl(
        crds, "wait", "-n", namespace, "--for=condition=Ready", "--timeout=60s", "mpol/checkout"
    )
    [policy_row] = table(crds, "-n", namespace, "mpol")
    assert (policy_row["READY"], policy_row["FEASIBLE"]) == ("True", "True")
    [incident_row] = table(crds, "-n", namespace, "minc")
    assert (incident_row["PHASE"], incident_row["REASON"]) == ("Failed", "PodNotFound")
    assert "BUNDLE" not in incident_row and incident_row["TOP"] == ""
    # What a collected incident shows (written by hand here: capturing needs a node).
    client.CustomObjectsApi(kube).patch_namespaced_custom_object_status(
        GROUP,
        VERSION,
        namespace,
        "memoryincidents",
        "gone",
        {
            "status": {
                "bundle": f"evidence://{namespace}/gone",
                "analysis": {"top": [{"function": "main.leak", "flatBytes": 1, "cumBytes": 1}]},
            }
        },
    )
    [wide] = table(crds, "-n", namespace, "minc", "-o", "wide")
    assert (wide["BUNDLE"], wide["TOP"]) == (f"evidence://{namespace}/gone", "main.leak")


def test_the_operator_may_only_remove_a_policy_s_finalizers(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    """RBAC lets the operator patch policies (for kopf's finalizer removal); the chart's
    guard (``manifests.policy_guard``) holds its token to exactly that."""
    as_operator = client.CustomObjectsApi(acting_as(kube, OPERATOR_NAMESPACE, OPERATOR_ACCOUNT))
    held = make_policy("held", namespace=namespace)
    held["metadata"]["finalizers"] = ["example.com/keep", KOPF_FINALIZER]
    create(kube, namespace, "memorypolicies", held)

    def patch(body: dict[str, Any]) -> int:
        try:
            as_operator.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, "memorypolicies", "held", body
            )
        except ApiException as exc:
            return int(exc.status)
        return 200

    # The guard, like any admission policy, is enforced once the API server has loaded it.
    wait_for(
        lambda: patch({"spec": {"priority": 7}}) == 403,
        what="the operator refused a change of the policy's spec",
    )
    assert patch({"metadata": {"labels": {"team": "x"}}}) == 403
    assert patch({"metadata": {"finalizers": ["example.com/keep", "example.com/new"]}}) == 403
    assert patch({"metadata": {"finalizers": ["example.com/keep"]}}) == 200
    policy = get(kube, namespace, "memorypolicies", "held")
    assert policy["spec"].get("priority", 0) == 0
    assert policy["metadata"]["finalizers"] == ["example.com/keep"]
    patch_as_admin = client.CustomObjectsApi(kube).patch_namespaced_custom_object
    patch_as_admin(
        GROUP, VERSION, namespace, "memorypolicies", "held", {"metadata": {"finalizers": None}}
    )
