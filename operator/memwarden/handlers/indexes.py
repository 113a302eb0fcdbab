"""In-memory indexes kept current by watches: policies and incidents (kopf's), pods (ours,
``podwatch.py``: kopf's per-event handling costs too much for objects we never change).

Admission and status read these, never the API: a pod creation costs no API call.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any

import kopf
from pydantic import ValidationError

from memwarden.api import GROUP, VERSION, MemoryPolicySpec
from memwarden.handlers import state
from memwarden.handlers.state import OperatorState
from memwarden.observability import health
from memwarden.podwatch import PodWatcher
from memwarden.risk.opening import incident_view
from memwarden.selection import Candidate

logger = logging.getLogger(__name__)


def candidate_from(
    *, namespace: str, name: str, spec: Mapping[str, Any], meta: Mapping[str, Any]
) -> Candidate | None:
    """The policy as selection sees it; None when the schema would refuse it."""
    try:
        parsed = MemoryPolicySpec.model_validate(dict(spec))
    except ValidationError:
        return None
    created = str(meta.get("creationTimestamp") or "")
    return Candidate(namespace=namespace, name=name, created=created, spec=parsed)


@kopf.index(GROUP, VERSION, "memorypolicies")
async def policy_index(
    *, namespace: str | None, name: str, spec: kopf.Spec, meta: kopf.Meta, **_: Any
) -> dict[str, Candidate] | None:
    """namespace -> its policies (a policy the schema would refuse is left out)."""
    if namespace is None:
        return None
    candidate = candidate_from(namespace=namespace, name=name, spec=spec, meta=meta)
    return None if candidate is None else {namespace: candidate}


@kopf.on.startup()
async def start_pod_watch(memo: kopf.Memo, **_: Any) -> None:
    """The pod index (``podwatch.py``): one watcher thread for the cluster, or one per
    watched namespace."""
    loop = asyncio.get_running_loop()
    shared = state.of(memo)
    namespaces = shared.watched_namespaces
    scopes: list[str | None] = [None] if namespaces is None else list(namespaces)
    shared.pods.expected_scopes = set(scopes)
    watchers = [
        PodWatcher(
            api_client=shared.kube.api_client,
            index=shared.pods,
            loop=loop,
            namespace=namespace,
        )
        for namespace in scopes
    ]
    for watcher in watchers:
        watcher.start()
    memo[_POD_WATCHERS] = watchers
    health.watch(
        _POD_WATCHERS,
        lambda: ", ".join(f"{w.name} died" for w in watchers if not w.is_alive()) or None,
    )


@kopf.on.cleanup()
async def stop_pod_watch(memo: kopf.Memo, **_: Any) -> None:
    health.unwatch(_POD_WATCHERS)
    for watcher in memo.get(_POD_WATCHERS) or []:
        watcher.stop()


_POD_WATCHERS = "pod_watchers"


@kopf.on.event(GROUP, VERSION, "memorypolicies")
async def mirror_policy(
    *,
    type: str | None,
    namespace: str | None,
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Keep admission's label-anchored PolicyIndex in step with kopf's ``policy_index``.

    kopf updates its index (deletions too) before it calls this, and calls it only once
    every index is filled: the first call copies the whole index (a policy deleted while
    the operator started is dropped there), later ones the event's namespace. Async, so
    it runs on the event loop like admission: the swap is never seen half-done.
    """
    policy_index: kopf.Index[str, Candidate] = kwargs["policy_index"]
    shared = state.of(memo)
    index = shared.policies
    if state.served_elsewhere(memo):
        pass  # the serving part's own policy watch feeds admission (leader election)
    elif not shared.mirrored:
        index.replace_all(c for key in policy_index for c in policy_index.get(key, []))
        shared.mirrored = True
    elif namespace is not None:
        index.swap_namespace(namespace, policy_index.get(namespace, []))
    if namespace is None:
        return
    book = shared.status_book
    book.ready = True
    book.touch(namespace)
    if type == "DELETED":
        book.forget(namespace=namespace, name=name)
        shared.invalid_policies.pop((namespace, name), None)
        return
    book.observe(body)
    await _tell_if_invalid(shared, body)


def first_error(exc: ValidationError) -> str:
    error = exc.errors()[0]
    where = ".".join(str(part) for part in error["loc"])
    return f"spec.{where}: {error['msg']}"


async def _tell_if_invalid(shared: OperatorState, body: kopf.Body) -> None:
    """The CRD's schema and CEL rules refuse bad input at apply time; this catches what
    slips past them (a CRD older than the operator) and says which field, once per
    generation: a warning Event ``InvalidSpec``. Such a policy is in no index (it governs
    nothing). Not a kopf change handler: those patch progress annotations on every
    policy at every start (1,000 writes for 1,000 policies) and need ``patch``."""
    key = (str(body.meta.get("namespace")), str(body.meta.get("name")))
    told = shared.invalid_policies  # the generation told about, by (namespace, name)
    generation = body.meta.get("generation")
    try:
        MemoryPolicySpec.model_validate(dict(body.spec))
    except ValidationError as exc:
        if key in told and told[key] == generation:
            return
        told[key] = generation
        message = first_error(exc)
        logger.warning("policy %s/%s is invalid and governs nothing: %s", *key, message)
        await shared.kube.apost_event(body, type="Warning", reason="InvalidSpec", message=message)
        return
    told.pop(key, None)


@kopf.index(GROUP, VERSION, "memoryincidents")
async def incident_index(
    *, namespace: str | None, body: kopf.Body, **_: Any
) -> dict[str, dict[str, Any]] | None:
    """namespace -> its MemoryIncidents, trimmed to what opening decisions read.

    Cooldown, budget and the concurrency cap are derived from these (risk/opening.py);
    kopf fills every index before any handler runs, so a restarted operator sees the
    incidents it opened before.
    """
    return None if namespace is None else {namespace: incident_view(body)}
