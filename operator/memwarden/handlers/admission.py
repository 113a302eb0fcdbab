"""Pod admission: apply the governing policy to a pod being created.

Never refuses a pod and never raises: any failure here admits the pod unchanged and is
logged (the webhook configuration's ``failurePolicy: Ignore`` covers a down operator;
this covers a broken one).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import jsonpatch
import kopf

from memwarden import metrics
from memwarden.handlers import state
from memwarden.manifests import POD_HANDLER_ID
from memwarden.mutation import PodShapeError, admission_ops, plan_pod
from memwarden.selection import container_names

logger = logging.getLogger(__name__)


@kopf.on.mutate("pods", id=POD_HANDLER_ID, operations=["CREATE"], ignore_failures=True)
def admit_pod(
    *,
    body: kopf.Body,
    namespace: str | None,
    patch: kopf.Patch,
    warnings: list[str],
    **kwargs: Any,
) -> None:
    """Set resources, GOMEMLIMIT/GOGC and the applied annotation from the governing policy."""
    started = time.perf_counter()
    outcome = "error"
    try:
        outcome = _admit(body=body, namespace=namespace, patch=patch, warnings=warnings)
    finally:
        metrics.WEBHOOK_SECONDS.observe(time.perf_counter() - started)
        metrics.WEBHOOK_REQUESTS.labels(outcome=outcome).inc()


def _admit(
    *, body: kopf.Body, namespace: str | None, patch: kopf.Patch, warnings: list[str]
) -> str:
    """The admission itself; returns its outcome (one of ``metrics.WEBHOOK_OUTCOMES``)."""
    settings = state.settings()
    if namespace is None or namespace in settings.never_governed:
        return "unchanged"
    index = state.policies()
    pod = dict(body)
    pod_name = body.meta.get("name") or f"{body.meta.get('generateName', '')}*"
    try:
        regular, sidecars = container_names(pod)
        selection = index.select(
            namespace=namespace,
            labels=dict(body.meta.get("labels") or {}),
            container_names=regular,
            sidecar_names=sidecars,
        )
        plan = plan_pod(pod=pod, selection=selection, profile=settings.kubelet.profile())
    except PodShapeError as exc:
        logger.warning("pod %s/%s admitted unchanged: %s", namespace, pod_name, exc)
        return "unchanged"
    except Exception:  # Fail open by design: a memwarden bug must not block pod creation.
        logger.exception("pod %s/%s admitted unchanged: memwarden failed", namespace, pod_name)
        return "error"
    winner = selection.winner
    if winner is None:
        return "unchanged"
    if plan.infeasible:
        warnings.append(f"memwarden: policy {winner.name} not applied: {plan.infeasible}")
        logger.warning(
            "pod %s/%s: policy %s not applied: %s",
            namespace,
            pod_name,
            winner.name,
            plan.infeasible,
        )
        return "infeasible"
    if selection.others:
        warnings.append(f"memwarden: policy {winner.name} governs this pod: {selection.reason}")
    ops = admission_ops(plan, dry_run=settings.dry_run)
    if not ops:
        if winner.spec.mode == "Audit":
            warnings.extend(f"memwarden (audit, policy {winner.name}): {d}" for d in plan.drift)
            return "audit"
        return "unchanged"
    patch.fns.append(lambda raw: jsonpatch.apply_patch(raw, ops, in_place=True))
    logger.info(
        "pod %s/%s admitted with policy %s: %s",
        namespace,
        pod_name,
        winner.name,
        "; ".join(plan.drift) or "annotation only",
    )
    return "audit" if winner.spec.mode == "Audit" else "mutated"
