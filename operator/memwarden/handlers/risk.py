"""The OOM-risk loop: one task, a cycle per namespace with ``oomRisk`` policies. Wiring only.

Each cycle of a namespace: its policies' queries, batched (``promql.namespace_queries``:
policies with the same rule share one query; one per enabled signal, never per pod), run
concurrently off the event loop; the pure core joins the results to each policy's
governed containers (one pass over the namespace's pods) and decides, from the incident
index, what to open; incidents are created through the kube adapter. Openings and
suppressed triggers are counted and announced on the policy (an Event, rate-limited per
pod and reason). When Prometheus fails every watching policy says so
(``RiskEvaluation=False``) and the loop backs off; admission never depends on it. Not a
kopf timer per policy: 1,000 policies would be 1,000 timers and their queries.

The queries read memwarden's recording rules where Prometheus has them
(``risk_recording_rules``): every ``risk_recording_rules_check_seconds`` the loop reads
their marker (one series per rule set), and each cycle asks the pure ``find_recorded``
what they serve at that moment.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from typing import Any

import kopf

from memwarden.api import GROUP, VERSION, CaptureSpec
from memwarden.handlers import background, state
from memwarden.handlers.state import OperatorState
from memwarden.kube import INCIDENTS, POLICIES, Conflict, KubeError, NotFound
from memwarden.observability import metrics
from memwarden.podwatch import PodIndex
from memwarden.quantity import parse_duration
from memwarden.risk.adapters.prometheus import (
    PrometheusClient,
    PrometheusError,
    RecordingRulesMissing,
)
from memwarden.risk.cycle import backoff_delay, with_risk_condition
from memwarden.risk.findings import Finding
from memwarden.risk.opening import Open, decide, incident_view
from memwarden.risk.promql import PolicyRisk, Recorded, Sample, Windows, namespace_queries
from memwarden.risk.rules import MARKER, describe, find_recorded
from memwarden.risk.signals import (
    evaluate,
    governed_by_policy,
    oom_killed,
    smallest_limit,
    sort_findings,
)
from memwarden.selection import Candidate
from memwarden.settings import Settings
from memwarden.timefmt import rfc3339

logger = logging.getLogger(__name__)

_RISK_TASK = "risk_loop"

#: Incidents this process created, kept until the incident index has them: kopf's watch
#: lags the create by a moment, and a second policy's cycle must already count them.
_LEDGER_SECONDS = 120.0


def _windows(settings: Settings) -> Windows:
    return Windows(
        regression=settings.risk.regression_window,
        rate=settings.risk.rate_window,
        oom=settings.risk.oom_window,
    )


class RecordingRules:
    """What the last look for memwarden's recording rules found: their markers, and when
    it ran (monotonic seconds). One per process (in the operator state); the loop refreshes it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.markers: list[Sample] | None = None
        self.checked: float | None = None

    async def refresh(self, client: PrometheusClient, *, now: float) -> None:
        """Read the markers when the last look is older than the check interval at ``now``
        (monotonic seconds); off the event loop, through the adapter: a failure is the
        cycle's failure."""
        settings = self.settings
        if settings.risk.recording_rules == "off":
            return
        if self.checked is not None and (
            now - self.checked < settings.risk.recording_rules_check_seconds
        ):
            return
        markers = await client.aquery(MARKER)
        before = None if self.markers is None else describe(self.markers)
        self.markers, self.checked = markers, now
        if describe(markers) != before:
            windows = _windows(settings)
            use = find_recorded(markers, windows=windows, now=0.0) is not None
            logger.info(
                "recording rules in Prometheus: %s; the risk queries (windows: regression "
                "%s, rate %s, oom %s) read %s",
                describe(markers),
                windows.regression,
                windows.rate,
                windows.oom,
                "them where they serve" if use else "the raw series (no rules for these windows)",
            )

    def current(self, now: dt.datetime) -> Recorded | None:
        """The recording rules the queries may read at ``now``; raises
        ``RecordingRulesMissing`` when they are required and absent."""
        mode = self.settings.risk.recording_rules
        if mode == "off":
            return None
        windows = _windows(self.settings)
        found = find_recorded(self.markers or [], windows=windows, now=now.timestamp())
        if found is None and mode == "on":
            raise RecordingRulesMissing(
                f"risk_recording_rules=on but Prometheus has no memwarden recording rules "
                f"for regression {windows.regression}, rate {windows.rate}, oom "
                f"{windows.oom} (found: {describe(self.markers or [])}); see docs/risk.md"
            )
        return found


