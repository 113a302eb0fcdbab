"""Which pod, policy and container a finding is about: pure.

A finding from Alertmanager names a namespace and a pod (and maybe a container); before
an incident can be opened it needs the policy that governs that pod and a container the
policy governs. The pods and policies come in (the operator's in-memory indexes); a
finding about a pod memwarden does not know or does not govern is set aside with a
reason, so it is counted and logged rather than silently dropped.

An alert's labels are written by whoever writes alerting rules, not by the pod's owner:
they choose no victim. The pod's governing policy must accept alerts
(``oomRisk.alerts: true``), and every namespace the alert names must be the pod's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from memwarden.api import CaptureSpec
from memwarden.risk.findings import Finding
from memwarden.selection import Candidate, select_for_pod

UnattributedReason = Literal[
    "unknown pod",
    "namespace mismatch",
    "no policy",
    "alerts not accepted",
    "container not governed",
]

#: Labels that name a namespace in an alert. ``namespace`` names the pod's; Prometheus
#: renames a scraped series' own ``namespace`` to ``exported_namespace`` when the target's
#: wins (``honor_labels: false``), so when both are present they must agree.
NAMESPACE_LABELS = ("namespace", "exported_namespace")


@dataclass(frozen=True)
class Unattributed:
    """A finding that opens nothing because it names no governed container."""

    finding: Finding
    reason: UnattributedReason
    message: str


@dataclass(frozen=True)
class Attribution:
    """Findings ready for :func:`memwarden.risk.opening.decide`, and the rest.

    ``captures`` holds the capture section of every policy named by ``findings``, keyed
    as ``decide`` wants it.
    """

    findings: tuple[Finding, ...]
    unattributed: tuple[Unattributed, ...]
    captures: Mapping[tuple[str, str], CaptureSpec]


def attribute(
    findings: Iterable[Finding],
    *,
    pods: Mapping[str, Sequence[Mapping[str, Any]]],
    policies: Mapping[str, Sequence[Candidate]],
) -> Attribution:
    """Give each finding its governing policy and a governed container.

    ``pods`` maps a namespace to its pods (full objects or ``status.pod_view``s);
    ``policies`` a namespace to its policies. A finding without a container gets the
    first container the policy governs; one naming a container the policy does not
    govern is set aside.
    """
    by_name: dict[str, dict[str, Mapping[str, Any]]] = {}
    ready: list[Finding] = []
    aside: list[Unattributed] = []
    captures: dict[tuple[str, str], CaptureSpec] = {}
    for finding in findings:
        where = f"{finding.namespace}/{finding.pod}"
        if finding.namespace not in by_name:
            by_name[finding.namespace] = {
                str((p.get("metadata") or {}).get("name")): p
                for p in pods.get(finding.namespace, ())
            }
        named = {finding.labels[k] for k in NAMESPACE_LABELS if finding.labels.get(k)}
        if named - {finding.namespace}:
            aside.append(
                Unattributed(
                    finding,
                    "namespace mismatch",
                    f"{where}: the alert also names namespace(s) "
                    f"{', '.join(sorted(named - {finding.namespace}))[:200]}",
                )
            )
            continue
        pod = by_name[finding.namespace].get(finding.pod)
        if pod is None:
            aside.append(
                Unattributed(finding, "unknown pod", f"{where}: no such running pod is governed")
            )
            continue
        if (pod.get("metadata") or {}).get("namespace") not in (None, finding.namespace):
            aside.append(Unattributed(finding, "namespace mismatch", f"{where}: not this pod's"))
            continue
        selection = select_for_pod(pod, policies.get(finding.namespace, ()))
        if selection.winner is None:
            aside.append(Unattributed(finding, "no policy", f"{where}: {selection.reason}"))
            continue
        policy = selection.winner
        if policy.spec.oomRisk is None or not policy.spec.oomRisk.alerts:
            aside.append(
                Unattributed(
                    finding,
                    "alerts not accepted",
                    f"{where}: policy {policy.name} does not accept alerts (oomRisk.alerts)",
                )
            )
            continue
        container = finding.container or selection.governed[0]
        if container not in selection.governed:
            aside.append(
                Unattributed(
                    finding,
                    "container not governed",
                    f"{where}: container {container!r} is not governed by policy {policy.name}",
                )
            )
            continue
        captures[(policy.namespace, policy.name)] = policy.spec.capture or CaptureSpec()
        ready.append(dataclasses.replace(finding, policy=policy.name, container=container))
    return Attribution(findings=tuple(ready), unattributed=tuple(aside), captures=captures)
