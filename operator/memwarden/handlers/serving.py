"""Leader election, wired: what every replica serves, and the Lease that picks the one
that reconciles (docs/ha.md).

With ``leader.election`` on, ``memwarden run`` starts the *serving part* here, outside
kopf, on every replica: the webhook certificates and their rotation, the admission
policy index fed by a watch of its own (``podwatch.CustomObjectWatcher``), the webhook,
and the HTTP API (evidence, metrics, health, the Alertmanager receiver). Then it waits
for the Lease (``LeaseElector``) and only then runs kopf, which holds every reconciling
handler (captures, risk, status, updates, retention). Followers never run kopf at all:
its progress annotations on incidents must never be written by two replicas.

This module reads and writes the Lease through ``kube.py`` and acts on the decisions of
``leader.py``; it decides nothing itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Awaitable, Callable, Collection, Iterator
from typing import Any, cast

import kopf
from aiohttp import web_protocol

from memwarden import leader
from memwarden.api import GROUP, VERSION
from memwarden.handlers import admission, alerts, certificates, http, state
from memwarden.handlers.indexes import candidate_from
from memwarden.handlers.state import OperatorState
from memwarden.kube import Conflict, Kube, KubeError
from memwarden.leader import Action, LeaseRecord, Observation, Timing
from memwarden.observability import health, metrics
from memwarden.podwatch import CustomObjectWatcher
from memwarden.selection import Candidate
from memwarden.settings import LeaderSettings

logger = logging.getLogger("memwarden.leader")

_POLICY_WATCHERS = "serving_policy_watchers"


def identity(settings: LeaderSettings, environ: dict[str, str] | None = None) -> str:
    """This replica's holderIdentity: configured, else the pod's name, else host-pid."""
    env = os.environ if environ is None else environ
    return settings.identity or env.get("POD_NAME") or f"{socket.gethostname()}-{os.getpid()}"


# -- the serving part ---------------------------------------------------------------------


class PolicyFeed:
    """Admission's PolicyIndex kept current from a policy watch of the serving part's own
    (kopf's index and ``mirror_policy`` run on the leader only)."""

    def __init__(self, shared: OperatorState) -> None:
        self._shared = shared
        self._by_namespace: dict[str, dict[str, Candidate]] = {}

    def listed(self, scope: str | None, objects: list[dict[str, Any]]) -> None:
        """A complete list of ``scope`` (None: the cluster) replaces what it covers."""
        fresh: dict[str, dict[str, Candidate]] = {}
        for obj in objects:
            found = self._candidate(obj)
            if found is not None:
                fresh.setdefault(found.namespace, {})[found.name] = found
        if scope is None:
            self._by_namespace = fresh
            self._shared.policies.replace_all(
                c for policies in fresh.values() for c in policies.values()
            )
            return
        self._by_namespace[scope] = fresh.get(scope, {})
        self._shared.policies.swap_namespace(scope, list(self._by_namespace[scope].values()))

    def changed(self, kind: str, obj: dict[str, Any]) -> None:
        meta = obj.get("metadata") or {}
        namespace, name = str(meta.get("namespace") or ""), str(meta.get("name") or "")
        if not namespace:
            return
        policies = self._by_namespace.setdefault(namespace, {})
        found = None if kind == "DELETED" else self._candidate(obj)
        if found is None:
            policies.pop(name, None)
        else:
            policies[name] = found
        self._shared.policies.swap_namespace(namespace, list(policies.values()))

    @staticmethod
    def _candidate(obj: dict[str, Any]) -> Candidate | None:
        meta = obj.get("metadata") or {}
        return candidate_from(
            namespace=str(meta.get("namespace") or ""),
            name=str(meta.get("name") or ""),
            spec=obj.get("spec") or {},
            meta=meta,
        )


def _start_policy_watch(memo: kopf.Memo) -> None:
    shared = state.of(memo)
    feed = PolicyFeed(shared)
    loop = asyncio.get_running_loop()
    namespaces = shared.watched_namespaces
    scopes: list[str | None] = [None] if namespaces is None else list(namespaces)
    watchers = []
    for scope in scopes:

        def on_list(objects: list[dict[str, Any]], scope: str | None = scope) -> None:
            feed.listed(scope, objects)

        watchers.append(
            CustomObjectWatcher(
                api_client=shared.kube.api_client,
                group=GROUP,
                version=VERSION,
                plural="memorypolicies",
                loop=loop,
                on_list=on_list,
                on_event=feed.changed,
                namespace=scope,
            )
        )
    for watcher in watchers:
        watcher.start()
    memo[_POLICY_WATCHERS] = watchers
    health.watch(
        _POLICY_WATCHERS,
        lambda: ", ".join(f"{w.name} died" for w in watchers if not w.is_alive()) or None,
    )


def _activity(handler: object) -> Callable[..., Awaitable[None]]:
    """A kopf start-up or clean-up handler, called as the plain coroutine function it is
    (kopf's decorators return the function unchanged; their type says otherwise)."""
    return cast(Callable[..., Awaitable[None]], handler)


async def _retrying(what: str, start: Callable[[], Awaitable[None]]) -> None:
    """Run a start-up step as kopf would: again after a ``TemporaryError``'s delay."""
    while True:
        try:
            await start()
            return
        except kopf.TemporaryError as exc:
            delay = exc.delay or 5
            logger.warning("%s: %s; again in %gs", what, exc, delay)
            await asyncio.sleep(delay)


async def start_serving(shared: OperatorState) -> kopf.Memo:
    """Certificates, policy index, webhook, HTTP API: what every replica serves.

    Reuses the start-up functions kopf runs without election (they are plain coroutines),
    on a memo of its own, so kopf's clean-up on the leader never stops them."""
    memo = kopf.Memo()
    memo[state.STATE] = shared
    memo[state.SERVING] = True
    await _retrying("webhook", lambda: _activity(admission.start_webhook)(memo=memo))
    _start_policy_watch(memo)  # after priming: its first list is newer than the prime's
    await _activity(certificates.start_rotation)(memo=memo)
    relay = alerts.LeaderIntake() if shared.settings.http.alertmanager_token_file else None
    memo[alerts.LEADER_INTAKE] = relay
    await http.serve(memo, intake=relay)
    return memo


async def stop_serving(memo: kopf.Memo) -> None:
    """The reverse order: the HTTP API, the policy watch, the webhook, rotation."""
    await _activity(http.stop_http)(memo=memo)
    health.unwatch(_POLICY_WATCHERS)
    for watcher in memo.get(_POLICY_WATCHERS) or []:
        watcher.stop()
    await _activity(admission.stop_webhook)(memo=memo)
    await _activity(certificates.stop_rotation)(memo=memo)


# -- the Lease ------------------------------------------------------------------------------


class LeaseElector:
    """Reads and writes the Lease each retry period, as ``leader.decide`` says."""

    def __init__(
        self,
        kube: Kube,
        *,
        namespace: str,
        settings: LeaderSettings,
        identity: str,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC),
    ) -> None:
        self.kube, self.namespace, self.name = kube, namespace, settings.lease_name
        self.identity = identity
        self.timing = Timing(
            lease_duration=settings.lease_duration_seconds,
            renew_deadline=settings.renew_deadline_seconds,
            retry_period=settings.retry_period_seconds,
        )
        #: Each request must end well inside the renew deadline.
        self._timeout = max(0.5, min(10.0, self.timing.renew_deadline / 2))
        self._clock, self._wall = clock, wall
        self._observation: Observation | None = None
        self._last_renewed: float | None = None
        self._waiting_logged: str | None = None

    @property
    def leading(self) -> bool:
        return self._last_renewed is not None

    @property
    def lease(self) -> str:
        return f"{self.namespace}/{self.name}"

    async def _read(self) -> dict[str, Any] | None:
        return await asyncio.to_thread(
            self.kube.read_lease, namespace=self.namespace, name=self.name, timeout=self._timeout
        )

    async def step(self) -> leader.Decision:
        """One attempt: read, decide, write if the decision says so."""
        now = self._clock()
        try:
            obj = await self._read()
        except KubeError as exc:
            decision = leader.decide(
                observation=self._observation,
                identity=self.identity,
                now=now,
                last_renewed=self._last_renewed,
                timing=self.timing,
            )
            if decision.action is Action.LOST:
                return decision
            logger.warning("Lease %s not read: %s", self.lease, exc)
            return leader.Decision(Action.WAIT, f"not read: {exc}")
        record = None if obj is None else LeaseRecord.from_object(obj)
        observation = None if record is None else leader.observe(self._observation, record, now=now)
        self._observation = observation
        decision = leader.decide(
            observation=observation,
            identity=self.identity,
            now=now,
            last_renewed=self._last_renewed,
            timing=self.timing,
        )
        if decision.action in (Action.WAIT, Action.LOST):
            return decision
        spec = leader.desired_spec(
            action=decision.action,
            record=record,
            identity=self.identity,
            wall=self._wall(),
            timing=self.timing,
        )
        try:
            written = await asyncio.to_thread(
                self.kube.write_lease,
                namespace=self.namespace,
                name=self.name,
                spec=spec,
                resource_version=None if record is None else record.resource_version,
                timeout=self._timeout,
            )
        except Conflict:
            return leader.Decision(Action.WAIT, "another replica wrote the Lease first")
        except KubeError as exc:
            logger.warning("Lease %s not written (%s): %s", self.lease, decision.action.value, exc)
            return leader.Decision(Action.WAIT, f"not written: {exc}")
        self._observation = leader.observe(
            observation, LeaseRecord.from_object(written), now=self._clock()
        )
        if not self.leading:
            previous = record.holder if record is not None else None
            logger.info(
                "leader: this replica (%s) holds Lease %s now (%s; before: %s)",
                self.identity,
                self.lease,
                decision.why,
                previous or "nobody",
            )
            metrics.LEADER.set(1)
            metrics.LEADER_TRANSITIONS.labels(transition="acquired").inc()
        self._last_renewed = now  # when the attempt started: the deadline errs early
        return decision

    async def acquire(self, stopping: asyncio.Event) -> bool:
        """Try each retry period until this replica leads (True) or it is stopping."""
        while not stopping.is_set():
            decision = await self.step()
            if self.leading:
                return True
            if decision.action is Action.WAIT and decision.why != self._waiting_logged:
                logger.info("leader: following; Lease %s %s", self.lease, decision.why)
                self._waiting_logged = decision.why
            await _wait(stopping, self.timing.retry_period)
        return False

    async def hold(self) -> str:
        """Renew each retry period while leading; returns why leadership was lost."""
        while True:
            await asyncio.sleep(self.timing.retry_period)
            decision = await self.step()
            if decision.action is Action.LOST:
                self._last_renewed = None
                metrics.LEADER.set(0)
                metrics.LEADER_TRANSITIONS.labels(transition="lost").inc()
                return decision.why

    async def release(self) -> None:
        """Clear the holder (graceful shutdown) so the next replica acquires at once."""
        if not self.leading:
            return
        self._last_renewed = None
        metrics.LEADER.set(0)
        try:
            obj = await self._read()
            record = None if obj is None else LeaseRecord.from_object(obj)
            if record is None or record.holder != self.identity:
                return
            await asyncio.to_thread(
                self.kube.write_lease,
                namespace=self.namespace,
                name=self.name,
                spec=leader.released_spec(record, wall=self._wall()),
                resource_version=record.resource_version,
                timeout=self._timeout,
            )
        except KubeError as exc:  # it expires on its own within the lease duration
            logger.warning("leader: Lease %s not released: %s", self.lease, exc)
            return
        metrics.LEADER_TRANSITIONS.labels(transition="released").inc()
        logger.info("leader: this replica (%s) released Lease %s", self.identity, self.lease)


