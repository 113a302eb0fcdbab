"""MemoryPolicy handlers: validate on change, keep status current from the indexes.

Status follows changes: a pod or policy event marks its namespace due (``StatusBook``),
and one loop recomputes the namespaces due, each pod selected and planned once, writing
only the statuses that changed. Nothing is recomputed on a timer per policy: a cluster at
rest costs nothing but a resync every ``status_resync_seconds``.

memwarden never writes a policy's spec: only its status (and kopf's bookkeeping
annotations under ``memwarden.dev/``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from memwarden.api import MemoryPolicyStatus
from memwarden.handlers import background, state, updates
from memwarden.handlers.state import OperatorState
from memwarden.kube import POLICIES, Conflict, KubeError, NotFound
from memwarden.podwatch import PodIndex
from memwarden.selection import Candidate
from memwarden.status import describe_change, namespace_statuses

logger = logging.getLogger(__name__)

_STATUS_TASK = "status_loop"


def _parsed(status: Mapping[str, Any]) -> MemoryPolicyStatus | None:
    try:
        return MemoryPolicyStatus.model_validate(dict(status)) if status else None
    except ValidationError:
        return None


async def _reobserve(shared: OperatorState, namespace: str, name: str) -> None:
    """Remember the policy as the API server has it now (after a conflicting write)."""
    try:
        fresh = await asyncio.to_thread(shared.kube.get, POLICIES, namespace=namespace, name=name)
    except KubeError as exc:  # NotFound included: its deletion event forgets it
        logger.debug("policy %s/%s not re-read after a conflict: %s", namespace, name, exc)
        return
    shared.status_book.observe(fresh)


async def refresh_namespace(
    shared: OperatorState,
    namespace: str,
    *,
    policy_index: kopf.Index[str, Candidate],
    pod_index: PodIndex,
) -> int:
    """Recompute the status of every policy of ``namespace``; write those that changed.

    Returns how many were written.
    """
    settings, book = shared.settings, shared.status_book
    policies = list(policy_index.get(namespace, []))
    if not policies:
        return 0
    current = {p.name: book.current.get((namespace, p.name)) for p in policies}
    previous = {name: _parsed(seen.status) if seen else None for name, seen in current.items()}
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    computed = namespace_statuses(
        policies=policies,
        pods=list(pod_index.get(namespace, [])),
        profile=settings.kubelet.profile(),
        now=now,
        generations={name: seen.generation if seen else None for name, seen in current.items()},
        previous=previous,
        cache=shared.plans,
        inputs_for=updates.inputs_for(shared, namespace),
    )
    written = 0
    for name, new in computed.items():
        old, seen = previous[name], current[name]
        if seen is None or (old is not None and new == old) or settings.dry_run:
            continue  # not seen by the watch yet: its event will touch the namespace
        body = new.model_dump(mode="json", exclude_none=True)
        try:
            # Conditional on the version seen: a status another writer (the risk loop's
            # condition, lastIncident) changed meanwhile is never overwritten from memory.
            updated = await shared.kube.apatch_status(
                POLICIES,
                namespace=namespace,
                name=name,
                patch={"metadata": {"resourceVersion": seen.resource_version}, "status": body},
            )
        except NotFound:
            continue  # deleted meanwhile
        except Conflict:
            # Read the newer version rather than wait for the watch: an event missed or
            # reordered must not leave every later write conflicting.
            await _reobserve(shared, namespace, name)
            book.touch(namespace)
            continue
        except KubeError as exc:
            logger.warning("status of policy %s/%s not written: %s", namespace, name, exc)
            book.touch(namespace)
            continue
        written += 1
        book.observe(updated)
        change = describe_change(old, new)
        if change:
            logger.info("policy %s/%s status: %s", namespace, name, change)
            await shared.kube.apost_event(
                updated, type="Normal", reason="StatusChanged", message=change
            )
    return written


async def status_loop(
    shared: OperatorState, *, policy_index: kopf.Index[str, Candidate], pod_index: PodIndex
) -> None:
    """Recompute the namespaces touched since the last pass, every ``status.debounce``;
    every namespace every ``status.resync`` (a safety net: nothing should be missed)."""
    settings, book = shared.settings, shared.status_book
    last_resync = time.monotonic()
    while True:
        await asyncio.sleep(settings.status.debounce_seconds)
        if not book.ready:
            continue
        if time.monotonic() - last_resync >= settings.status.resync_seconds:
            book.touch_all(policy_index)
            last_resync = time.monotonic()
        for namespace in book.take():
            try:
                await refresh_namespace(
                    shared, namespace, policy_index=policy_index, pod_index=pod_index
                )
            except Exception:  # one namespace's failure must not stop every other's status
                logger.exception("status of the policies in %s not refreshed", namespace)
                book.touch(namespace)
            await asyncio.sleep(0)  # let admission in between namespaces


@kopf.on.startup()
async def start_status_loop(memo: kopf.Memo, **kwargs: Any) -> None:
    shared = state.of(memo)
    background.start(
        memo,
        _STATUS_TASK,
        status_loop(shared, policy_index=kwargs["policy_index"], pod_index=shared.pods),
    )


@kopf.on.cleanup()
async def stop_status_loop(memo: kopf.Memo, **_: Any) -> None:
    await background.stop(memo, _STATUS_TASK)
