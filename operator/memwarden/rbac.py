"""The Kubernetes permissions memwarden needs, in one declarative place.

Pure data, no I/O. The chart's ClusterRole and Role are written from these rules, and
tests keep the three in step: ``tests/unit/test_rbac.py`` scans the code for the API
calls it makes (kopf handlers' resources, kubernetes client methods) and fails when a
call has no rule here or a rule here serves no call; ``tests/integration/test_chart.py``
compares the rendered chart with these rules.

Least privilege: Secrets only in the operator's own namespace (a Role), the webhook
configuration only by name; pods are changed only through ``pods/resize`` (memory of
running containers) and recreated only through ``pods/eviction`` (which
PodDisruptionBudgets hold), never ``update`` or ``delete`` on pods. The rules
on tenants' pods (``watched``) are bound cluster-wide only when memwarden watches the
whole cluster; with a list of namespaces, by a Role in each of them and nowhere else.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

#: Placeholders in ``resource_names``, replaced by the names the chart gives.
WEBHOOK_CONFIGURATION = "<webhook-configuration>"
CA_SECRET = "<webhook-ca-secret>"
LEADER_LEASE = "<leader-lease>"

#: ``cluster``: the ClusterRole. ``namespace``: a Role in the operator's own namespace.
#: ``watched``: what memwarden may do to tenants' pods and namespaces: the ClusterRole when
#: it watches the whole cluster, else a Role in each watched namespace (a leaked token then
#: reaches no pod elsewhere).
Scope = Literal["cluster", "namespace", "watched"]
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
        ("get", "list", "watch", "patch"),
        "kopf watches policies (index, events) and removes its finalizer from a policy an "
        "older memwarden left it on (policies need none: uninstalling must not hang a "
        "namespace); the status loop re-reads one after a conflicting write; memwarden "
        "never writes a policy's spec, only its status",
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
        ("pods",),
        ("get", "list", "watch"),
        "the pod index behind policy status and alerts; a capture reads its target pod",
        scope="watched",
    ),
    Rule(
        "",
        ("namespaces",),
        ("get",),
        "a capture reads the pod's namespace labels: may its Pod Security level add SYS_PTRACE",
        scope="watched",
    ),
    Rule(
        "",
        ("pods/ephemeralcontainers",),
        ("patch",),
        "a capture adds the toolbox as an ephemeral container (never the pod's spec)",
        scope="watched",
    ),
    Rule(
        "",
        ("pods/resize",),
        ("patch",),
        "update InPlace/InPlaceOrRecreate resizes running containers' memory (nothing else)",
        scope="watched",
    ),
    Rule(
        "",
        ("pods/eviction",),
        ("create",),
        "update Recreate/InPlaceOrRecreate evicts drifted pods (budgets hold; never a delete)",
        scope="watched",
    ),
    Rule(
        "policy",
        ("poddisruptionbudgets",),
        ("list",),
        "the eviction gate reads the budgets of a pod's namespace: may more than one be down",
        scope="watched",
    ),
    Rule(
        "",
        ("events",),
        ("create",),
        "handler outcomes, status changes and captures are told as Events on the objects",
        scope="watched",
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
    Rule(
        "coordination.k8s.io",
        ("leases",),
        ("create",),
        "leader election: the first replica creates the Lease (create has no name to pin)",
        scope="namespace",
    ),
    Rule(
        "coordination.k8s.io",
        ("leases",),
        ("get", "update"),
        "leader election: replicas read, acquire, renew and release the Lease, by name, in "
        "the operator's namespace only",
        scope="namespace",
        resource_names=(LEADER_LEASE,),
    ),
)


def rules(
    *, scope: Scope, self_signed: bool = True, namespaced_watch: bool = False
) -> tuple[Rule, ...]:
    """The rules of one scope, as they apply in the given certificate mode. The ClusterRole
    (``cluster``) holds the ``watched`` rules too, unless memwarden watches a list of
    namespaces (``namespaced_watch``): then each of them gets a Role with those."""
    scopes = {scope} | ({"watched"} if scope == "cluster" and not namespaced_watch else set())
    return tuple(
        rule
        for rule in RULES
        if rule.scope in scopes and (self_signed or rule.condition == "always")
    )


def policy_rules(
    *,
    scope: Scope,
    self_signed: bool = True,
    namespaced_watch: bool = False,
    webhook_configuration: str = "memwarden",
    ca_secret: str = "memwarden-webhook-ca",
    leader_lease: str = "memwarden",
) -> list[dict[str, Any]]:
    """The PolicyRules of the ClusterRole (``cluster``), the Role in the operator's namespace
    (``namespace``) or the Role in each watched namespace (``watched``)."""
    names = {
        WEBHOOK_CONFIGURATION: webhook_configuration,
        CA_SECRET: ca_secret,
        LEADER_LEASE: leader_lease,
    }
    chosen = rules(scope=scope, self_signed=self_signed, namespaced_watch=namespaced_watch)
    return [rule.policy_rule(names=names) for rule in chosen]


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
    "LEADER_LEASE",
    "RULES",
    "WEBHOOK_CONFIGURATION",
    "Rule",
    "permissions",
    "policy_rules",
    "rules",
]
