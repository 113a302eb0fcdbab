"""MemoryIncident handlers: run a capture, follow it, record the evidence, clean up.

Pending -> Capturing: the toolbox is added to the pod as an ephemeral container (named
after the incident, so a restarted operator never adds a second one). Capturing ->
Collected: the bundle lands in the evidence store (``on_stored``, or the follow-up timer
after a restart) and its heap profile is analysed. Failed / Skipped carry the reason.
Deleting an incident deletes its evidence (a finalizer).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import logging
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import Any

import kopf

from memwarden.api import GROUP, VERSION
from memwarden.capture import incident as lifecycle
from memwarden.capture.adapters import analysis_worker
from memwarden.capture.plan import (
    DebugIdentity,
    PlanError,
    ephemeral_container_patch,
    ephemeral_storage_allowance,
    plan_debug_identity,
    plan_ephemeral_container,
    ptrace_allowed_by_pod_security,
)
from memwarden.evidence.adapters.api import bundle_url
from memwarden.evidence.adapters.store import (
    BundleMeta,
    BundleStore,
    StoreError,
    StoreUnavailable,
)
from memwarden.evidence.tokens import issue_upload_token
from memwarden.handlers import background, certificates, risk, state
from memwarden.handlers.state import OperatorState
from memwarden.kube import CustomResource, Kube, KubeError, NotFound, Rejected
from memwarden.observability import metrics
from memwarden.quantity import parse_bytes
from memwarden.timefmt import parse_time, rfc3339

logger = logging.getLogger(__name__)

INCIDENTS = CustomResource(GROUP, VERSION, "memoryincidents")
POLICIES = CustomResource(GROUP, VERSION, "memorypolicies")

#: Starts the message of a retry that is a normal wait, not a failure (the pod is not
#: running yet): ``startup.WaitsAreNotErrors`` logs those at INFO, with no Error Event.
WAITING = "waiting: "


_Handler = Callable[..., Awaitable[None]]


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


async def _read_pod(kube: Kube, namespace: str, name: str) -> dict[str, Any] | None:
    try:
        return await asyncio.to_thread(kube.read_pod, namespace=namespace, name=name)
    except NotFound:
        return None
    except KubeError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc


def _conditions_follow_phase(handler: _Handler) -> _Handler:
    """Whatever phase a handler leaves in ``patch.status``, the incident's conditions and
    ``observedGeneration`` follow it in the same write (``with_conditions``), on every
    return and on kopf's retries alike."""

    @functools.wraps(handler)
    async def wrapped(**kwargs: Any) -> None:
        try:
            await handler(**kwargs)
        finally:
            patch: kopf.Patch = kwargs["patch"]
            if patch.status:
                patch.status.update(
                    lifecycle.with_conditions(
                        dict(patch.status),
                        status=kwargs["status"],
                        generation=kwargs["meta"].get("generation"),
                        now=_now(),
                    )
                )

    return wrapped


