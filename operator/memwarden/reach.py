"""The operator's reach: a ValidatingAdmissionPolicy that holds memwarden's own service
account to the debug container its capture plan makes.

Pure: names in, manifests out. RBAC can say that memwarden may ``patch
pods/ephemeralcontainers``, not *what* it may add; without this policy a leaked operator
token runs any image, with any command and capabilities, in any pod it can reach. The
policy admits, from that one user (``matchConditions`` on ``request.userInfo.username``),
only ephemeral containers shaped as :func:`memwarden.capture.plan.plan_ephemeral_container`
makes them: the toolbox image, ``memwarden capture`` with the plan's flags, the plan's
environment (the upload URL pointing at the evidence API), the plan's securityContext, and
nothing else. Everyone else's ephemeral containers (``kubectl debug``) are not its business.

The chart's ``templates/operator-reach-policy.yaml`` mirrors :func:`operator_reach_policy`
(a test renders it and compares), and the test cluster installs this function's output,
so the end-to-end captures run under the same policy a cluster gets.

The container and securityContext fields are those of Kubernetes v1.37 (the fields a test
reads from the API server's OpenAPI must be exactly these): a field a later release adds
is checked by nobody until it is named here, so the test fails on the version bump.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from memwarden.capture.plan import (
    ENV_UPLOAD_URL,
    NAME_PREFIX,
    TERMINATION_MESSAGE_PATH,
    TOOLBOX_COMMAND,
    TOOLBOX_ENV,
    TOOLBOX_FLAGS,
)

__all__ = [
    "CHART_TEMPLATE",
    "CONTAINER_FIELDS",
    "SECURITY_CONTEXT_FIELDS",
    "chart_template",
    "operator_reach_policy",
    "service_account_username",
]

#: EphemeralContainer fields: checked by a validation of the policy, left free (harmless,
#: or refused by the API server's own validation for ephemeral containers), or forbidden.
CONTAINER_CHECKED = (
    "name",
    "image",
    "command",
    "args",
    "workingDir",
    "env",
    "envFrom",
    "securityContext",
    "terminationMessagePath",
    "stdin",
    "stdinOnce",
    "tty",
)
#: ``resources`` is defaulted to ``{}`` and must stay empty (API validation).
CONTAINER_FREE = ("imagePullPolicy", "targetContainerName", "terminationMessagePolicy", "resources")
CONTAINER_FORBIDDEN = (
    "volumeMounts",
    "volumeDevices",
    "ports",
    "lifecycle",
    "livenessProbe",
    "readinessProbe",
    "startupProbe",
    "resizePolicy",
    "restartPolicy",
    "restartPolicyRules",
)
CONTAINER_FIELDS = frozenset(CONTAINER_CHECKED + CONTAINER_FREE + CONTAINER_FORBIDDEN)

#: SecurityContext fields. The identity ones are free: the plan may run the toolbox as the
#: target's user, or as root with only SYS_PTRACE (capabilities are checked).
SECURITY_CONTEXT_CHECKED = (
    "privileged",
    "allowPrivilegeEscalation",
    "capabilities",
    "seccompProfile",
)
SECURITY_CONTEXT_FREE = ("runAsUser", "runAsGroup", "runAsNonRoot")
SECURITY_CONTEXT_FORBIDDEN = (
    "procMount",
    "seLinuxOptions",
    "appArmorProfile",
    "windowsOptions",
    "readOnlyRootFilesystem",
)
SECURITY_CONTEXT_FIELDS = frozenset(
    SECURITY_CONTEXT_CHECKED + SECURITY_CONTEXT_FREE + SECURITY_CONTEXT_FORBIDDEN
)

#: The one capability the toolbox adds (gcore attaches with ptrace).
PTRACE = "SYS_PTRACE"


def _cel(value: Any) -> str:
    """A CEL literal (string or list of strings): JSON's quoting is CEL's for these."""
    return json.dumps(value)


def service_account_username(*, namespace: str, name: str) -> str:
    """The user name the API server gives a ServiceAccount's tokens."""
    return f"system:serviceaccount:{namespace}:{name}"


