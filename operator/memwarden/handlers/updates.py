"""The update loop: brings running pods to their policy (update InPlace, Recreate,
InPlaceOrRecreate) by acting on the pure planner's decisions (updates.py).

Every ``update_interval_seconds`` it reads the pod index (never the API) for the
namespaces whose policies have an update mode, asks ``updates.decide`` about each governed
pod, and acts: a resize through ``pods/resize``, an eviction through the eviction gate and
the Eviction API (eviction.py). Every call runs in a worker thread, so admission on the
same event loop never waits. Nothing is acted on in ``mode: Audit``, with ``dry_run``, or
when the kill switch ``updates_enabled`` is off; status shows what would be done.

State lives in the pods: a resized pod's spec already matches, an evicted one is gone; the
only memory here is backoff and which Events were told, so a restart neither repeats nor
forgets work.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import kopf

from memwarden import eviction
from memwarden.eviction_gate import Allowed
from memwarden.handlers import background, state
from memwarden.handlers.state import OperatorState
from memwarden.kube import KubeError, NotFound, Rejected
from memwarden.mutation import PodShapeError, planned
from memwarden.observability import metrics
from memwarden.podwatch import PodIndex
from memwarden.risk.adapters.prometheus import PrometheusError
from memwarden.selection import Candidate, NamespacePolicies
from memwarden.updates import PodUpdate, UpdateInputs, decide

logger = logging.getLogger(__name__)

_TASK = "update_loop"
#: Working sets are read from Prometheus at most this often per namespace (one query).
WORKING_SET_SECONDS = 30.0
#: Events told once per pod and reason are remembered up to this many (oldest dropped).
MAX_TOLD = 10_000
#: Pods planned between two yields to the event loop (~20 µs each: ~5 ms at a time).
YIELD_EVERY = 256
#: Resizes and evictions in flight at once: each is one request in a worker thread.
CONCURRENCY = 8


def inputs_for(shared: OperatorState, namespace: str) -> Callable[[str], UpdateInputs]:
    """The planner's inputs for the pods of ``namespace`` now (status and updates alike)."""
    settings, retries = shared.settings, shared.updates.retries
    now = dt.datetime.now(dt.UTC)
    mono = time.monotonic()
    cached = shared.updates.working_sets.get(namespace)
    sets = None if settings.risk.prometheus_url is None else (cached[1] if cached else {})

    def inputs(name: str) -> UpdateInputs:
        return UpdateInputs(
            now=now,
            enabled=settings.updates.enabled,
            working_sets=None if sets is None else sets.get(name, {}),
            deferred_grace_seconds=settings.updates.deferred_grace_seconds,
            refused=retries.refused((namespace, name), mono),
        )

    return inputs


async def _refresh_working_sets(shared: OperatorState, namespace: str) -> None:
    """Working sets of the namespace's containers, from Prometheus when it is configured."""
    client = shared.risk.prometheus  # the risk loop's client, shared
    if client is None:
        return
    working_sets = shared.updates.working_sets
    cached = working_sets.get(namespace)
    if cached and time.monotonic() - cached[0] < WORKING_SET_SECONDS:
        return
    expr = (
        "max by (pod, container) (container_memory_working_set_bytes"
        f'{{namespace="{namespace}",container!="",container!="POD"}})'
    )
    try:
        samples = await client.aquery(expr)
    except PrometheusError as exc:
        logger.info(
            "working sets of %s not read (%s): no limit is lowered there until they are",
            namespace,
            exc,
        )
        working_sets[namespace] = (time.monotonic(), {})
        return
    found: dict[str, dict[str, int]] = {}
    for sample in samples:
        pod, container = sample.labels.get("pod"), sample.labels.get("container")
        if pod and container:
            found.setdefault(pod, {})[container] = int(sample.value)
    working_sets[namespace] = (time.monotonic(), found)


