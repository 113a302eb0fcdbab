"""MemoryPolicy end to end on the real control plane: admission, status, conflicts, outage."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from memwarden.api import APPLIED_ANNOTATION
from memwarden_testing.builders import make_container, make_policy, make_policy_spec
from memwarden_testing.cluster import (
    create_pod,
    kubectl,
    policy_status,
    wait_for,
    wait_policy_indexed,
)
from memwarden_testing.operator import OperatorProcess

PLAIN = {"request": "512Mi", "limit": "1Gi"}
GO = {"memoryLimit": "90%", "gogc": "100"}


def apply(kubeconfig: Path, obj: dict[str, Any]) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(obj))


def env_of(pod: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}


def test_bare_pod_and_deployment_pods_are_admitted_with_the_policy(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    kubeconfig = memwarden.kubeconfig
    apply(kubeconfig, make_policy(namespace=namespace, spec=make_policy_spec(memory=PLAIN, go=GO)))
    wait_policy_indexed(kube, namespace, "checkout")

    pod = create_pod(kube, namespace, "bare", labels={"app": "checkout"})
    resources = pod["spec"]["containers"][0]["resources"]
    assert resources["requests"]["memory"] == "512Mi"
    assert resources["limits"]["memory"] == "1Gi"
    assert env_of(pod) == {"GOMEMLIMIT": "921MiB", "GOGC": "100"}
    applied = json.loads(pod["metadata"]["annotations"][APPLIED_ANNOTATION])
    assert applied["policy"] == f"{namespace}/checkout"

    unrelated = create_pod(kube, namespace, "other", labels={"app": "other"})
    assert (
        "resources" not in unrelated["spec"]["containers"][0]
        or not unrelated["spec"]["containers"][0]["resources"]
    )

    apps = client.AppsV1Api(kube)
    labels = {"app": "checkout"}
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "checkout"},
            "spec": {
                "replicas": 2,
                "selector": {"matchLabels": labels},
                "template": {
                    "metadata": {"labels": labels},
                    "spec": {"containers": [make_container(env={"LOG": "info"})]},
                },
            },
        },
    )
    core = client.CoreV1Api(kube)
    pods = wait_for(
        lambda: (lambda items: items if len(items) == 2 else None)(
            core.list_namespaced_pod(
                namespace, label_selector="app=checkout,pod-template-hash"
            ).items
        ),
        timeout=60,
        what="deployment pods",
    )
    for p in pods:
        container = p.spec.containers[0]
        assert container.resources.limits["memory"] == "1Gi"
        assert {e.name: e.value for e in container.env} == {
            "LOG": "info",
            "GOMEMLIMIT": "921MiB",
            "GOGC": "100",
        }

    status = wait_for(
        lambda: (s := policy_status(kube, namespace, "checkout")).get("matchedPods") == 3 and s,
        timeout=30,
        what="status counts 3 matched pods",
    )
    assert status["compliantPods"] == 3
    assert status["driftedPods"] == 0
    assert status["observedGeneration"] == 1
    events = wait_for(
        lambda: [
            e.message
            for e in client.CoreV1Api(kube).list_namespaced_event(namespace).items
            if e.involved_object.kind == "MemoryPolicy" and "matched" in (e.message or "")
        ],
        timeout=30,
        what="an Event on the policy saying what changed",
    )
    assert any("matched 0 ->" in message for message in events), events


def test_operator_down_pods_are_created_unmutated_then_reported_drifted(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    apply(
        memwarden.kubeconfig, make_policy(namespace=namespace, spec=make_policy_spec(memory=PLAIN))
    )
    wait_policy_indexed(kube, namespace, "checkout")
    memwarden.stop()
    try:
        started = time.monotonic()
        pod = create_pod(kube, namespace, "while-down", labels={"app": "checkout"})
        elapsed = time.monotonic() - started
        assert elapsed < 2.0, f"pod creation waited {elapsed:.1f}s on a stopped operator"
        assert not pod["spec"]["containers"][0].get("resources")
        assert APPLIED_ANNOTATION not in (pod["metadata"].get("annotations") or {})
    finally:
        memwarden.start()
    status = wait_for(
        lambda: (s := policy_status(kube, namespace, "checkout")).get("driftedPods") == 1 and s,
        timeout=30,
        what="the pod created while down reported drifted",
    )
    assert status["driftedPodNames"] == ["while-down"]
    assert status["compliantPods"] == 0


def test_two_policies_the_documented_winner_applies_and_status_says_so(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    apply(
        memwarden.kubeconfig,
        make_policy(
            "general",
            namespace=namespace,
            spec=make_policy_spec(
                match_labels={"tier": "web"}, memory={"request": "128Mi", "limit": "256Mi"}
            ),
        ),
    )
    apply(
        memwarden.kubeconfig,
        make_policy(
            "checkout", namespace=namespace, spec=make_policy_spec(memory=PLAIN, priority=10)
        ),
    )
    wait_policy_indexed(kube, namespace, "general")
    wait_policy_indexed(kube, namespace, "checkout")

    pod = create_pod(kube, namespace, "both", labels={"app": "checkout", "tier": "web"})
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "1Gi"

    for policy in ("general", "checkout"):
        conflicts = wait_for(
            lambda p=policy: policy_status(kube, namespace, p).get("conflicts"),
            timeout=30,
            what=f"conflict reported on {policy}",
        )
        assert conflicts == [
            {
                "pod": "both",
                "winner": "checkout",
                "others": ["general"],
                "reason": "checkout has the highest priority (10 > 0)",
            }
        ]
    assert policy_status(kube, namespace, "general").get("matchedPods") == 0


def test_audit_mode_leaves_pods_alone_and_reports_drift(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    apply(
        memwarden.kubeconfig,
        make_policy(namespace=namespace, spec=make_policy_spec(memory=PLAIN, mode="Audit")),
    )
    wait_policy_indexed(kube, namespace, "checkout")
    pod = create_pod(kube, namespace, "audited", labels={"app": "checkout"})
    assert not pod["spec"]["containers"][0].get("resources")
    status = wait_for(
        lambda: (s := policy_status(kube, namespace, "checkout")).get("driftedPods") == 1 and s,
        timeout=30,
        what="audit drift",
    )
    assert status["matchedPods"] == 1


def test_garbage_admission_requests_get_4xx_and_the_operator_lives(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    import ssl
    import urllib.error
    import urllib.request

    from memwarden.webhook.manifests import POD_HANDLER_ID

    context = ssl.create_default_context(cafile=str(memwarden.workdir / "ca.crt"))
    url = f"https://127.0.0.1:{memwarden.webhook_port}/{POD_HANDLER_ID}"
    bodies = [
        b"",
        b"{",
        b"[]",
        b'{"kind": "AdmissionReview"}',
        b"\xff\xfe" * 100,
        json.dumps(
            {
                "apiVersion": "admission.k8s.io/v1",
                "kind": "AdmissionReview",
                "request": {"uid": "x"},
            }
        ).encode(),
    ]
    for body in bodies:
        request = urllib.request.Request(
            url, data=body, method="POST", headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=5) as response:
                status = response.status
        except urllib.error.HTTPError as exc:
            status = exc.code
        assert 400 <= status < 500, (body[:40], status)
    assert memwarden.process is not None and memwarden.process.poll() is None

    apply(
        memwarden.kubeconfig, make_policy(namespace=namespace, spec=make_policy_spec(memory=PLAIN))
    )
    wait_policy_indexed(kube, namespace, "checkout")
    pod = create_pod(kube, namespace, "after-garbage", labels={"app": "checkout"})
    assert pod["spec"]["containers"][0]["resources"]["limits"]["memory"] == "1Gi"


def test_review_size_limit_is_the_intended_8_mib_not_aiohttp_default(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    """A 2 MiB pod (the API server allows 3 MiB) is admitted with its policy; 9 MiB: 413."""
    import ssl
    import urllib.error
    import urllib.request

    from memwarden.webhook.manifests import POD_HANDLER_ID

    apply(
        memwarden.kubeconfig, make_policy(namespace=namespace, spec=make_policy_spec(memory=PLAIN))
    )
    wait_policy_indexed(kube, namespace, "checkout")
    context = ssl.create_default_context(cafile=str(memwarden.workdir / "ca.crt"))
    url = f"https://127.0.0.1:{memwarden.webhook_port}/{POD_HANDLER_ID}"

    def post(padding: int) -> tuple[int, dict[str, Any]]:
        pod = {
            "metadata": {
                "name": "big",
                "labels": {"app": "checkout"},
                "annotations": {"example.com/blob": "x" * padding},
            },
            "spec": {"containers": [make_container()]},
        }
        review = {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u-big",
                "kind": {"group": "", "version": "v1", "kind": "Pod"},
                "resource": {"group": "", "version": "v1", "resource": "pods"},
                "operation": "CREATE",
                "namespace": namespace,
                "userInfo": {"username": "test"},
                "object": pod,
            },
        }
        request = urllib.request.Request(
            url,
            data=json.dumps(review).encode(),
            method="POST",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(request, context=context, timeout=30) as response:
                return response.status, json.loads(response.read())
        except urllib.error.HTTPError as exc:
            return exc.code, {}

    status, answer = post(2 * 2**20)
    assert status == 200
    assert answer["response"]["allowed"] is True and answer["response"]["patch"]
    status, _ = post(9 * 2**20)
    assert status == 413
    assert memwarden.process is not None and memwarden.process.poll() is None
