"""The OOM-risk loop: a timer per MemoryPolicy with ``oomRisk``. Wiring only.

Each cycle: the policy's queries (one per enabled signal, never per pod) run off the
event loop; the pure core joins them to the governed containers of the pod index and
decides, from the incident index, what to open; incidents are created through the kube
adapter. Openings and suppressed triggers are counted and announced on the policy
(an Event, rate-limited per pod and reason). When Prometheus fails the policy says so
(``RiskEvaluation=False``) and the timer backs off; admission never depends on it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from typing import Any

import kopf

from memwarden import metrics
from memwarden.api import GROUP, VERSION, CaptureSpec
from memwarden.handlers import state
from memwarden.kube import INCIDENTS, Conflict, Kube, KubeError
from memwarden.quantity import parse_duration
from memwarden.risk.cycle import Announcements, backoff_delay, with_risk_condition
from memwarden.risk.findings import Finding
from memwarden.risk.opening import Open, decide, incident_view, rfc3339
from memwarden.risk.prometheus import PrometheusClient, PrometheusError
from memwarden.risk.promql import Windows, policy_queries
from memwarden.risk.signals import (
    evaluate,
    governed_containers,
    oom_killed,
    smallest_limit,
    sort_findings,
)
from memwarden.selection import Candidate

#: Incidents this process created, kept until the incident index has them: kopf's watch
#: lags the create by a moment, and a second policy's cycle must already count them.
_LEDGER_SECONDS = 120.0

_prometheus: PrometheusClient | None = None
_kube: Kube | None = None
_announcements = Announcements()
_ledger: dict[str, tuple[float, dict[str, Any]]] = {}


def prometheus() -> PrometheusClient | None:
    """The process's Prometheus client; None when risk evaluation is not configured."""
    global _prometheus
    settings = state.settings()
    if settings.prometheus_url is None:
        return None
    if _prometheus is None:
        _prometheus = PrometheusClient(
            settings.prometheus_url, timeout=settings.prometheus_timeout_seconds
        )
    return _prometheus


def kube() -> Kube:
    global _kube
    if _kube is None:
        _kube = Kube.from_environment()
    return _kube


def _has_oom_risk(spec: kopf.Spec, **_: Any) -> bool:
    return bool(spec.get("oomRisk"))


def _windows() -> Windows:
    settings = state.settings()
    return Windows(
        regression=settings.risk_regression_window,
        rate=settings.risk_rate_window,
        oom=settings.risk_oom_window,
    )