def _validations(*, toolbox_image: str, evidence_authority: str) -> list[dict[str, Any]]:
    each = "variables.added.all(c, {})"
    sc = "c.securityContext"
    uploads = [f"{scheme}://{evidence_authority}/" for scheme in ("https", "http")]
    upload_ok = " || ".join(f"e.value.startsWith({_cel(u)})" for u in uploads)
    command = " && ".join(
        [
            "has(c.command) && size(c.command) >= 2",
            f"c.command[0] == {_cel(TOOLBOX_COMMAND[0])}",
            f"c.command[1] == {_cel(TOOLBOX_COMMAND[1])}",
            # An option must be one the plan passes, written out (no --upload=..., no
            # abbreviation); the only path a value may be is the termination log's.
            f"c.command.all(a, !a.startsWith('-') || a in {_cel(list(TOOLBOX_FLAGS))})",
            f"c.command.all(a, !a.contains('/') || a == {_cel(TERMINATION_MESSAGE_PATH)})",
            "!has(c.args) && !has(c.workingDir)",
            f"c.name.startsWith({_cel(NAME_PREFIX)})",
        ]
    )
    env = " && ".join(
        [
            "!has(c.envFrom)",
            f"(!has(c.env) || c.env.all(e, e.name in {_cel(list(TOOLBOX_ENV))}"
            f" && !has(e.valueFrom) && (e.name != {_cel(ENV_UPLOAD_URL)}"
            f" || (has(e.value) && ({upload_ok})))))",
        ]
    )
    security = " && ".join(
        [
            f"has({sc})",
            f"(!has({sc}.privileged) || !{sc}.privileged)",
            f"has({sc}.allowPrivilegeEscalation) && !{sc}.allowPrivilegeEscalation",
            # SYS_PTRACE at most, or exactly the target's own capabilities (a root target's:
            # the kernel wants a reader's capabilities to cover its target's).
            f"((has({sc}.capabilities) && has({sc}.capabilities.drop)"
            f" && 'ALL' in {sc}.capabilities.drop && (!has({sc}.capabilities.add)"
            f" || {sc}.capabilities.add.all(x, x == {_cel(PTRACE)})))"
            f" || object.spec.containers.exists(t, t.name == c.targetContainerName"
            f" && (has(t.securityContext) && has(t.securityContext.capabilities)"
            f" ? (has({sc}.capabilities) && {sc}.capabilities == t.securityContext.capabilities)"
            f" : !has({sc}.capabilities))))",
            f"has({sc}.seccompProfile) && {sc}.seccompProfile.type == 'RuntimeDefault'",
            *(f"!has({sc}.{field})" for field in SECURITY_CONTEXT_FORBIDDEN),
        ]
    )
    fields = " && ".join(
        [
            *(f"!has(c.{field})" for field in CONTAINER_FORBIDDEN),
            *(f"(!has(c.{field}) || !c.{field})" for field in ("stdin", "stdinOnce", "tty")),
            f"(!has(c.terminationMessagePath) || c.terminationMessagePath == "
            f"{_cel(TERMINATION_MESSAGE_PATH)})",
        ]
    )
    who = "memwarden's service account may add only its toolbox"
    return [
        {
            "expression": each.format(f"c.image == {_cel(toolbox_image)}"),
            "message": f"{who}: image must be {toolbox_image}",
            "reason": "Forbidden",
        },
        {
            "expression": each.format(command),
            "message": f"{who}: command must be {' '.join(TOOLBOX_COMMAND)} with only the "
            f"flags {', '.join(TOOLBOX_FLAGS)} (no args, no workingDir, no path but "
            f"{TERMINATION_MESSAGE_PATH}), named {NAME_PREFIX}*",
            "reason": "Forbidden",
        },
        {
            "expression": each.format(env),
            "message": f"{who}: env may set only {', '.join(TOOLBOX_ENV)} as plain values "
            f"(no envFrom, no valueFrom: no Secrets), {ENV_UPLOAD_URL} under "
            f"{' or '.join(uploads)}",
            "reason": "Forbidden",
        },
        {
            "expression": each.format(security),
            "message": f"{who}: securityContext must be the plan's: not privileged, "
            f"allowPrivilegeEscalation false, capabilities drop ALL and add at most {PTRACE} "
            f"(or exactly the target container's own), "
            f"seccompProfile RuntimeDefault, nothing but runAsUser/runAsGroup/runAsNonRoot "
            f"besides",
            "reason": "Forbidden",
        },
        {
            "expression": each.format(fields),
            "message": f"{who}: no {', '.join(CONTAINER_FORBIDDEN)}; no stdin or tty; "
            f"terminationMessagePath {TERMINATION_MESSAGE_PATH}",
            "reason": "Forbidden",
        },
    ]


