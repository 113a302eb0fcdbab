"""Recreate through the Eviction API: the eviction, and the gate's inputs read from the API.

``evict`` posts a policy/v1 Eviction (never a plain delete) in a worker thread and turns
the answer into an ``EvictionOutcome``: a 429 (a budget allows no disruption now) is
``retry_later``, not an error. ``observe_workload`` reads what the gate needs (the
namespace's pods and PodDisruptionBudgets); ``recreate`` strings observe, admit, evict
and release together for one drifted pod. Which pods, and when, is the update loop's.

The gate itself is pure and lives in ``eviction_gate.py``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

from memwarden.eviction_gate import (
    Allowed,
    Decision,
    EvictionGate,
    WorkloadState,
    owner_of,
    workload_state,
)
from memwarden.kube import Conflict, Kube, KubeError, NotFound
from memwarden.observability import metrics

Result = Literal["evicted", "retry_later", "gone", "failed"]


@dataclass(frozen=True)
class EvictionOutcome:
    """What the Eviction API answered, as the update loop acts on it."""

    result: Result
    message: str
    #: For ``retry_later``: when to ask again (the API server asks for ~10 s on a 429).
    retry_after: float | None = None


#: A 429 without a Retry-After: the API server's own suggestion for budget refusals.
RETRY_AFTER_429 = 10.0


async def evict(
    kube: Kube, *, namespace: str, name: str, uid: str | None = None
) -> EvictionOutcome:
    """Evict one pod through the Eviction API (in a worker thread).

    429: a PodDisruptionBudget allows no disruption now (or the API server is shedding
    load): ``retry_later``. 404, or 409 for ``uid`` (the pod was already replaced by one
    of the same name): ``gone``. Anything else: ``failed``, with the API server's reason.
    """
    try:
        await asyncio.to_thread(kube.evict_pod, namespace=namespace, name=name, uid=uid)
    except NotFound as exc:
        outcome = EvictionOutcome("gone", str(exc))
    except Conflict as exc:
        outcome = EvictionOutcome("gone", f"replaced already: {exc}")
    except KubeError as exc:
        if exc.status == 429:
            outcome = EvictionOutcome("retry_later", str(exc), retry_after=RETRY_AFTER_429)
        else:
            outcome = EvictionOutcome("failed", str(exc))
    else:
        outcome = EvictionOutcome("evicted", f"evicted pod {namespace}/{name}")
    metrics.EVICTIONS.labels(outcome=outcome.result).inc()
    return outcome


async def observe_workload(kube: Kube, pod: Mapping[str, Any]) -> WorkloadState | None:
    """The state of ``pod``'s workload now (one pod list and one budget list of its
    namespace); None for a pod without a controller."""
    owner = owner_of(pod)
    if owner is None:
        return None
    namespace = str((pod.get("metadata") or {}).get("namespace"))
    pods, budgets = await asyncio.gather(
        asyncio.to_thread(kube.list_pods, namespace),
        asyncio.to_thread(kube.list_disruption_budgets, namespace),
    )
    return workload_state(owner, pods=pods, budgets=budgets)


async def recreate(
    kube: Kube,
    gate: EvictionGate,
    pod: Mapping[str, Any],
    *,
    policy: str,
    clock: Callable[[], float] = time.monotonic,
) -> Decision | EvictionOutcome:
    """The Recreate step for one drifted pod: ask the gate what it can answer alone, else
    observe the workload and ask it again, evict if allowed, and give the gate its slot
    back when the eviction did not happen.

    Returns the gate's decision when it held the pod back (nothing was sent), else what
    the Eviction API answered. Concurrent calls are safe: ``admit`` counts at once.
    """
    early = gate.precheck(pod, policy=policy, now=clock())
    if early is not None:
        return early
    workload = await observe_workload(kube, pod)
    decision = gate.admit(pod, policy=policy, workload=workload, now=clock())
    if not isinstance(decision, Allowed):
        return decision
    metadata = pod.get("metadata") or {}
    outcome = await evict(
        kube,
        namespace=str(metadata.get("namespace")),
        name=str(metadata.get("name")),
        uid=metadata.get("uid"),
    )
    if outcome.result != "evicted":
        gate.release(pod, policy=policy, now=clock())
    return outcome


__all__ = [
    "RETRY_AFTER_429",
    "EvictionOutcome",
    "Result",
    "evict",
    "observe_workload",
    "recreate",
]
