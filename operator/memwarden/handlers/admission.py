"""Pod admission, wired: the policy index primed, the webhook server started and stopped.

The webhook is memwarden's own aiohttp server (``webhook/server.py``) on kopf's event loop, not
a kopf ``on.mutate`` handler. It listens only once every policy is in the index, so a
pod created while the operator starts is either refused at the socket (and admitted
unchanged by ``failurePolicy: Ignore``, as when the operator is down) or admitted with
its policy, never admitted against a half-loaded index.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import logging
import os
import time
from collections.abc import Iterable, Mapping
from typing import Any

import kopf

from memwarden import admission
from memwarden.handlers import background, certificates, state
from memwarden.handlers.indexes import candidate_from
from memwarden.handlers.state import OperatorState
from memwarden.heap import release_free_memory
from memwarden.kube import POLICIES, KubeError
from memwarden.mutation import PlanCache
from memwarden.observability import metrics
from memwarden.podwatch import PodIndex
from memwarden.selection import PolicyIndex
from memwarden.sizing import KubeletProfile
from memwarden.webhook.manifests import POD_HANDLER_ID
from memwarden.webhook.server import AdmissionTally, WebhookServer, make_webhook_app
from memwarden.webhook.tlsreload import CertificateReloader
from memwarden.webhook.worker import AdmissionWorker, WorkerConfig, WorkerError

logger = logging.getLogger(__name__)

_SERVER = "webhook_server"
_SUMMARY = "admission_summary"
_FREEZE = "heap_freeze"
_TRIM = "heap_trim"


async def prime_policies(shared: OperatorState) -> int:
    """List every MemoryPolicy the operator watches into the admission index."""
    namespaces = shared.watched_namespaces
    watched: list[str | None] = [None] if namespaces is None else list(namespaces)
    found = []
    for namespace in watched:
        found += await shared.kube.alist_objects(POLICIES, namespace=namespace)
    candidates = [
        c
        for c in (
            candidate_from(
                namespace=str(obj["metadata"].get("namespace")),
                name=str(obj["metadata"].get("name")),
                spec=obj.get("spec") or {},
                meta=obj["metadata"],
            )
            for obj in found
        )
        if c is not None
    ]
    shared.policies.replace_all(candidates)
    return len(candidates)


def _freeze_heap() -> None:
    """Leave the objects alive now out of every later garbage collection.

    A full collection walks every tracked object: with kopf, the clients and 10,000 pod
    views that is tens of milliseconds of the event loop, a stall every review waiting at
    that moment pays (p99). What exists after start-up lives as long as the process.
    """
    gc.collect()
    gc.freeze()


async def _freeze_when_pods_listed(pods: PodIndex) -> None:
    """Again once the pod index holds the first list: most of the heap is there."""
    await pods.listed.wait()
    await asyncio.sleep(0)
    _freeze_heap()


async def _release_free_memory_forever() -> None:
    """Every ``_TRIM_SECONDS``, the C heap's free pages go back to the system (``heap.py``)."""
    while True:
        if not await asyncio.to_thread(release_free_memory):
            return  # not glibc: nothing to trim
        await asyncio.sleep(_TRIM_SECONDS)


#: How often free heap pages are handed back: a minute follows a burst of pod events soon
#: enough, and a trim costs milliseconds of a thread.
_TRIM_SECONDS = 60.0


class MeteredTally(AdmissionTally):
    """The tally, and the webhook's metrics from the same counts."""

    def merge(
        self,
        outcomes: Mapping[str, int],
        infeasible: Mapping[str, int],
        seconds: Iterable[float],
    ) -> None:
        super().merge(outcomes, infeasible, seconds)
        for outcome, n in outcomes.items():
            metrics.WEBHOOK_REQUESTS.labels(outcome=outcome).inc(n)
        for value in seconds:
            metrics.WEBHOOK_SECONDS.observe(value)


async def _summarise(tally: AdmissionTally, every: float) -> None:
    """One INFO line per interval with what admission did (per pod: DEBUG)."""
    while True:
        await asyncio.sleep(every)
        line = tally.flush()
        if line is not None:
            logger.info("admission in the last %gs: %s", every, line)


