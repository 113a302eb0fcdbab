"""The Kubernetes permissions memwarden needs, in one declarative place.

Pure data, no I/O. The chart's ClusterRole and Role are written from these rules, and
tests keep the three in step: ``tests/unit/test_rbac.py`` scans the code for the API
calls it makes (kopf handlers' resources, kubernetes client methods) and fails when a
call has no rule here or a rule here serves no call; ``tests/integration/test_chart.py``
compares the rendered chart with these rules.

Least privilege: Secrets only in the operator's own namespace (a Role), the webhook
configuration only by name, no ``pods/resize`` or ``pods/eviction`` until the code
resizes or evicts (``update`` modes other than ``Initial`` do not exist yet).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: Placeholders in ``resource_names``, replaced by the names the chart gives.
WEBHOOK_CONFIGURATION = "<webhook-configuration>"
CA_SECRET = "<webhook-ca-secret>"

Scope = Literal["cluster", "namespace"]
#: When a rule applies: always, or only when memwarden makes its own webhook certificates.
Condition = Literal["always", "selfSigned"]


@dataclass(frozen=True)
class Rule:
    """One PolicyRule, with the reason memwarden needs it."""

    api_group: str
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    why: str
    scope: Scope = "cluster"
    resource_names: tuple[str, ...] = ()
    condition: Condition = "always"

    def policy_rule(self, *, names: dict[str, str]) -> dict[str, Any]:
        """The Kubernetes PolicyRule, placeholders in ``resource_names`` replaced."""
        rule: dict[str, Any] = {
            "apiGroups": [self.api_group],
            "resources": list(self.resources),
            "verbs": list(self.verbs),
        }
        if self.resource_names:
            rule["resourceNames"] = [names.get(n, n) for n in self.resource_names]
        return rule


RULES: tuple[Rule, ...] = (
    Rule(
        "memwarden.dev",
        ("memorypolicies",),
        ("list", "watch"),
        "kopf watches policies (index, events); memwarden never writes a policy, only its status",
    ),
    Rule(
        "memwarden.dev",
        ("memorypolicies/status",),
        ("patch",),
        "the status loop writes matched/compliant/drifted pods",
    ),
    Rule(
        "memwarden.dev",
        ("memoryincidents",),
        ("get", "list", "watch", "create", "patch"),
        "the risk loop opens incidents; kopf watches them and patches its annotations and "
        "finalizer (evidence deleted with the incident); the evidence API reads one",
    ),
    Rule(
        "memwarden.dev",
        ("memoryincidents/status",),
        ("patch",),
        "incident phase, artifacts and analysis are written to the status",
    ),
    Rule(
        "",
        ("pods",),
        ("get", "list", "watch"),
        "the pod index behind policy status and alerts; a capture reads its target pod",
    ),
    Rule(
        "",
        ("namespaces",),
        ("get",),
        "a capture reads the pod's namespace labels: may its Pod Security level add SYS_PTRACE",
    ),
    Rule(
        "",
        ("pods/ephemeralcontainers",),
        ("patch",),
        "a capture adds the toolbox as an ephemeral container (never the pod's spec)",
    ),
    Rule(
        "",
        ("events",),
        ("create",),
        "handler outcomes, status changes and captures are told as Events on the objects",
    ),
    Rule(
        "authentication.k8s.io",
        ("tokenreviews",),
        ("create",),
        "the evidence API authenticates callers by their Kubernetes token",
    ),
    Rule(
        "authorization.k8s.io",
        ("subjectaccessreviews",),
        ("create",),
        "the evidence API asks whether the caller may read incidents in the namespace",
    ),
    Rule(
        "admissionregistration.k8s.io",
        ("mutatingwebhookconfigurations",),
        ("get", "patch"),
        "certificate rotation publishes the new CA in memwarden's own webhook's caBundle",
        resource_names=(WEBHOOK_CONFIGURATION,),
        condition="selfSigned",
    ),
    Rule(
        "",
        ("secrets",),
        ("create",),
        "the webhook CA is kept in a Secret shared by replicas (create has no name to pin)",
        scope="namespace",
        condition="selfSigned",
    ),
    Rule(
        "",
        ("secrets",),
        ("get", "update"),
        "read and rotate that CA Secret, by name, in the operator's namespace only",
        scope="namespace",
        resource_names=(CA_SECRET,),
        condition="selfSigned",
    ),
)


def rules(*, scope: Scope, self_signed: bool = True) -> tuple[Rule, ...]:
    """The rules of one scope, as they apply in the given certificate mode."""
    return tuple(
        rule
        for rule in RULES
        if rule.scope == scope and (self_signed or rule.condition == "always")
    )


def policy_rules(
    *,
    scope: Scope,
    self_signed: bool = True,
    webhook_configuration: str = "memwarden",
    ca_secret: str = "memwarden-webhook-ca",
) -> list[dict[str, Any]]:
    """The PolicyRules of the ClusterRole (``cluster``) or the Role (``namespace``)."""
    names = {WEBHOOK_CONFIGURATION: webhook_configuration, CA_SECRET: ca_secret}
    return [rule.policy_rule(names=names) for rule in rules(scope=scope, self_signed=self_signed)]


def permissions(*, self_signed: bool = True) -> frozenset[tuple[str, str, str]]:
    """Every (apiGroup, resource, verb) granted, whatever the scope or resource names."""
    return frozenset(
        (rule.api_group, resource, verb)
        for rule in RULES
        if self_signed or rule.condition == "always"
        for resource in rule.resources
        for verb in rule.verbs
    )


__all__ = [
    "CA_SECRET",
    "RULES",
    "WEBHOOK_CONFIGURATION",
    "Rule",
    "permissions",
    "policy_rules",
    "rules",
]