@kopf.on.resume(GROUP, VERSION, "memoryincidents")
@kopf.on.create(GROUP, VERSION, "memoryincidents")
@_conditions_follow_phase
async def start_capture(
    *,
    namespace: str | None,
    name: str | None,
    uid: str | None,
    spec: kopf.Spec,
    status: kopf.Status,
    meta: kopf.Meta,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **kwargs: Any,
) -> None:
    """Add the toolbox to the pod (once), or record why no capture happens."""
    shared = state.of(memo)
    phase = status.get("phase")
    if namespace is None or name is None or uid is None:
        return
    if phase in lifecycle.TERMINAL_PHASES or phase == "Capturing":
        return
    settings, now = shared.settings, _now()
    if not status.get("openedAt"):
        patch.status["openedAt"] = rfc3339(now)
    ungoverned = lifecycle.ungoverned_namespace(namespace, never_governed=settings.never_governed)
    if ungoverned is not None:
        _skip(patch, reason="NamespaceNotGoverned", message=ungoverned, now=now, spec=spec)
        logger.info("capture skipped: %s", ungoverned)
        return
    pod = await _read_pod(shared.kube, namespace, str(spec.get("pod")))
    target = lifecycle.choose_target(
        pod=pod,
        requested=spec.get("container"),
        created=parse_time(meta.get("creationTimestamp")),
        now=now,
        pod_wait=dt.timedelta(seconds=settings.capture.pod_wait_seconds),
    )
    if target.fail is not None:
        _finish(
            patch, phase="Failed", reason=target.fail[0], message=target.fail[1], now=now, spec=spec
        )
        logger.warning("capture failed: %s", target.fail[1])
        return
    if target.wait is not None or target.container is None or pod is None:
        patch.status["phase"] = "Pending"
        patch.status["message"] = target.wait
        raise kopf.TemporaryError(WAITING + (target.wait or "for the pod"), delay=3)

    gate = lifecycle.gate_capture(
        incident=body,
        pod=pod,
        policies=list(kwargs["policy_index"].get(namespace, [])),
        incidents=risk.known_incidents(shared, kwargs["incident_index"]),
        now=now,
        max_concurrent=settings.capture.max_concurrent,
    )
    if gate.refused is not None:
        reason, message = gate.refused
        _skip(patch, reason=reason, message=message, now=now, spec=spec)
        logger.info("capture skipped (%s): %s", reason, message)
        return
    capture = gate.capture
    try:
        labels = await asyncio.to_thread(shared.kube.namespace_labels, namespace)
    except KubeError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc
    allowed, why = ptrace_allowed_by_pod_security(labels)
    evidence = shared.evidence
    token = issue_upload_token(
        key=evidence.upload_key,
        namespace=namespace,
        incident=name,
        uid=uid,
        expires_at=now
        + lifecycle.upload_token_lifetime(
            ttl=dt.timedelta(seconds=settings.evidence.upload_token_ttl_seconds),
            capture_timeout=dt.timedelta(seconds=settings.capture.timeout_seconds),
        ),
    )
    artifacts = lifecycle.capture_artifacts(capture=capture, requested=spec.get("artifacts"))
    pod_name = str(spec["pod"])
    upload_ca = await _read_optional(certificates.upload_ca_file(settings))

    def plan(ptrace: bool) -> tuple[dict[str, Any], dict[str, Any] | None, DebugIdentity]:
        identity = plan_debug_identity(
            pod=pod or {},
            target_container=str(target.container),
            ptrace_allowed=ptrace,
            ptrace_why=why,
        )
        container = plan_ephemeral_container(
            incident=name,
            incident_uid=uid,
            target_container=str(target.container),
            image=settings.capture.toolbox_image,
            upload_url=bundle_url(evidence.base_url, namespace=namespace, name=name),
            upload_token=token,
            pprof_port=capture.pprofPort,
            trace_seconds=capture.traceSeconds,
            artifacts=artifacts,
            max_core_bytes=parse_bytes(capture.maxCoreBytes),
            ptrace_allowed=ptrace,
            upload_ca_pem=upload_ca,
            identity=identity,
            ephemeral_storage_allowance=ephemeral_storage_allowance(pod or {})[0],
        )
        return container, ephemeral_container_patch(pod or {}, container), identity

    try:
        container, addition, identity = plan(allowed)
        if addition is not None and not settings.dry_run:
            try:
                await _add_debug_container(shared.kube, namespace, pod_name, addition)
            except Rejected as exc:
                # Namespace labels cannot show a cluster-wide default Pod Security level:
                # a refusal of SYS_PTRACE is learnt here. Capture without gcore then.
                if not allowed or exc.status != 403:
                    raise
                allowed, why = False, f"refused by the API server: {exc}"
                container, addition, identity = plan(False)
                if addition is not None:
                    await _add_debug_container(shared.kube, namespace, pod_name, addition)
        if allowed and not identity.ptrace:
            allowed, why = False, identity.reason
    except PlanError as exc:
        _finish(
            patch, phase="Skipped", reason="NothingToCapture", message=str(exc), now=now, spec=spec
        )
        return
    except Rejected as exc:
        _finish(
            patch,
            phase="Failed",
            reason="DebugContainerRefused",
            message=str(exc),
            now=now,
            spec=spec,
        )
        logger.warning("the API server refused the debug container: %s", exc)
        return
    except KubeError as exc:
        raise kopf.TemporaryError(str(exc), delay=5) from exc
    patch.status.update(
        {
            "phase": "Capturing",
            "reason": "DebugContainerAdded",
            "message": "capturing "
            + ", ".join(a for a in artifacts if allowed or a != "gcore")
            + ("" if allowed else f"; gcore skipped: {why}"),
            "captureStartedAt": rfc3339(now),
            "ephemeralContainer": container["name"],
            "debugIdentity": identity.status(),
        }
    )
    _count_phase("Capturing", spec)
    message = (
        f"debug container {container['name']} added to pod {spec.get('pod')} "
        f"(target {target.container})"
    )
    logger.info(message)
    kopf.event(body, type="Normal", reason="CaptureStarted", message=message)


def _skip(
    patch: kopf.Patch, *, reason: str, message: str, now: dt.datetime, spec: kopf.Spec
) -> None:
    """``Skipped``: memwarden decided not to capture; the reason is in the status."""
    _finish(patch, phase="Skipped", reason=reason, message=message, now=now, spec=spec)