def _pod_ref(view: Mapping[str, Any]) -> dict[str, Any]:
    """The pod as Events and the eviction gate read it: identity, labels, controller."""
    metadata = view.get("metadata") or {}
    info = view.get("update") or {}
    kind, _, owner = str(info.get("owner") or "").partition("/")
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "uid": info.get("uid"),
            "labels": metadata.get("labels") or {},
            **(
                {"ownerReferences": [{"kind": kind, "name": owner, "controller": True}]}
                if owner
                else {}
            ),
        },
    }


async def _tell_once(
    shared: OperatorState, pod: Mapping[str, Any], *, type_: str, reason: str, message: str
) -> None:
    """An Event on the pod, once per pod instance and message."""
    key = (str(pod["metadata"].get("uid") or pod["metadata"].get("name")), f"{reason}:{message}")
    told = shared.updates.told
    if key in told:
        return
    told[key] = None
    while len(told) > MAX_TOLD:
        del told[next(iter(told))]
    await shared.kube.apost_event(pod, type=type_, reason=reason, message=message)


async def _resize(
    shared: OperatorState, pod: dict[str, Any], update: PodUpdate, *, policy: Candidate
) -> None:
    kube, retries = shared.kube, shared.updates.retries
    metadata = pod["metadata"]
    namespace, name = str(metadata["namespace"]), str(metadata["name"])
    key = (namespace, name)
    message = f"{update.reason} (policy {policy.name}, update {policy.spec.update})"
    logger.info("resizing pod %s/%s: %s", namespace, name, message)
    await kube.apost_event(pod, type="Normal", reason="Resizing", message=message)
    assert update.resize is not None
    try:
        await asyncio.to_thread(kube.resize_pod, namespace=namespace, name=name, body=update.resize)
    except NotFound:
        return  # gone meanwhile
    except Rejected as exc:
        metrics.RESIZES.labels(outcome="refused").inc()
        delay = retries.failed(key, now=time.monotonic(), message=str(exc), refused=True)
        logger.warning("resize of %s/%s refused (again in %.0fs): %s", namespace, name, delay, exc)
        await kube.apost_event(pod, type="Warning", reason="ResizeRefused", message=str(exc))
        return
    except KubeError as exc:
        metrics.RESIZES.labels(outcome="failed").inc()
        delay = retries.failed(key, now=time.monotonic(), message=str(exc))
        logger.warning("resize of %s/%s failed (again in %.0fs): %s", namespace, name, delay, exc)
        return
    metrics.RESIZES.labels(outcome="accepted").inc()
    retries.succeeded(key)


async def _evict(
    shared: OperatorState, pod: dict[str, Any], update: PodUpdate, *, policy: Candidate
) -> None:
    """Ask the gate, evict if it allows, give its slot back if the eviction did not happen."""
    metadata = pod["metadata"]
    namespace, name = str(metadata["namespace"]), str(metadata["name"])
    key = (namespace, name)
    kube, retries, gate = shared.kube, shared.updates.retries, shared.updates.gate
    # Refusals, rate limits and a workload seen busy moments ago need no read of the
    # namespace: a hundred pods waiting on one Deployment cost one list, not a hundred.
    held = gate.precheck(pod, policy=policy.key, now=time.monotonic())
    if held is None:
        try:
            workload = await eviction.observe_workload(kube, pod)
        except KubeError as exc:
            retries.failed(key, now=time.monotonic(), message=str(exc))
            return
        held = gate.admit(pod, policy=policy.key, workload=workload, now=time.monotonic())
    if not isinstance(held, Allowed):
        if held.permanent:
            await _tell_once(
                shared, pod, type_="Warning", reason="EvictionRefused", message=held.message
            )
        retries.failed(
            key, now=time.monotonic(), message=held.message, after=held.retry_after or None
        )
        return
    message = f"{update.reason} (policy {policy.name}, update {policy.spec.update})"
    logger.info("evicting pod %s/%s: %s", namespace, name, message)
    await kube.apost_event(pod, type="Normal", reason="Evicting", message=message)
    outcome = await eviction.evict(kube, namespace=namespace, name=name, uid=metadata.get("uid"))
    if outcome.result == "evicted":
        retries.succeeded(key)
        return
    gate.release(pod, policy=policy.key, now=time.monotonic())
    retries.failed(key, now=time.monotonic(), message=outcome.message, after=outcome.retry_after)
    if outcome.result == "failed":
        await kube.apost_event(
            pod, type="Warning", reason="EvictionFailed", message=outcome.message
        )


