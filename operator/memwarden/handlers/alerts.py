"""Alertmanager findings -> MemoryIncidents: the queue's consumer. Wiring only.

The receiver (risk/adapters/receiver.py) puts findings in a :class:`FindingQueue` and answers at
once. One consumer task, started with the HTTP server (handlers/http.py), takes
everything pending at most every ``PASS_INTERVAL`` seconds, gives each finding its pod,
policy and container from the kopf indexes (risk/attribution.py, pure), and opens
incidents through the risk loop's opener (handlers/risk.py): the same decision
(risk/opening.py), ledger, kube adapter and metrics as Prometheus findings. Every finding
that opens nothing is counted in ``memwarden_suppressed_triggers_total{reason}`` and
announced in the log (at most once per pod and reason every few minutes, as the risk
loop does).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections import Counter
from collections.abc import Awaitable, Sequence
from typing import Protocol

import kopf

from memwarden.handlers import background
from memwarden.observability import metrics
from memwarden.podwatch import PodIndex
from memwarden.risk.adapters.receiver import Overloaded
from memwarden.risk.alertmanager import AlertBatch
from memwarden.risk.attribution import attribute
from memwarden.risk.cycle import Announcements
from memwarden.risk.findings import Finding
from memwarden.risk.queue import FindingQueue
from memwarden.selection import Candidate

logger = logging.getLogger(__name__)

#: Passes are at least this far apart: during a storm, the findings for a pod pile up as
#: one queue entry meanwhile, so one pass covers hundreds of alerts and the API server
#: sees a few writes per second at most. Adds at most this to the time from
#: notification to incident.
PASS_INTERVAL = 0.5


class PolicyOpener(Protocol):
    """Opens one policy's findings (the risk loop's ``open_incidents``, bound to the
    operator state and the incident index)."""

    def __call__(
        self, findings: list[Finding], *, policy: Candidate, now: dt.datetime
    ) -> Awaitable[None]: ...


class AlertIntake:
    """The queue, its consumer task, and the counting of what the receiver hands over."""

    def __init__(
        self,
        *,
        policy_index: kopf.Index[str, Candidate],
        pod_index: PodIndex,
        open_for_policy: PolicyOpener,
        queue: FindingQueue | None = None,
    ) -> None:
        self.policy_index = policy_index
        self.pod_index = pod_index
        self.open_for_policy = open_for_policy
        self.queue = queue if queue is not None else FindingQueue()
        self._task: asyncio.Task[None] | None = None
        self._announcements = Announcements()

    async def submit(self, findings: Sequence[Finding]) -> None:
        """The receiver's ``on_findings``: queue, never wait on the API server."""
        offered = self.queue.offer(findings)
        if offered.duplicates:
            # Folded into a pending finding of the same pod: the pass decides for it.
            metrics.SUPPRESSED_TRIGGERS.labels(reason="duplicate").inc(len(offered.duplicates))
        if offered.dropped:
            metrics.SUPPRESSED_TRIGGERS.labels(reason="queue full").inc(len(offered.dropped))
            logger.warning(
                "alertmanager: queue full (%d pods pending): %d finding(s) dropped",
                len(self.queue),
                len(offered.dropped),
            )
            if not offered.accepted:
                raise Overloaded(f"{len(self.queue)} pods pending")

    def count_batch(self, batch: AlertBatch) -> None:
        """The receiver's ``on_batch``: alerts that name no pod are suppressed triggers."""
        if batch.unmapped:
            metrics.SUPPRESSED_TRIGGERS.labels(reason="unmapped").inc(len(batch.unmapped))

    def start(self) -> None:
        self._task = asyncio.create_task(self._consume(), name="alertmanager findings")

    async def stop(self) -> None:
        if self._task is None:
            return
        await background.cancel(self._task)
        self._task = None

    async def _consume(self) -> None:
        while True:
            findings = await self.queue.take()
            try:
                await self.open_incidents(findings, now=dt.datetime.now(dt.UTC))
            except Exception:  # The consumer must outlive a bad pass (a bug included):
                # Alertmanager re-sends what still fires at its repeat_interval.
                logger.exception("alertmanager: %d finding(s) not handled", len(findings))
            await asyncio.sleep(PASS_INTERVAL)

    async def open_incidents(self, findings: Sequence[Finding], *, now: dt.datetime) -> None:
        """Attribute, then open per policy through the risk loop's opener; log a summary."""
        namespaces = {f.namespace for f in findings}
        attribution = attribute(
            findings,
            pods={ns: list(self.pod_index.get(ns, [])) for ns in namespaces},
            policies={ns: list(self.policy_index.get(ns, [])) for ns in namespaces},
        )
        outcome: Counter[str] = Counter()
        for aside in attribution.unattributed:
            metrics.SUPPRESSED_TRIGGERS.labels(reason=aside.reason).inc()
            outcome[aside.reason] += 1
            key = (aside.finding.namespace, aside.finding.pod, aside.reason)
            if self._announcements.due(key, now=time.monotonic()):
                logger.info("trigger suppressed (%s): %s", aside.reason, aside.message)
        by_policy: dict[tuple[str, str], list[Finding]] = {}
        for finding in attribution.findings:
            by_policy.setdefault((finding.namespace, finding.policy or ""), []).append(finding)
        for (namespace, name), group in by_policy.items():
            policy = next((c for c in self.policy_index.get(namespace, []) if c.name == name), None)
            if policy is None:  # deleted while an earlier group was being opened
                continue
            await self.open_for_policy(group, policy=policy, now=now)
            outcome[f"policy {name}"] += len(group)
        logger.debug(
            "alertmanager pass: %d finding(s): %s",
            len(findings),
            ", ".join(f"{k}={v}" for k, v in sorted(outcome.items())) or "nothing to do",
        )


class Intake(Protocol):
    """What the receiver and the HTTP server need of an intake."""

    async def submit(self, findings: Sequence[Finding]) -> None: ...

    def count_batch(self, batch: AlertBatch) -> None: ...

    def start(self) -> None: ...

    async def stop(self) -> None: ...


#: The kopf memo key of the ``LeaderIntake`` (leader election: ``memwarden run`` puts it).
LEADER_INTAKE = "leader_intake"


class LeaderIntake:
    """The receiver's intake on every replica under leader election: the leader's
    ``AlertIntake`` once it has one, else ``Overloaded`` (503 with Retry-After), so
    Alertmanager sends again and, through the Service, reaches the leader. Only the
    leader opens incidents: its kopf indexes (policies, incidents) are the ones the
    opening decision reads, and two replicas opening for one alert would race."""

    def __init__(self) -> None:
        self._intake: AlertIntake | None = None

    def attach(self, intake: AlertIntake) -> None:
        self._intake = intake

    async def submit(self, findings: Sequence[Finding]) -> None:
        if self._intake is None:
            raise Overloaded("this replica is not the leader; send again (the Service routes on)")
        await self._intake.submit(findings)

    def count_batch(self, batch: AlertBatch) -> None:
        if self._intake is not None:
            self._intake.count_batch(batch)

    def start(self) -> None:
        """The leader's intake is started (and stopped) by kopf's start-up (clean-up)."""

    async def stop(self) -> None:
        self._intake = None


def leader_intake(memo: kopf.Memo) -> LeaderIntake:
    found = memo.get(LEADER_INTAKE)
    if not isinstance(found, LeaderIntake):
        raise RuntimeError("no LeaderIntake in the memo: memwarden run puts it there")
    return found