async def _read_optional(path: str | None) -> str | None:
    """A small file's text, or None when unset or unreadable (then: the trust store)."""
    if not path:
        return None
    try:
        return await asyncio.to_thread(Path(path).read_text)
    except OSError as exc:
        logger.warning(
            "evidence upload CA %s not readable (%s): debug containers use their trust store",
            path,
            exc,
        )
        return None


async def _add_debug_container(kube: Kube, namespace: str, pod: str, body: dict[str, Any]) -> None:
    await asyncio.to_thread(kube.add_ephemeral_container, namespace=namespace, name=pod, body=body)


def _count_phase(phase: str, spec: kopf.Spec | dict[str, Any]) -> None:
    source = str((spec.get("trigger") or {}).get("source") or "manual")
    metrics.INCIDENT_PHASES.labels(phase=phase, source=source).inc()


def _observe_capture(status: kopf.Status | dict[str, Any], *, outcome: str) -> None:
    started = parse_time(status.get("captureStartedAt"))
    if started is not None:
        metrics.CAPTURE_SECONDS.labels(outcome=outcome).observe((_now() - started).total_seconds())


def _finish(
    patch: kopf.Patch,
    *,
    phase: str,
    reason: str,
    message: str,
    now: dt.datetime,
    spec: kopf.Spec | None = None,
) -> None:
    patch.status.update(
        {
            "phase": phase,
            "reason": reason,
            "message": message,
            "completedAt": rfc3339(now),
        }
    )
    if spec is not None:
        _count_phase(phase, spec)


async def _complete(
    shared: OperatorState, namespace: str, name: str
) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """The incident and its Collected status, its stored bundle analysed out of process;
    None when there is nothing to complete (no longer Capturing, already being completed
    here, or the stored bundle is an earlier incident's). The evidence API's callback and
    the follow-up timer may both try to complete one (``shared.analysing``): one is enough."""
    key = (namespace, name)
    analysing = shared.analysing
    if key in analysing:
        return None
    analysing.add(key)
    try:
        # Read now, not from a handler's snapshot: the other path may have completed it.
        incident = await asyncio.to_thread(
            shared.kube.get, INCIDENTS, namespace=namespace, name=name
        )
        status = incident.get("status") or {}
        if status.get("phase") != "Capturing":
            return None
        store = shared.evidence.store
        meta = await asyncio.to_thread(store.meta, namespace, name)
        if meta.uid != (incident.get("metadata") or {}).get("uid"):
            return None  # an earlier incident's bundle; this one's upload replaces it
        attempts = int(status.get("analysisAttempts") or 0)
        refused = lifecycle.analysis_refusal(attempts)
        if refused is not None:
            outcome = lifecycle.AnalysisOutcome(refused=refused)
        else:
            # Recorded before starting: an attempt that never finishes is not retried forever.
            await shared.kube.apatch_status(
                INCIDENTS,
                namespace=namespace,
                name=name,
                patch={"status": {"analysisAttempts": attempts + 1}},
            )
            outcome = await asyncio.to_thread(_analyse_stored, store, namespace, name)
        collected = lifecycle.collected_status(
            bundle=f"evidence://{namespace}/{name}",
            bundle_bytes=meta.bytes,
            bundle_sha256=meta.sha256,
            outcome=outcome,
            now=_now(),
        )
        conditioned = lifecycle.with_conditions(
            collected,
            status=status,
            generation=(incident.get("metadata") or {}).get("generation"),
            now=_now(),
        )
        return incident, conditioned
    finally:
        analysing.discard(key)


def _analyse_stored(store: BundleStore, namespace: str, name: str) -> lifecycle.AnalysisOutcome:
    """The stored bundle analysed out of process, from a local file (an object store's
    bundle is copied to a temporary file for the time of the analysis)."""
    with store.local_bundle(namespace, name) as path:
        return analysis_worker.run(path)


async def _collected(kube: Kube, incident: Mapping[str, Any], collected: Mapping[str, Any]) -> None:
    """What follows a completion, whichever path completed it (the evidence API's callback
    or the follow-up timer): metrics, and the Event (posted by the adapter: the callback
    runs outside kopf's handlers, where ``kopf.event`` cannot post)."""
    _count_phase("Collected", incident.get("spec") or {})
    _observe_capture(incident.get("status") or {}, outcome="collected")
    metrics.BUNDLE_BYTES.observe(collected["bundleBytes"])
    await kube.apost_event(
        incident, type="Normal", reason="EvidenceCollected", message=str(collected.get("message"))
    )