async def update_namespace(
    shared: OperatorState, namespace: str, *, policies: list[Candidate], pod_index: PodIndex
) -> int:
    """One pass over a namespace: decide for each governed pod, act. Returns the actions."""
    settings, retries = shared.settings, shared.updates.retries
    if namespace in settings.never_governed:
        return 0
    await _refresh_working_sets(shared, namespace)
    table = NamespacePolicies.build(policies)
    inputs = inputs_for(shared, namespace)
    profile = settings.kubelet.profile()
    now = time.monotonic()
    work = []
    seen = set()
    for count, view in enumerate(pod_index.get(namespace, []), 1):
        if count % YIELD_EVERY == 0:
            await asyncio.sleep(0)  # a namespace of 10,000 pods must not hold the loop
        selection = table.select_pod(view)
        winner = selection.winner
        if winner is None or winner.spec.update == "Initial":
            continue
        name = str((view.get("metadata") or {}).get("name"))
        seen.add(name)
        try:
            plan = planned(pod=view, selection=selection, profile=profile, cache=shared.plans)
        except PodShapeError:
            continue  # status reports it as infeasible
        update = decide(view=view, plan=plan, inputs=inputs(name))
        pod = _pod_ref(view)
        if update.stuck:
            await _tell_once(
                shared, pod, type_="Warning", reason="UpdateBlocked", message=update.reason
            )
        if update.stale_runtime and update.action == "none":
            await _tell_once(
                shared,
                pod,
                type_="Normal",
                reason="StaleRuntime",
                message="; ".join(update.stale_runtime)
                + ": env cannot change in place; the pod gets the new values when recreated",
            )
        acting = winner.spec.mode == "Enforce" and not settings.dry_run
        if not acting or not retries.due((namespace, name), now):
            continue
        if update.action == "resize":
            work.append(_resize(shared, pod, update, policy=winner))
        elif update.action == "evict":
            work.append(_evict(shared, pod, update, policy=winner))
    retries.forget_gone(namespace, seen)
    limit = asyncio.Semaphore(CONCURRENCY)

    async def bounded(step: Any) -> None:
        async with limit:
            await step

    await asyncio.gather(*(bounded(step) for step in work))
    if work:
        shared.status_book.touch(namespace)
    return len(work)


async def update_loop(
    shared: OperatorState, *, policy_index: kopf.Index[str, Candidate], pod_index: PodIndex
) -> None:
    """Every ``updates.interval_seconds``, one pass over each namespace with an update mode."""
    settings, book = shared.settings, shared.status_book
    while True:
        await asyncio.sleep(settings.updates.interval_seconds)
        if not book.ready:
            continue
        metrics.UPDATE_PASSES.inc()
        for namespace in list(policy_index):
            policies = list(policy_index.get(namespace, []))
            if not any(p.spec.update != "Initial" for p in policies):
                continue
            try:
                await update_namespace(shared, namespace, policies=policies, pod_index=pod_index)
            except Exception:  # one namespace's failure must not stop the others' updates
                logger.exception("updates of the pods in %s not done", namespace)
            await asyncio.sleep(0)


@kopf.on.startup()
async def start_update_loop(memo: kopf.Memo, **kwargs: Any) -> None:
    shared = state.of(memo)
    if not shared.settings.updates.enabled:
        logger.warning("updates are off (updates_enabled=false): no running pod is changed")
    background.start(
        memo,
        _TASK,
        update_loop(shared, policy_index=kwargs["policy_index"], pod_index=shared.pods),
    )


@kopf.on.cleanup()
async def stop_update_loop(memo: kopf.Memo, **_: Any) -> None:
    await background.stop(memo, _TASK)