async def _wait(event: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(event.wait(), timeout=seconds)


# -- kopf on the leader only -------------------------------------------------------------


#: The code of aiohttp's per-connection and per-request tasks (``web_protocol``).
_REQUEST_CODE = frozenset(
    method.__code__
    for name in ("start", "_handle_request")
    if (method := getattr(web_protocol.RequestHandler, name, None)) is not None
)


class ServingTasks(Collection[asyncio.Task[Any]]):
    """The tasks kopf must leave alone when it stops on the leader: those that existed
    before it started, and the HTTP servers' request tasks (aiohttp's
    ``RequestHandler``), which the serving part keeps answering until the process ends.
    kopf's ``run_tasks`` cancels every other task of the loop once its own have ended
    (it cannot tell which it spawned), which would cut admission reviews in flight."""

    def __init__(self, before: Collection[asyncio.Task[Any]]) -> None:
        self._before = set(before)

    def __contains__(self, task: object) -> bool:
        if task in self._before:
            return True
        coro = task.get_coro() if isinstance(task, asyncio.Task) else None
        return getattr(coro, "cr_code", None) in _REQUEST_CODE

    def __iter__(self) -> Iterator[asyncio.Task[Any]]:
        return iter(self._before)

    def __len__(self) -> int:
        return len(self._before)


async def run_kopf(*, memo: kopf.Memo, namespaces: list[str], stop_flag: asyncio.Event) -> None:
    """``kopf.operator``, except that stopping spares the serving part's tasks."""
    before = {t for t in asyncio.all_tasks() if t is not asyncio.current_task()}
    tasks = await kopf.spawn_tasks(
        clusterwide=not namespaces,
        namespaces=namespaces,
        standalone=True,
        stop_flag=stop_flag,
        memo=memo,
    )
    await kopf.run_tasks(tasks, ignored=ServingTasks(before))


__all__ = [
    "LeaseElector",
    "PolicyFeed",
    "ServingTasks",
    "identity",
    "run_kopf",
    "start_serving",
    "stop_serving",
]
