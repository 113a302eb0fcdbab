"""Who may cause a capture (issue 12 item 1), on the real API server and operator.

A MemoryIncident makes memwarden add a ``SYS_PTRACE`` debug container to a pod and dump its
memory. The ValidatingAdmissionPolicy memwarden ships admits one only from someone who may
``patch pods/ephemeralcontainers`` on that pod (memwarden's own ServiceAccount excepted);
the operator then holds every incident to the rules of its own openings: a governing
policy that allows captures, the pod's cooldown, the cluster-wide cap.

The pods here never run on a node: their status is written as Running by the test, which
is all the operator reads before it decides; the debug container it adds is admitted by
the API server and stays waiting, holding the incident in ``Capturing``.
"""

from __future__ import annotations

import os
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from memwarden.api import GROUP, VERSION
from memwarden.settings import Settings
from memwarden_testing.builders import make_policy, make_policy_spec
from memwarden_testing.cluster import (
    api_client,
    create_running_pod,
    grant_in_namespace,
    service_account_client,
    wait_for,
    wait_policy_indexed,
)
from memwarden_testing.evidence import make_incident
from memwarden_testing.operator import OPERATOR_NAMESPACE, OperatorProcess

pytestmark = pytest.mark.integration

PLURAL = "memoryincidents"
REFUSAL = "may not patch pods/ephemeralcontainers on it"


def _create(api: client.ApiClient, namespace: str, body: dict[str, Any], **kw: Any) -> Any:
    return client.CustomObjectsApi(api).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, body, **kw
    )


def _refusal(api: client.ApiClient, namespace: str, pod: str) -> str | None:
    """The API server's refusal of a (dry-run) incident for ``pod``, or None if admitted."""
    try:
        _create(api, namespace, make_incident("probe", pod=pod), dry_run="All")
    except ApiException as exc:
        if exc.status == 403:
            return str(exc.body)
        raise
    return None


def _identity(kube: client.ApiClient, namespace: str, *, may_debug: bool) -> client.ApiClient:
    """A ServiceAccount that may create MemoryIncidents, and patch pods/ephemeralcontainers
    when ``may_debug``."""
    account = "debugger" if may_debug else "incident-creator"
    api = service_account_client(kube, namespace, account)
    grant_in_namespace(
        kube,
        namespace,
        name=f"{account}-incidents",
        account=account,
        group=GROUP,
        resources=[PLURAL],
        verbs=["create"],
    )
    if may_debug:
        grant_in_namespace(
            kube,
            namespace,
            name=f"{account}-debug",
            account=account,
            group="",
            resources=["pods/ephemeralcontainers"],
            verbs=["patch"],
        )
    return api


def test_creating_an_incident_needs_the_right_to_debug_the_pod(
    crds: Any, kube: client.ApiClient, namespace: str
) -> None:
    creator = _identity(kube, namespace, may_debug=False)
    refusal = wait_for(
        lambda: _refusal(creator, namespace, "checkout-1"),
        timeout=30,
        what="the admission policy to refuse an incident from a mere creator",
    )
    assert REFUSAL in refusal, refusal
    assert f"system:serviceaccount:{namespace}:incident-creator" in refusal
    assert "pod checkout-1" in refusal
    with pytest.raises(ApiException) as refused:
        _create(creator, namespace, make_incident("real", pod="checkout-1"))
    assert refused.value.status == 403
    assert not client.CustomObjectsApi(kube).list_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL
    )["items"]

    debugger = _identity(kube, namespace, may_debug=True)
    created = _create(debugger, namespace, make_incident("allowed", pod="checkout-1"))
    assert created["metadata"]["name"] == "allowed"


def test_pointing_an_incident_at_another_pod_needs_the_same_right(
    crds: Any, kube: client.ApiClient, namespace: str
) -> None:
    editor = client.CustomObjectsApi(service_account_client(kube, namespace, "editor"))
    grant_in_namespace(
        kube,
        namespace,
        name="editor",
        account="editor",
        group=GROUP,
        resources=[PLURAL],
        verbs=["patch", "get"],
    )
    _create(kube, namespace, make_incident("retarget", pod="checkout-1"))

    def retarget() -> str | None:
        try:
            editor.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, "retarget", {"spec": {"pod": "checkout-2"}}
            )
        except ApiException as exc:
            if exc.status == 403:
                return str(exc.body)
            raise
        raise AssertionError("an incident was pointed at another pod without the right")

    refusal = wait_for(retarget, timeout=30, what="the policy to refuse the new pod")
    assert REFUSAL in refusal and "pod checkout-2" in refusal, refusal
    # Changes that leave spec.pod alone are not the policy's business.
    labelled = editor.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, "retarget", {"metadata": {"labels": {"team": "a"}}}
    )
    assert labelled["spec"]["pod"] == "checkout-1"


