"""The local control plane is a real Kubernetes: CRDs, pods, controllers, RBAC, tokens."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from memwarden_testing.cluster import grant_in_namespace, kubectl, unique_name, wait_for

WIDGET_CRD = """
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata: {name: widgets.smoke.memwarden.dev}
spec:
  group: smoke.memwarden.dev
  scope: Namespaced
  names: {plural: widgets, singular: widget, kind: Widget}
  versions:
  - name: v1
    served: true
    storage: true
    schema:
      openAPIV3Schema:
        type: object
        properties:
          spec:
            type: object
            properties:
              size: {type: integer, minimum: 1}
"""


def test_server_reports_the_pinned_release(devcluster: Path) -> None:
    version = json.loads(kubectl(devcluster, "version", "-o", "json").stdout)
    assert version["serverVersion"]["gitVersion"] == "v1.37.2"


def test_a_crd_is_served_and_validates(devcluster: Path, namespace: str) -> None:
    kubectl(devcluster, "apply", "-f", "-", input=WIDGET_CRD)
    kubectl(
        devcluster,
        "wait",
        "--for=condition=Established",
        "--timeout=30s",
        "crd/widgets.smoke.memwarden.dev",
    )
    ok = "apiVersion: smoke.memwarden.dev/v1\nkind: Widget\nmetadata: {name: w1}\nspec: {size: 2}\n"
    kubectl(devcluster, "-n", namespace, "apply", "-f", "-", input=ok)
    got = json.loads(
        kubectl(devcluster, "-n", namespace, "get", "widget", "w1", "-o", "json").stdout
    )
    assert got["spec"] == {"size": 2}

    bad = ok.replace("size: 2", "size: 0").replace("w1", "w2")
    refused = kubectl(devcluster, "-n", namespace, "apply", "-f", "-", input=bad, check=False)
    assert refused.returncode != 0
    assert "spec.size" in refused.stderr


def test_a_pod_stays_pending_without_a_node(kube: client.ApiClient, namespace: str) -> None:
    core = client.CoreV1Api(kube)
    pod = client.V1Pod(
        metadata=client.V1ObjectMeta(name="lonely"),
        spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="example/app")]),
    )
    core.create_namespaced_pod(namespace, pod)
    stored = core.read_namespaced_pod("lonely", namespace)
    assert stored.status.phase == "Pending"
    assert stored.spec.node_name is None


def test_controller_manager_turns_a_deployment_into_pods(
    kube: client.ApiClient, namespace: str
) -> None:
    apps, core = client.AppsV1Api(kube), client.CoreV1Api(kube)
    labels = {"app": "smoke"}
    deployment = client.V1Deployment(
        metadata=client.V1ObjectMeta(name="smoke"),
        spec=client.V1DeploymentSpec(
            replicas=2,
            selector=client.V1LabelSelector(match_labels=labels),
            template=client.V1PodTemplateSpec(
                metadata=client.V1ObjectMeta(labels=labels),
                spec=client.V1PodSpec(containers=[client.V1Container(name="app", image="x")]),
            ),
        ),
    )
    apps.create_namespaced_deployment(namespace, deployment)
    replica_sets = wait_for(
        lambda: apps.list_namespaced_replica_set(namespace, label_selector="app=smoke").items,
        timeout=60,
        what="a ReplicaSet from the deployment controller",
    )
    assert replica_sets[0].metadata.owner_references[0].name == "smoke"
    pods = wait_for(
        lambda: (
            [p for p in core.list_namespaced_pod(namespace, label_selector="app=smoke").items]
            if len(core.list_namespaced_pod(namespace, label_selector="app=smoke").items) == 2
            else None
        ),
        timeout=60,
        what="two pods from the ReplicaSet controller",
    )
    assert {p.metadata.owner_references[0].kind for p in pods} == {"ReplicaSet"}


@pytest.fixture
def reader_token(kube: client.ApiClient, namespace: str) -> str:
    """A ServiceAccount allowed to list pods in ``namespace`` only, and its bound token."""
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(
        namespace, client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="reader"))
    )
    grant_in_namespace(
        kube,
        namespace,
        name="pod-reader",
        account="reader",
        group="",
        resources=["pods"],
        verbs=["list"],
    )
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[], expiration_seconds=600)
    )
    token: str = core.create_namespaced_service_account_token(
        "reader", namespace, request
    ).status.token
    return token


def test_service_account_token_is_authorised_by_rbac(
    kube: client.ApiClient, namespace: str, reader_token: str
) -> None:
    configuration = client.Configuration()
    configuration.host = kube.configuration.host
    configuration.ssl_ca_cert = kube.configuration.ssl_ca_cert
    configuration.api_key = {"authorization": f"Bearer {reader_token}"}
    core = client.CoreV1Api(client.ApiClient(configuration))

    assert core.list_namespaced_pod(namespace).items == []
    for forbidden in (
        lambda: core.list_namespaced_secret(namespace),
        lambda: core.list_namespaced_pod("default"),
        lambda: core.create_namespaced_pod(
            namespace,
            client.V1Pod(
                metadata=client.V1ObjectMeta(name=unique_name("p")),
                spec=client.V1PodSpec(containers=[client.V1Container(name="a", image="a")]),
            ),
        ),
    ):
        with pytest.raises(ApiException) as refused:
            forbidden()
        assert refused.value.status == 403
