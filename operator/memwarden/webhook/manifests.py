"""Manifests memwarden ships besides its CRDs: the MutatingWebhookConfiguration, and the
ValidatingAdmissionPolicy that keeps MemoryIncidents from being a way around RBAC.

Pure. kopf could manage a webhook configuration itself, but it fixes ``timeoutSeconds``
at 30, and a pod creation that waits 30 s on a slow operator is exactly what users
complain about. memwarden ships its own: ``failurePolicy: Ignore``, a short timeout, and
never for ``kube-system`` or memwarden's own namespace, so pod creation never depends on
memwarden being up.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable
from typing import Any

WEBHOOK_NAME = "pods.memwarden.dev"
#: The kopf handler id of the pod mutation handler; also the URL path kopf serves it on.
POD_HANDLER_ID = "memwarden-pods"
#: Seconds the API server waits for us before it admits the pod without memwarden.
DEFAULT_TIMEOUT_SECONDS = 3
#: Pods in namespaces carrying this label are never sent to memwarden.
OPT_OUT_LABEL = "memwarden.dev/ignore"


def mutating_webhook_configuration(
    *,
    ca_bundle: bytes,
    url: str | None = None,
    service: dict[str, Any] | None = None,
    excluded_namespaces: Iterable[str],
    timeout_seconds: int = DEFAULT_TIMEOUT_SECONDS,
    name: str = "memwarden",
) -> dict[str, Any]:
    """The configuration for pod CREATE, addressed by ``url`` (local) or ``service`` (chart)."""
    if (url is None) == (service is None):
        raise ValueError("give exactly one of url or service")
    if not 1 <= timeout_seconds <= 5:
        raise ValueError("timeout_seconds must be 1..5: pod creation must not wait on memwarden")
    client_config: dict[str, Any] = {"caBundle": base64.b64encode(ca_bundle).decode("ascii")}
    if url is not None:
        client_config["url"] = f"{url.rstrip('/')}/{POD_HANDLER_ID}"
    else:
        client_config["service"] = {**(service or {}), "path": f"/{POD_HANDLER_ID}"}
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": name, "labels": {"app.kubernetes.io/name": "memwarden"}},
        "webhooks": [
            {
                "name": WEBHOOK_NAME,
                "admissionReviewVersions": ["v1"],
                "sideEffects": "NoneOnDryRun",
                "failurePolicy": "Ignore",
                "timeoutSeconds": timeout_seconds,
                "reinvocationPolicy": "Never",
                "matchPolicy": "Equivalent",
                "clientConfig": client_config,
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
                "namespaceSelector": {
                    "matchExpressions": [
                        {
                            "key": "kubernetes.io/metadata.name",
                            "operator": "NotIn",
                            "values": sorted(set(excluded_namespaces)),
                        },
                        {"key": OPT_OUT_LABEL, "operator": "DoesNotExist"},
                    ]
                },
            }
        ],
    }


# --- who may cause a capture (issue 12 item 1) -----------------------------------------

#: CEL: the requester may add ephemeral containers to the incident's pod, which is what a
#: capture does on their behalf (``kubectl debug`` needs the same permission).
MAY_PATCH_EPHEMERAL_CONTAINERS = (
    "authorizer.group('').resource('pods').subresource('ephemeralcontainers')"
    ".namespace(request.namespace).name(object.spec.pod).check('patch').allowed()"
)


def service_account_username(*, namespace: str, name: str) -> str:
    """The user name the API server gives a ServiceAccount's tokens."""
    return f"system:serviceaccount:{namespace}:{name}"


def incident_admission_policy(
    *, operator_username: str, name: str = "memwarden-incidents"
) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy and its binding: a MemoryIncident is admitted only from
    someone who may ``patch pods/ephemeralcontainers`` on the pod it names.

    Without it, ``create memoryincidents`` would be a way around RBAC: memwarden adds a
    ``SYS_PTRACE`` debug container and dumps the pod's memory for whoever asks. Checked on
    CREATE, and on UPDATE when ``spec.pod`` changes. memwarden's own ServiceAccount
    (``operator_username``) is excepted: it opens incidents for the pods its policies
    govern. ``failurePolicy: Fail``: if the check cannot run, nobody gets a capture.
    """
    return _admission_policy(
        name=name,
        operations=["CREATE", "UPDATE"],
        resource="memoryincidents",
        match_conditions=[
            {
                "name": "not-memwarden",
                "expression": f"request.userInfo.username != {_cel_string(operator_username)}",
            },
            {
                "name": "new-or-retargeted",
                "expression": "request.operation == 'CREATE' || "
                "object.spec.pod != oldObject.spec.pod",
            },
        ],
        validation={
            "expression": MAY_PATCH_EPHEMERAL_CONTAINERS,
            "reason": "Forbidden",
            "messageExpression": (
                "'a MemoryIncident makes memwarden add a debug container to pod ' + "
                "object.spec.pod + ': ' + request.userInfo.username + ' may not patch "
                "pods/ephemeralcontainers on it in namespace ' + request.namespace"
            ),
        },
    )


#: CEL: a MemoryPolicy update that changes nothing but removes finalizers.
ONLY_FINALIZERS_REMOVED = " && ".join(
    [
        "object.spec == oldObject.spec",
        *(
            f"(has(object.metadata.{field}) ? has(oldObject.metadata.{field}) && "
            f"object.metadata.{field} == oldObject.metadata.{field} : "
            f"!has(oldObject.metadata.{field}))"
            for field in ("labels", "annotations", "ownerReferences")
        ),
        "(!has(object.metadata.finalizers) || (has(oldObject.metadata.finalizers) && "
        "object.metadata.finalizers.all(f, f in oldObject.metadata.finalizers)))",
    ]
)


def policy_guard(
    *, operator_username: str, name: str = "memwarden-policies"
) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy and its binding: memwarden's own ServiceAccount may only
    remove finalizers from a MemoryPolicy (never change its spec, labels, annotations or
    owners).

    RBAC gives it ``patch`` on policies for one reason: kopf removes its finalizer from a
    policy an older memwarden left it on. RBAC cannot say which fields; without this, a
    leaked operator token could rewrite every policy, and so every governed pod's memory.
    Status writes go to ``memorypolicies/status``, which this policy does not match.
    """
    return _admission_policy(
        name=name,
        operations=["UPDATE"],
        resource="memorypolicies",
        match_conditions=[
            {
                "name": "memwarden",
                "expression": f"request.userInfo.username == {_cel_string(operator_username)}",
            }
        ],
        validation={
            "expression": ONLY_FINALIZERS_REMOVED,
            "reason": "Forbidden",
            "message": "memwarden's service account may only remove finalizers from a MemoryPolicy",
        },
    )


def _admission_policy(
    *,
    name: str,
    operations: list[str],
    resource: str,
    match_conditions: list[dict[str, str]],
    validation: dict[str, str],
) -> list[dict[str, Any]]:
    """A ValidatingAdmissionPolicy on one of memwarden's kinds (failing closed) and its
    Deny binding."""
    labels = {"app.kubernetes.io/name": "memwarden"}
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": ["memwarden.dev"],
                        "apiVersions": ["*"],
                        "operations": operations,
                        "resources": [resource],
                    }
                ]
            },
            "matchConditions": match_conditions,
            "validations": [validation],
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": dict(labels)},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    return [policy, binding]


def _cel_string(text: str) -> str:
    """A CEL string literal (user names are DNS labels and colons; quote defensively)."""
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"