def _policy_ref(shared: OperatorState, policy: Candidate) -> dict[str, Any]:
    """Enough of the policy object for an Event on it (``kubectl describe`` finds it by uid)."""
    seen = shared.status_book.current.get((policy.namespace, policy.name))
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "MemoryPolicy",
        "metadata": {
            "namespace": policy.namespace,
            "name": policy.name,
            "uid": seen.uid if seen else None,
        },
    }


async def post_event(
    shared: OperatorState, policy: Candidate, *, type: str, reason: str, message: str
) -> None:
    """An Event on the policy, from outside any kopf handler (the loops here)."""
    await shared.kube.apost_event(
        _policy_ref(shared, policy), type=type, reason=reason, message=message
    )


async def write_risk_condition(
    shared: OperatorState,
    policy: Candidate,
    *,
    ok: bool,
    reason: str,
    message: str,
    now: dt.datetime,
) -> None:
    """RiskEvaluation on the policy when it changed; conditional on the version seen, so
    the status loop's conditions are never overwritten from memory (a conflict: next cycle)."""
    seen = shared.status_book.current.get((policy.namespace, policy.name))
    if seen is None or shared.settings.dry_run:
        return
    conditions = with_risk_condition(
        list(seen.status.get("conditions") or []),
        ok=ok,
        reason=reason,
        message=message,
        now=rfc3339(now),
        generation=seen.generation,
    )
    if conditions is None:
        return
    try:
        updated = await shared.kube.apatch_status(
            POLICIES,
            namespace=policy.namespace,
            name=policy.name,
            patch={
                "metadata": {"resourceVersion": seen.resource_version},
                "status": {"conditions": conditions},
            },
        )
    except (Conflict, NotFound):
        return
    except KubeError as exc:
        logger.warning("policy %s: RiskEvaluation not written: %s", policy.key, exc)
        return
    shared.status_book.observe(updated)


async def evaluate_namespace(
    shared: OperatorState,
    namespace: str,
    *,
    policy_index: kopf.Index[str, Candidate],
    pod_index: PodIndex,
    incident_index: kopf.Index[str, dict[str, Any]],
) -> int:
    """One cycle for every policy with ``oomRisk`` in ``namespace``; returns the number of
    queries sent. Raises ``PrometheusError`` (nothing written) when Prometheus fails."""
    settings = shared.settings
    candidates = list(policy_index.get(namespace, []))
    watching = [c for c in candidates if c.spec.oomRisk is not None]
    if not watching:
        return 0
    started = time.monotonic()
    now = dt.datetime.now(dt.UTC)
    pods = list(pod_index.get(namespace, []))
    governed = governed_by_policy(candidates, pods=pods)
    oom_window = dt.timedelta(seconds=parse_duration(settings.risk.oom_window))
    findings: dict[str, list[Finding]] = {
        p.name: oom_killed(
            pods, governed=governed[p.name], policy=p.name, now=now, within=oom_window
        )
        for p in watching
    }
    client = shared.risk.prometheus
    sent = 0
    if client is not None:
        recorded = shared.risk.recording_rules.current(now)
        risks = [
            PolicyRisk(
                name=p.name,
                risk=p.spec.oomRisk,
                containers=None if p.spec.containers is None else tuple(p.spec.containers),
                min_limit=smallest_limit(governed[p.name]),
            )
            for p in watching
            if p.spec.oomRisk is not None and governed[p.name]
        ]
        batched = namespace_queries(
            risks, namespace=namespace, windows=_windows(settings), recorded=recorded
        )
        sent = len(batched)
        on_rules = sum(1 for query, _ in batched if query.recorded)
        metrics.RISK_QUERIES.inc(sent)
        metrics.RISK_RECORDED_QUERIES.inc(on_rules)
        results = await asyncio.gather(*(client.aquery(q.expr) for q, _ in batched))
        for risk in risks:
            mine = [
                (query, result)
                for (query, readers), result in zip(batched, results, strict=True)
                if risk.name in readers
            ]
            findings[risk.name] += evaluate(mine, governed=governed[risk.name], policy=risk.name)
        for policy in watching:
            count = len(governed[policy.name])
            await write_risk_condition(
                shared,
                policy,
                ok=True,
                reason="Evaluated",
                message=f"evaluated with the namespace's {sent} queries ({on_rules} on "
                f"recording rules) over {count} governed containers",
                now=now,
            )
    for policy in watching:
        if findings[policy.name]:
            await open_incidents(
                shared,
                sort_findings(findings[policy.name]),
                policy=policy,
                incident_index=incident_index,
                now=now,
            )
    metrics.RISK_CYCLE_SECONDS.observe(time.monotonic() - started)
    return sent