async def on_stored(shared: OperatorState, namespace: str, name: str, meta: BundleMeta) -> None:
    """A bundle landed (called by the evidence API): analyse it and complete the incident.

    On a follower (leader election), nothing more: the bundle is in the shared store, and
    the leader's ``follow_capture`` timer completes the incident within its interval, so
    no incident is ever completed (analysed, written, announced) by two replicas."""
    if not shared.leading:
        logger.info(
            "incident %s/%s: bundle stored; the leader completes the incident", namespace, name
        )
        return
    try:
        completed = await _complete(shared, namespace, name)
        if completed is None:
            return  # completed by the timer, being completed, or not ours to complete
        incident, status = completed
        await shared.kube.apatch_status(
            INCIDENTS, namespace=namespace, name=name, patch={"status": status}
        )
    except KubeError as exc:  # the follow-up timer completes it later
        logger.warning(
            "incident %s/%s: bundle stored, status not written yet: %s", namespace, name, exc
        )
        return
    logger.info(
        "incident %s/%s collected: %s bytes, %s", namespace, name, meta.bytes, status.get("message")
    )
    await _collected(shared.kube, incident, status)


@kopf.timer(
    GROUP,
    VERSION,
    "memoryincidents",
    interval=3.0,
    idle=None,
    when=lambda status, **_: status.get("phase") == "Capturing",
)
@_conditions_follow_phase
async def follow_capture(
    *,
    namespace: str | None,
    name: str | None,
    uid: str | None,
    spec: kopf.Spec,
    status: kopf.Status,
    body: kopf.Body,
    patch: kopf.Patch,
    logger: kopf.Logger,
    memo: kopf.Memo,
    **_: Any,
) -> None:
    """Complete, fail or keep waiting on a capture: covers restarts and lost callbacks."""
    if namespace is None or name is None or uid is None:
        return
    shared = state.of(memo)
    stored = await asyncio.to_thread(shared.evidence.store.holds, namespace, name, uid=uid)
    pod = None if stored else await _read_pod(shared.kube, namespace, str(spec.get("pod")))
    progress = lifecycle.follow_capture(
        incident_uid=uid,
        pod=pod,
        bundle_stored=stored,
        started=parse_time(status.get("captureStartedAt")),
        now=_now(),
        timeout=dt.timedelta(seconds=shared.settings.capture.timeout_seconds),
    )
    if progress.action == "complete":
        try:
            completed = await _complete(shared, namespace, name)
        except KubeError as exc:
            raise kopf.TemporaryError(str(exc), delay=5) from exc
        if completed is None:
            return  # the evidence API's callback completes it
        incident, collected = completed
        patch.status.update(collected)
        await _collected(shared.kube, incident, collected)
    elif progress.action == "fail":
        _finish(
            patch,
            phase="Failed",
            reason=progress.reason,
            message=progress.message,
            now=_now(),
            spec=spec,
        )
        _observe_capture(status, outcome="failed")
        logger.warning("capture failed: %s", progress.message)


@kopf.on.delete(GROUP, VERSION, "memoryincidents")
async def delete_evidence(
    *, namespace: str | None, name: str | None, logger: kopf.Logger, memo: kopf.Memo, **_: Any
) -> None:
    """The evidence goes with its incident."""
    if namespace is None or name is None:
        return
    store = state.of(memo).evidence.store
    try:
        deleted = await asyncio.to_thread(store.delete, namespace, name)
    except StoreUnavailable as exc:  # the finalizer stays until the store answers
        raise kopf.TemporaryError(str(exc), delay=30) from exc
    if deleted:
        logger.info("evidence of %s/%s deleted", namespace, name)


async def _retention_loop(shared: OperatorState) -> None:
    settings = shared.settings
    from memwarden.evidence.adapters.store import apply_retention

    while True:
        try:
            await asyncio.to_thread(
                apply_retention,
                shared.evidence.store,
                now=_now(),
                max_age=dt.timedelta(seconds=settings.evidence.max_age_seconds),
                namespace_max_bytes=settings.evidence.namespace_max_bytes,
            )
        except (OSError, StoreError) as exc:
            logger.warning("evidence retention failed: %s", exc)
        await asyncio.sleep(settings.evidence.retention_interval_seconds)


_RETENTION = "evidence_retention"


@kopf.on.startup()
async def start_retention(memo: kopf.Memo, **_: Any) -> None:
    background.start(memo, _RETENTION, _retention_loop(state.of(memo)))


@kopf.on.cleanup()
async def stop_retention(memo: kopf.Memo, **_: Any) -> None:
    await background.stop(memo, _RETENTION)