@kopf.timer(
    GROUP,
    VERSION,
    "memorypolicies",
    id="risk",
    interval=state.settings().risk_interval_seconds,
    initial_delay=1.0,
    idle=None,
    when=_has_oom_risk,
)
async def evaluate_risk(
    *,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    meta: kopf.Meta,
    status: kopf.Status,
    patch: kopf.Patch,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """One evaluation cycle of one policy (see the module docstring)."""
    retry = int(kwargs.get("retry") or 0)  # consecutive failures so far: the backoff's exponent
    policy_index: kopf.Index[str, Candidate] = kwargs["policy_index"]
    pod_index: kopf.Index[str, dict[str, Any]] = kwargs["pod_index"]
    incident_index: kopf.Index[str, dict[str, Any]] = kwargs["incident_index"]
    if namespace is None or namespace in state.settings().never_governed:
        return
    candidates = list(policy_index.get(namespace, []))
    policy = next((c for c in candidates if c.name == name), None)
    if policy is None or policy.spec.oomRisk is None:  # invalid spec: validate_policy says so
        return
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    pods = list(pod_index.get(namespace, []))
    governed = governed_containers(policy, pods=pods, candidates=candidates)
    settings = state.settings()
    findings: list[Finding] = oom_killed(
        pods,
        governed=governed,
        policy=name,
        now=now,
        within=dt.timedelta(seconds=parse_duration(settings.risk_oom_window)),
    )
    client = prometheus()
    if client is not None and governed:
        queries = policy_queries(
            policy.spec.oomRisk,
            namespace=namespace,
            containers=policy.spec.containers,
            windows=_windows(),
            min_limit=smallest_limit(governed),
        )
        metrics.RISK_QUERIES.inc(len(queries))
        try:
            results = await asyncio.gather(*(client.aquery(q.expr) for q in queries))
        except PrometheusError as exc:
            metrics.RISK_EVALUATION_FAILURES.inc()
            delay = backoff_delay(
                retry,
                interval=settings.risk_interval_seconds,
                cap=settings.risk_backoff_max_seconds,
            )
            _set_condition(
                status=status,
                patch=patch,
                meta=meta,
                ok=False,
                reason="PrometheusUnavailable",
                message=f"{exc} (next attempt in {delay:g}s)",
                now=now,
            )
            raise kopf.TemporaryError(
                f"risk evaluation paused for {delay:g}s: {exc}", delay=delay
            ) from exc
        findings += evaluate(zip(queries, results, strict=True), governed=governed, policy=name)
        _set_condition(
            status=status,
            patch=patch,
            meta=meta,
            ok=True,
            reason="Evaluated",
            message=f"{len(queries)} queries over {len(governed)} governed containers",
            now=now,
        )
    if findings:
        await open_incidents(
            sort_findings(findings),
            policy=policy,
            incident_index=incident_index,
            now=now,
            body=body,
            patch=patch,
            logger=logger,
        )
    metrics.RISK_CYCLE_SECONDS.observe(time.monotonic() - started)


def _set_condition(
    *,
    status: kopf.Status,
    patch: kopf.Patch,
    meta: kopf.Meta,
    ok: bool,
    reason: str,
    message: str,
    now: dt.datetime,
) -> None:
    """Write RiskEvaluation when it changed; the other conditions go back untouched."""
    conditions = with_risk_condition(
        list(status.get("conditions") or []),
        ok=ok,
        reason=reason,
        message=message,
        now=rfc3339(now),
        generation=meta.get("generation"),
    )
    if conditions is not None and not state.settings().dry_run:
        patch.status["conditions"] = conditions


def _known_incidents(incident_index: kopf.Index[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Every incident of the cluster: the index, plus what this process just created."""
    indexed: list[dict[str, Any]] = [view for key in incident_index for view in incident_index[key]]
    names = {(v["metadata"]["namespace"], v["metadata"]["name"]) for v in indexed}
    horizon = time.monotonic() - _LEDGER_SECONDS
    for key, (created, view) in list(_ledger.items()):
        if created < horizon or tuple(key.split("/", 1)) in names:
            del _ledger[key]
        else:
            indexed.append(view)
    return indexed


#: One opening decision at a time in this process (see open_incidents).
_opening = asyncio.Lock()


async def open_incidents(
    findings: list[Finding],
    *,
    policy: Candidate,
    incident_index: kopf.Index[str, dict[str, Any]],
    now: dt.datetime,
    patch: kopf.Patch,
    logger: kopf.Logger,
    body: kopf.Body | None = None,
) -> None:
    """Decide and open one policy's findings; shared with the Alertmanager intake.

    With the policy's ``body``, each opening and suppression is also an Event on it
    (reasons IncidentOpened, TriggerSuppressed), and the matching log lines are not.
    One opening at a time in this process: the Prometheus timers and the Alertmanager
    consumer would otherwise both pass the cooldown and concurrency checks for one pod.
    """
    async with _opening:
        settings = state.settings()
        decisions = decide(
            findings,
            captures={
                (policy.namespace, policy.name): policy.spec.capture
                or CaptureSpec(cooldown=settings.capture_default_cooldown)
            },
            incidents=_known_incidents(incident_index),
            now=now,
            max_concurrent=settings.max_concurrent_captures,
        )
        for decision in decisions:
            finding = decision.finding
            what = f"{finding.pod}/{finding.container} {finding.signal}={finding.value}"
            if not isinstance(decision, Open):
                if decision.reason == "duplicate":
                    continue
                metrics.SUPPRESSED_TRIGGERS.labels(reason=decision.reason).inc()
                key = (policy.key, finding.pod, decision.reason)
                if _announcements.due(key, now=time.monotonic()):
                    logger.info(  # the Event below says it with its own reason
                        "trigger suppressed (%s): %s",
                        decision.reason,
                        decision.message,
                        extra={"k8s_skip": True},
                    )
                    if body is not None:
                        kopf.event(
                            body,
                            type="Normal",
                            reason="TriggerSuppressed",
                            message=f"{what} suppressed ({decision.reason}): {decision.message}",
                        )
                continue
            if settings.dry_run:
                logger.info("dry run: would open incident %s for %s", decision.name, what)
                continue
            try:
                created = await kube().acreate(
                    INCIDENTS, namespace=decision.namespace, body=decision.body
                )
            except Conflict:
                continue  # the same name: opened by an earlier cycle, already counted
            except KubeError as exc:
                logger.warning("incident %s for %s not opened: %s", decision.name, what, exc)
                continue
            _ledger[f"{decision.namespace}/{decision.name}"] = (
                time.monotonic(),
                incident_view(created),
            )
            metrics.INCIDENTS_OPENED.labels(source=finding.source, signal=finding.signal).inc()
            threshold = "" if finding.threshold is None else f" (threshold {finding.threshold:g})"
            logger.warning(
                "incident %s opened: %s%s", decision.name, what, threshold, extra={"k8s_skip": True}
            )
            if body is not None:
                kopf.warn(
                    body, reason="IncidentOpened", message=f"{decision.name}: {what}{threshold}"
                )
            patch.status["lastIncident"] = decision.name
            version = (created.get("metadata") or {}).get("resourceVersion")
            try:
                # Conditional on the version just created: never rewind a capture that
                # has already moved the incident on.
                await kube().apatch_status(
                    INCIDENTS,
                    namespace=decision.namespace,
                    name=decision.name,
                    patch={"metadata": {"resourceVersion": version}, "status": decision.status},
                )
            except KubeError as exc:
                logger.debug("incident %s: initial status not written: %s", decision.name, exc)