async def risk_loop(
    shared: OperatorState,
    *,
    policy_index: kopf.Index[str, Candidate],
    pod_index: PodIndex,
    incident_index: kopf.Index[str, dict[str, Any]],
) -> None:
    """Every ``risk_interval``: each namespace with a watching policy, a few at a time.

    When Prometheus fails (or lacks the recording rules ``risk_recording_rules=on``
    requires), every watching policy says so (``RiskEvaluation=False``) and the loop
    backs off (Prometheus is one for all namespaces); admission never waits on it.
    """
    settings = shared.settings
    failures = 0
    limit = asyncio.Semaphore(settings.risk.concurrent_namespaces)

    async def one(namespace: str) -> None:
        async with limit:
            await evaluate_namespace(
                shared,
                namespace,
                policy_index=policy_index,
                pod_index=pod_index,
                incident_index=incident_index,
            )

    delay = settings.risk.interval_seconds
    while True:
        await asyncio.sleep(delay)
        if not shared.status_book.ready:
            continue
        namespaces = [
            ns
            for ns in list(policy_index)
            if ns not in settings.never_governed
            and any(c.spec.oomRisk is not None for c in policy_index.get(ns, []))
        ]
        client = shared.risk.prometheus
        outcomes: list[BaseException | None]
        try:
            if client is not None and namespaces:
                await shared.risk.recording_rules.refresh(client, now=time.monotonic())
        except PrometheusError as exc:
            outcomes = [exc]
        else:
            outcomes = await asyncio.gather(*(one(ns) for ns in namespaces), return_exceptions=True)
        failed = [o for o in outcomes if isinstance(o, PrometheusError)]
        for other in outcomes:
            if isinstance(other, BaseException) and not isinstance(other, PrometheusError):
                logger.error("risk cycle failed: %s", other, exc_info=other)
        if not failed:
            failures, delay = 0, settings.risk.interval_seconds
            continue
        metrics.RISK_EVALUATION_FAILURES.inc()
        delay = backoff_delay(
            failures, interval=settings.risk.interval_seconds, cap=settings.risk.backoff_max_seconds
        )
        failures += 1
        logger.warning("risk evaluation paused for %gs: %s", delay, failed[0])
        now = dt.datetime.now(dt.UTC)
        for namespace in namespaces:
            for policy in policy_index.get(namespace, []):
                if policy.spec.oomRisk is not None:
                    await write_risk_condition(
                        shared,
                        policy,
                        ok=False,
                        reason=failed[0].reason,
                        message=f"{failed[0]} (next attempt in {delay:g}s)",
                        now=now,
                    )


@kopf.on.startup()
async def start_risk_loop(memo: kopf.Memo, **kwargs: Any) -> None:
    shared = state.of(memo)
    background.start(
        memo,
        _RISK_TASK,
        risk_loop(
            shared,
            policy_index=kwargs["policy_index"],
            pod_index=shared.pods,
            incident_index=kwargs["incident_index"],
        ),
    )


@kopf.on.cleanup()
async def stop_risk_loop(memo: kopf.Memo, **_: Any) -> None:
    await background.stop(memo, _RISK_TASK)


