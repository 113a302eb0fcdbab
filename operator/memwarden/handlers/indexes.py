"""In-memory indexes kept current by kopf's watches: policies and pods by namespace.

Admission and status read these, never the API: a pod creation costs no API call.
"""

from __future__ import annotations

from typing import Any

import kopf
from pydantic import ValidationError

from memwarden.api import GROUP, VERSION, MemoryPolicySpec
from memwarden.handlers import state
from memwarden.risk.opening import incident_view
from memwarden.selection import Candidate
from memwarden.status import pod_view


def _governed_namespace(namespace: str | None, **_: Any) -> bool:
    return namespace is not None and namespace not in state.settings().never_governed


def _candidate(*, namespace: str, name: str, spec: kopf.Spec, meta: kopf.Meta) -> Candidate | None:
    """The policy as selection sees it; None when the schema would refuse it."""
    try:
        parsed = MemoryPolicySpec.model_validate(dict(spec))
    except ValidationError:
        return None
    created = str(meta.get("creationTimestamp") or "")
    return Candidate(namespace=namespace, name=name, created=created, spec=parsed)


@kopf.index(GROUP, VERSION, "memorypolicies")
def policy_index(
    *, namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[str, Candidate] | None:
    """namespace -> its policies (a policy the schema would refuse is left out)."""
    if namespace is None:
        return None
    candidate = _candidate(namespace=namespace, name=name, spec=spec, meta=meta)
    return None if candidate is None else {namespace: candidate}


@kopf.index("pods", when=_governed_namespace)
def pod_index(
    *, namespace: str | None, body: kopf.Body, **_: Any
) -> dict[str, dict[str, Any]] | None:
    """namespace -> its running pods, trimmed to what policies look at."""
    view = pod_view(body)
    return None if view is None or namespace is None else {namespace: view}


@kopf.on.event(GROUP, VERSION, "memorypolicies")
def mirror_policy(
    *,
    type: str | None,
    namespace: str | None,
    name: str,
    spec: kopf.Spec,
    meta: kopf.Meta,
    **_: Any,
) -> None:
    """Keep the label-anchored PolicyIndex that admission uses in step with the watch."""
    if namespace is None:
        return
    index = state.policies()
    if type == "DELETED":
        index.remove(namespace=namespace, name=name)
        return
    candidate = _candidate(namespace=namespace, name=name, spec=spec, meta=meta)
    if candidate is None:
        index.remove(namespace=namespace, name=name)
    else:
        index.upsert(candidate)


@kopf.index(GROUP, VERSION, "memoryincidents")
def incident_index(
    *, namespace: str | None, body: kopf.Body, **_: Any
) -> dict[str, dict[str, Any]] | None:
    """namespace -> its MemoryIncidents, trimmed to what opening decisions read.

    Cooldown, budget and the concurrency cap are derived from these (risk/opening.py);
    kopf fills every index before any handler runs, so a restarted operator sees the
    incidents it opened before.
    """
    return None if namespace is None else {namespace: incident_view(body)}