@kopf.on.startup()
async def start_webhook(memo: kopf.Memo, **_: Any) -> None:
    """Certificates, then the policy index, then the listening socket."""
    if state.served_elsewhere(memo):
        return  # every replica's serving part runs it (leader election)
    shared = state.of(memo)
    settings = shared.settings
    started = time.monotonic()
    cert_file, key_file = await asyncio.to_thread(certificates.serving_files, settings, shared.kube)
    try:
        loaded = await prime_policies(shared)
    except KubeError as exc:
        raise kopf.TemporaryError(f"policies not listed: {exc}", delay=5) from exc
    profile = settings.kubelet.profile()
    tally = MeteredTally()
    _freeze_heap()
    background.start(memo, _FREEZE, _freeze_when_pods_listed(shared.pods), forever=False)
    background.start(memo, _TRIM, _release_free_memory_forever())
    try:
        if settings.admission.process == "worker":
            memo[_SERVER] = await _start_worker(shared, cert_file, key_file, profile, tally)
        else:
            memo[_SERVER] = await _start_inline(shared, cert_file, key_file, profile, tally)
    except OSError as exc:  # a port in use will not free itself: say so and stop
        raise kopf.PermanentError(
            f"webhook cannot listen on {settings.webhook.host}:{settings.webhook.port}: {exc}"
        ) from exc
    except WorkerError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc
    background.start(memo, _SUMMARY, _summarise(tally, settings.admission.summary_seconds))
    logger.info(
        "webhook on https://%s:%s/%s (%s): %d policies indexed, listening %.2fs after start",
        settings.webhook.host,
        settings.webhook.port,
        POD_HANDLER_ID,
        settings.admission.process,
        loaded,
        time.monotonic() - started,
    )


async def _start_worker(
    shared: OperatorState,
    cert_file: str,
    key_file: str,
    profile: KubeletProfile,
    tally: AdmissionTally,
) -> AdmissionWorker:
    """The webhook in its own process (``webhook/worker.py``), fed the policy index."""
    settings = shared.settings
    worker = AdmissionWorker(
        config=WorkerConfig(
            host=settings.webhook.host,
            port=settings.webhook.port,
            path=f"/{POD_HANDLER_ID}",
            certfile=cert_file,
            keyfile=key_file,
            file_check_seconds=settings.webhook.file_check_seconds,
            profile=profile,
            never_governed=settings.never_governed,
            dry_run=settings.dry_run,
        ),
        index=shared.policies,
        tally=tally,
    )
    await worker.start()
    if settings.admission.background_nice:
        # The worker (started above) keeps its priority; what runs here, and the children
        # started from here later (analysis), yields the CPU to it.
        os.nice(settings.admission.background_nice)
    return worker


async def _start_inline(
    shared: OperatorState,
    cert_file: str,
    key_file: str,
    profile: KubeletProfile,
    tally: AdmissionTally,
) -> WebhookServer:
    """The webhook on the operator's own event loop."""
    settings = shared.settings
    admit = functools.partial(
        _admit_with,
        index=shared.policies,
        cache=PlanCache(),
        profile=profile,
        never_governed=settings.never_governed,
        dry_run=settings.dry_run,
    )
    server = WebhookServer(
        app=make_webhook_app(path=f"/{POD_HANDLER_ID}", admit=admit, tally=tally),
        host=settings.webhook.host,
        port=settings.webhook.port,
        certificates=CertificateReloader(
            certfile=cert_file, keyfile=key_file, interval=settings.webhook.file_check_seconds
        ),
    )
    await server.start()
    return server


def _admit_with(
    pod: Any,
    namespace: str | None,
    *,
    index: PolicyIndex,
    cache: PlanCache,
    profile: KubeletProfile,
    never_governed: frozenset[str],
    dry_run: bool,
) -> admission.Decision:
    return admission.admit(
        pod=pod,
        namespace=namespace,
        index=index,
        profile=profile,
        never_governed=never_governed,
        dry_run=dry_run,
        cache=cache,
    )


@kopf.on.cleanup()
async def stop_webhook(memo: kopf.Memo, **_: Any) -> None:
    for key in (_SUMMARY, _FREEZE, _TRIM):
        await background.stop(memo, key)
    server: WebhookServer | AdmissionWorker | None = memo.get(_SERVER)
    if server is not None:  # drains first: docs/ha.md, "Rolling restarts and draining"
        await server.stop(drain_seconds=state.of(memo).settings.webhook.drain_seconds)


__all__ = ["prime_policies", "start_webhook", "stop_webhook"]