def known_incidents(
    shared: OperatorState, incident_index: kopf.Index[str, dict[str, Any]]
) -> list[dict[str, Any]]:
    """Every incident of the cluster: the index, plus what this process just created."""
    indexed: list[dict[str, Any]] = [view for key in incident_index for view in incident_index[key]]
    names = {(v["metadata"]["namespace"], v["metadata"]["name"]) for v in indexed}
    horizon = time.monotonic() - _LEDGER_SECONDS
    ledger = shared.risk.ledger
    for key, (created, view) in list(ledger.items()):
        if created < horizon or tuple(key.split("/", 1)) in names:
            del ledger[key]
        else:
            indexed.append(view)
    return indexed


async def open_incidents(
    shared: OperatorState,
    findings: list[Finding],
    *,
    policy: Candidate,
    incident_index: kopf.Index[str, dict[str, Any]],
    now: dt.datetime,
) -> None:
    """Decide and open one policy's findings; shared with the Alertmanager intake.

    Each opening and suppression is logged and is an Event on the policy (reasons
    IncidentOpened, TriggerSuppressed); an opening sets the policy's ``lastIncident``.
    One opening at a time in this process: the risk loop and the Alertmanager consumer
    would otherwise both pass the cooldown and concurrency checks for one pod.
    """
    async with shared.risk.opening:
        settings = shared.settings
        decisions = decide(
            findings,
            captures={
                (policy.namespace, policy.name): policy.spec.capture
                or CaptureSpec(cooldown=settings.capture.default_cooldown)
            },
            incidents=known_incidents(shared, incident_index),
            now=now,
            max_concurrent=settings.capture.max_concurrent,
        )
        for decision in decisions:
            finding = decision.finding
            what = f"{finding.pod}/{finding.container} {finding.signal}={finding.value}"
            if not isinstance(decision, Open):
                if decision.reason == "duplicate":
                    continue
                metrics.SUPPRESSED_TRIGGERS.labels(reason=decision.reason).inc()
                key = (policy.key, finding.pod, decision.reason)
                if shared.risk.announcements.due(key, now=time.monotonic()):
                    logger.info(
                        "policy %s: trigger suppressed (%s): %s",
                        policy.key,
                        decision.reason,
                        decision.message,
                    )
                    await post_event(
                        shared,
                        policy,
                        type="Normal",
                        reason="TriggerSuppressed",
                        message=f"{what} suppressed ({decision.reason}): {decision.message}",
                    )
                continue
            if settings.dry_run:
                logger.info("dry run: would open incident %s for %s", decision.name, what)
                continue
            try:
                created = await shared.kube.acreate(
                    INCIDENTS, namespace=decision.namespace, body=decision.body
                )
            except Conflict:
                continue  # the same name: opened by an earlier cycle, already counted
            except KubeError as exc:
                logger.warning("incident %s for %s not opened: %s", decision.name, what, exc)
                continue
            shared.risk.ledger[f"{decision.namespace}/{decision.name}"] = (
                time.monotonic(),
                incident_view(created),
            )
            metrics.INCIDENTS_OPENED.labels(source=finding.source, signal=finding.signal).inc()
            threshold = "" if finding.threshold is None else f" (threshold {finding.threshold:g})"
            logger.warning(
                "policy %s: incident %s opened: %s%s", policy.key, decision.name, what, threshold
            )
            await post_event(
                shared,
                policy,
                type="Warning",
                reason="IncidentOpened",
                message=f"{decision.name}: {what}{threshold}",
            )
            await _set_last_incident(shared, policy, decision.name)
            version = (created.get("metadata") or {}).get("resourceVersion")
            try:
                # Conditional on the version just created: never rewind a capture that
                # has already moved the incident on.
                await shared.kube.apatch_status(
                    INCIDENTS,
                    namespace=decision.namespace,
                    name=decision.name,
                    patch={"metadata": {"resourceVersion": version}, "status": decision.status},
                )
            except KubeError as exc:
                logger.debug("incident %s: initial status not written: %s", decision.name, exc)


async def _set_last_incident(shared: OperatorState, policy: Candidate, name: str) -> None:
    """``lastIncident`` on the policy (a scalar: a merge patch cannot clobber others)."""
    try:
        await shared.kube.apatch_status(
            POLICIES,
            namespace=policy.namespace,
            name=policy.name,
            patch={"status": {"lastIncident": name}},
        )
    except KubeError as exc:
        logger.warning("policy %s: lastIncident not written: %s", policy.key, exc)