def test_memwardens_own_identity_opens_incidents(
    operator: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    assert operator.identity is not None
    as_operator = api_client(operator.identity)
    creator = _identity(kube, namespace, may_debug=False)
    wait_for(
        lambda: _refusal(creator, namespace, "checkout-1"),
        timeout=30,
        what="the admission policy in effect",
    )
    created = _create(as_operator, namespace, make_incident("opened", pod="checkout-1"))
    assert created["metadata"]["name"] == "opened"


# --- the operator's own refusals ---------------------------------------------------------


def _running_pod(kube: client.ApiClient, namespace: str, name: str) -> str:
    """A pod labelled ``app: checkout`` that the operator sees Running (never scheduled)."""
    create_running_pod(kube, namespace, name, labels={"app": "checkout"})
    return name


def _policy(kube: client.ApiClient, namespace: str, **capture: Any) -> None:
    """The namespace's policy, once the operator has indexed it (its status is written)."""
    spec = make_policy_spec(memory={"request": "64Mi", "limit": "128Mi"}, capture=capture)
    custom = client.CustomObjectsApi(kube)
    custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, "memorypolicies", make_policy(namespace=namespace, spec=spec)
    )
    wait_policy_indexed(kube, namespace, "checkout")


def _settled(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    """Incident ``name``'s status once the operator decided (Capturing, or an end)."""

    def decided() -> dict[str, Any] | None:
        obj = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, name
        )
        status = dict(obj.get("status") or {})
        return status if status.get("phase") in {"Capturing", "Skipped", "Failed"} else None

    return wait_for(decided, timeout=60, what=f"incident {name} decided")


def _ask(kube: client.ApiClient, namespace: str, name: str, *, pod: str) -> dict[str, Any]:
    _create(kube, namespace, make_incident(name, pod=pod))
    return _settled(kube, namespace, name)


def test_no_capture_without_a_policy_that_allows_it(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    pod = _running_pod(kube, namespace, "checkout-1")
    status = _ask(kube, namespace, "ungoverned", pod=pod)
    assert (status["phase"], status["reason"]) == ("Skipped", "NoGoverningPolicy"), status
    assert "no MemoryPolicy governs pod checkout-1" in status["message"]

    _policy(kube, namespace, enabled=False)
    status = _ask(kube, namespace, "disabled", pod=pod)
    assert (status["phase"], status["reason"]) == ("Skipped", "CaptureDisabled"), status
    assert "policy checkout" in status["message"]
    debug = client.CoreV1Api(kube).read_namespaced_pod(pod, namespace).spec.ephemeral_containers
    assert not debug, "no debug container was added"


def test_no_capture_in_memwardens_own_namespace(
    memwarden: OperatorProcess, kube: client.ApiClient
) -> None:
    name = f"own-{memwarden.webhook_port}"
    try:
        status = _ask(kube, OPERATOR_NAMESPACE, name, pod="memwarden-0")
        assert (status["phase"], status["reason"]) == ("Skipped", "NamespaceNotGoverned"), status
        assert OPERATOR_NAMESPACE in status["message"]
    finally:
        client.CustomObjectsApi(kube).delete_namespaced_custom_object(
            GROUP, VERSION, OPERATOR_NAMESPACE, PLURAL, name
        )


def test_hand_made_incidents_keep_the_cooldown_and_the_cluster_cap(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    _policy(kube, namespace, cooldown="10m", artifacts=["heap"])
    first = _running_pod(kube, namespace, "checkout-1")
    status = _ask(kube, namespace, "first", pod=first)
    assert status["phase"] == "Capturing", status

    again = _ask(kube, namespace, "again", pod=first)
    assert (again["phase"], again["reason"]) == ("Skipped", "Cooldown"), again
    assert "incident first" in again["message"] and "cooldown 10m" in again["message"]

    # The cluster-wide cap of the session's operator (3 by default; the e2e loop, when it
    # ran first in the session, raised it): the first capture and cap - 1 more fill it.
    cap = Settings.from_env({**os.environ, **memwarden.extra_env}).capture.max_concurrent
    for n in range(2, cap + 1):
        pod = _running_pod(kube, namespace, f"checkout-{n}")
        assert _ask(kube, namespace, f"capture-{n}", pod=pod)["phase"] == "Capturing"
    one_more = _running_pod(kube, namespace, f"checkout-{cap + 1}")
    over = _ask(kube, namespace, "over-the-cap", pod=one_more)
    assert (over["phase"], over["reason"]) == ("Skipped", "ConcurrencyLimit"), over
    assert f"(cap {cap})" in over["message"]
