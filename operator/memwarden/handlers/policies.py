"""MemoryPolicy handlers: validate on change, keep status current from the indexes.

memwarden never writes a policy's spec: only its status (and kopf's bookkeeping
annotations under ``memwarden.dev/``).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import kopf
from pydantic import ValidationError

from memwarden import metrics
from memwarden.api import GROUP, VERSION, MemoryPolicySpec, MemoryPolicyStatus
from memwarden.handlers import state
from memwarden.selection import Candidate
from memwarden.status import describe_change, policy_status


def _first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"spec.{where}: {error['msg']}"


@kopf.on.resume(GROUP, VERSION, "memorypolicies")
@kopf.on.create(GROUP, VERSION, "memorypolicies")
@kopf.on.update(GROUP, VERSION, "memorypolicies", field="spec")
def validate_policy(*, spec: kopf.Spec, logger: kopf.Logger, **_: Any) -> None:
    """The CRD's schema and CEL rules refuse bad input at apply time; this catches what
    slips past them (a CRD older than the operator) and says which field."""
    try:
        MemoryPolicySpec.model_validate(dict(spec))
    except ValidationError as exc:
        raise kopf.PermanentError(_first_error(exc)) from exc
    logger.debug("policy spec is valid")


@kopf.timer(
    GROUP,
    VERSION,
    "memorypolicies",
    interval=state.settings().status_interval_seconds,
    initial_delay=1.0,
    idle=None,
)
@metrics.reconciled("memorypolicy")
def refresh_status(
    *,
    namespace: str | None,
    name: str,
    meta: kopf.Meta,
    status: kopf.Status,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """Recompute matched/compliant/drifted from the pod index; write only on change."""
    policy_index: kopf.Index[str, Candidate] = kwargs["policy_index"]
    pod_index: kopf.Index[str, dict[str, Any]] = kwargs["pod_index"]
    if namespace is None:
        return
    candidates = list(policy_index.get(namespace, []))
    policy = next((c for c in candidates if c.name == name), None)
    if policy is None:  # invalid spec: validate_policy reports it
        return
    try:
        previous = MemoryPolicyStatus.model_validate(dict(status)) if status else None
    except ValidationError:
        previous = None
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    new = policy_status(
        policy=policy,
        generation=meta.get("generation"),
        pods=list(pod_index.get(namespace, [])),
        candidates=candidates,
        profile=state.settings().kubelet.profile(),
        now=now,
        previous=previous,
    )
    if previous is not None and new == previous:
        return
    change = describe_change(previous, new)
    if change:
        logger.info("status: %s", change)
        kopf.event(body, type="Normal", reason="StatusChanged", message=change)
    if state.settings().dry_run:
        return
    patch.status.update(new.model_dump(mode="json", exclude_none=True))