def operator_reach_policy(
    *,
    service_account: str,
    namespace: str,
    toolbox_image: str,
    evidence_authority: str,
    name: str = "memwarden-operator-reach",
) -> list[dict[str, Any]]:
    """The ValidatingAdmissionPolicy and its binding (``Deny``), both named ``name``.

    ``evidence_authority`` is the evidence API's ``host:port`` as the debug containers
    reach it (the authority of ``evidence_base_url``): the upload URL must point there, so
    the toolbox cannot be sent to stream a core dump anywhere else.
    """
    if not toolbox_image:
        raise ValueError("toolbox_image: must not be empty")
    if not evidence_authority or "/" in evidence_authority:
        raise ValueError(f"evidence_authority: {evidence_authority!r} is not host:port")
    username = service_account_username(namespace=namespace, name=service_account)
    labels = {"app.kubernetes.io/name": "memwarden"}
    policy = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicy",
        "metadata": {"name": name, "labels": labels},
        "spec": {
            # An expression that cannot be evaluated refuses: only memwarden's requests
            # reach the validations (matchConditions), and a capture is never worth a hole.
            "failurePolicy": "Fail",
            "matchConstraints": {
                "resourceRules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["UPDATE"],
                        "resources": ["pods/ephemeralcontainers"],
                    }
                ]
            },
            "matchConditions": [
                {
                    "name": "memwarden-service-account",
                    "expression": f"request.userInfo.username == {_cel(username)}",
                }
            ],
            "variables": [
                {
                    # Only the containers this request adds: ephemeral containers cannot be
                    # changed or removed, and one a person added earlier is not ours to judge.
                    "name": "added",
                    "expression": "has(object.spec.ephemeralContainers) ? "
                    "object.spec.ephemeralContainers.filter(c, "
                    "!(has(oldObject.spec.ephemeralContainers) && "
                    "oldObject.spec.ephemeralContainers.exists(o, o.name == c.name))) : []",
                }
            ],
            "validations": _validations(
                toolbox_image=toolbox_image, evidence_authority=evidence_authority
            ),
        },
    }
    binding = {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "ValidatingAdmissionPolicyBinding",
        "metadata": {"name": name, "labels": labels},
        "spec": {"policyName": name, "validationActions": ["Deny"]},
    }
    return [policy, binding]


#: The chart's copy, written by :func:`chart_template` (a unit test fails on drift).
CHART_TEMPLATE = "charts/memwarden/templates/operator-reach-policy.yaml"

#: Placeholders of :func:`chart_template` and the Helm expressions that replace them. The
#: values they render to (DNS names, an image reference, host:port) need no quoting in a
#: CEL or YAML string.
_HELM = {
    "@NAME@": '{{ include "memwarden.fullname" . }}-operator-reach',
    "@SERVICE_ACCOUNT@": '{{ include "memwarden.serviceAccountName" . }}',
    "@NAMESPACE@": "{{ .Release.Namespace }}",
    "@TOOLBOX_IMAGE@": '{{ include "memwarden.toolboxImage" . }}',
    "@EVIDENCE_AUTHORITY@": '{{ include "memwarden.evidenceAuthority" . }}',
}
_LABELS = "  labels:\n    app.kubernetes.io/name: memwarden\n"
_HELM_LABELS = '  labels:\n    {{- include "memwarden.labels" . | nindent 4 }}\n'


def chart_template() -> str:
    """The chart's template of :func:`operator_reach_policy`: the same manifests with the
    release's names, toolbox image and evidence address filled in by Helm."""
    docs = operator_reach_policy(
        service_account="@SERVICE_ACCOUNT@",
        namespace="@NAMESPACE@",
        toolbox_image="@TOOLBOX_IMAGE@",
        evidence_authority="@EVIDENCE_AUTHORITY@",
        name="@NAME@",
    )
    body = yaml.safe_dump_all(docs, sort_keys=False, width=10**6)
    assert body.count(_LABELS) == len(docs)
    body = body.replace(_LABELS, _HELM_LABELS)
    for placeholder, expression in _HELM.items():
        body = body.replace(placeholder, expression)
    assert "@" not in body, "a placeholder was left in the chart template"
    return (
        "{{- /*\n"
        "  Written by operator/memwarden/reach.py chart_template(); do not edit by hand: a test\n"
        "  fails when they differ. memwarden's own service account may add only toolbox-shaped\n"
        '  ephemeral containers (docs/security.md, "A leaked operator token").\n'
        "*/ -}}\n"
        "{{- if .Values.operatorReachPolicy.enabled }}\n" + body + "{{- end }}\n"
    )
