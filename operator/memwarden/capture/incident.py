"""The MemoryIncident capture lifecycle, as pure decisions.

Pending -> Capturing (the debug container is added) -> Collected (the bundle is stored
and analysed), or Failed / Skipped with a reason. The handler fetches the incident, its
pod and whether a bundle is stored, asks these functions what to do, and does it. ``now``
is always passed in. Nothing here imports a client.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from memwarden.api import Analysis, ArtifactRecord, CaptureSpec, FunctionUsage
from memwarden.artifacts import ALL_ARTIFACTS
from memwarden.capture.analysis import Summary
from memwarden.capture.plan import ephemeral_container_name
from memwarden.quantity import QuantityError, approximate_bytes, parse_duration
from memwarden.risk.opening import ACTIVE_PHASES, Known
from memwarden.selection import Candidate, select_for_pod
from memwarden.timefmt import parse_time, rfc3339

TERMINAL_PHASES = frozenset({"Collected", "Failed", "Skipped"})
#: After the debug container ended, how long to wait for its upload to be seen stored.
UPLOAD_GRACE = dt.timedelta(seconds=20)


@dataclass(frozen=True)
class Target:
    """What the capture aims at, or why it cannot start (yet)."""

    container: str | None = None
    wait: str | None = None
    """The pod is not ready for a capture yet: try again later."""
    fail: tuple[str, str] | None = None
    """(reason, message): the capture can never start."""


def choose_target(
    *,
    pod: Mapping[str, Any] | None,
    requested: str | None,
    created: dt.datetime | None,
    now: dt.datetime,
    pod_wait: dt.timedelta,
) -> Target:
    """The container to capture from, once its pod runs it."""
    if pod is None:
        return Target(fail=("PodNotFound", "the pod does not exist (deleted or never created)"))
    containers = [c.get("name") for c in (pod.get("spec") or {}).get("containers") or []]
    name = requested or (containers[0] if containers else None)
    if name not in containers:
        return Target(fail=("ContainerNotFound", f"the pod has no container {name!r}"))
    statuses = {s.get("name"): s for s in (pod.get("status") or {}).get("containerStatuses") or []}
    running = "running" in ((statuses.get(name) or {}).get("state") or {})
    if (pod.get("status") or {}).get("phase") == "Running" and running:
        return Target(container=name)
    waited = now - created if created else dt.timedelta(0)
    if waited > pod_wait:
        return Target(fail=("PodNotRunning", f"container {name} was not running for {pod_wait}"))
    return Target(wait=f"container {name} is not running yet")


def ungoverned_namespace(namespace: str, *, never_governed: frozenset[str]) -> str | None:
    """Why no incident captures in ``namespace`` (kube-system, memwarden's own, the
    excluded ones), or None. memwarden's own pods hold its token and the upload key."""
    if namespace in never_governed:
        return (
            f"namespace {namespace} is never governed by memwarden (excluded, or its own): "
            "no capture runs there"
        )
    return None


@dataclass(frozen=True)
class Gate:
    """Whether an incident may capture now, and with which policy's settings."""

    policy: Candidate | None = None
    """The policy governing the pod: its ``capture`` section is the capture's settings."""
    refused: tuple[str, str] | None = None
    """(reason, message): the incident ends ``Skipped`` with these."""

    @property
    def capture(self) -> CaptureSpec:
        return (self.policy.spec.capture if self.policy else None) or CaptureSpec()


def gate_capture(
    *,
    incident: Mapping[str, Any],
    pod: Mapping[str, Any],
    policies: Sequence[Candidate],
    incidents: Iterable[Mapping[str, Any]],
    now: dt.datetime,
    max_concurrent: int,
) -> Gate:
    """The rules memwarden's own openings obey (``risk/opening.py``), for any incident,
    hand-made ones included: a policy must govern the pod and allow captures, the pod's
    cooldown and the cluster-wide cap on concurrent captures hold.

    The settings are always the governing policy's, whatever ``spec.policy`` names: a
    hand-made incident cannot pick a more permissive policy, nor fall back on defaults.
    ``incidents`` are the cluster's (full objects or ``incident_view``s), this one
    among them or not. Incidents are ordered by ``creationTimestamp`` (the API server's,
    not an annotation the creator chose), then name: an earlier incident is never
    refused because of a later one that has not started, and decides the same way each
    time it is asked. One that has started capturing (or ended) counts whenever it was
    created: it did capture.
    """
    metadata = incident.get("metadata") or {}
    namespace, name = str(metadata.get("namespace")), str(metadata.get("name"))
    pod_name = str((incident.get("spec") or {}).get("pod"))
    selection = select_for_pod(pod, policies)
    policy = selection.winner
    if policy is None:
        return Gate(
            refused=(
                "NoGoverningPolicy",
                f"no MemoryPolicy governs pod {pod_name} ({selection.reason}): a capture "
                "takes its settings from the pod's policy",
            )
        )
    capture = policy.spec.capture or CaptureSpec()
    if not capture.enabled:
        return Gate(
            policy=policy,
            refused=(
                "CaptureDisabled",
                f"policy {policy.name}, which governs pod {pod_name}, has capture.enabled false",
            ),
        )
    me = Known.of(incident)
    mine = _order(me.created if me else None, name)
    others = [
        k
        for k in map(Known.of, incidents)
        if k is not None and not k.deleting and (k.namespace, k.name) != (namespace, name)
    ]

    def earlier(known: Known) -> bool:
        return _order(known.created, known.name) < mine

    cooldown = _cooldown_seconds(capture.cooldown)
    recent = [
        k
        for k in others
        if k.namespace == namespace
        and k.pod == pod_name
        and k.phase != "Skipped"  # captured nothing: it does not start a cooldown
        and k.opened is not None
        and (now - k.opened).total_seconds() < cooldown
        and (k.phase not in ACTIVE_PHASES or k.phase == "Capturing" or earlier(k))
    ]
    if recent:
        last = max(recent, key=lambda k: k.opened or now)
        age = int((now - (last.opened or now)).total_seconds())
        return Gate(
            policy=policy,
            refused=(
                "Cooldown",
                f"incident {last.name} for pod {pod_name} opened {age}s ago; policy "
                f"{policy.name} has capture.cooldown {capture.cooldown}",
            ),
        )
    # Running captures hold a slot whenever they started; waiting ones only ahead of us.
    active = [
        k for k in others if k.phase == "Capturing" or (k.phase in ACTIVE_PHASES and earlier(k))
    ]
    if len(active) >= max_concurrent:
        return Gate(
            policy=policy,
            refused=(
                "ConcurrencyLimit",
                f"{len(active)} captures pending or running in the cluster (cap {max_concurrent})",
            ),
        )
    return Gate(policy=policy)


_LATEST = dt.datetime.max.replace(tzinfo=dt.UTC)


def _order(created: dt.datetime | None, name: str | None) -> tuple[dt.datetime, str]:
    """Creation order; an incident without a creation time counts as the latest."""
    return (created or _LATEST, name or "")


def _cooldown_seconds(duration: str) -> float:
    try:
        return parse_duration(duration)
    except QuantityError:  # the CRD pattern forbids it; never cool down less than default
        return parse_duration(CaptureSpec().cooldown)


def capture_artifacts(*, capture: CaptureSpec, requested: Sequence[str] | None) -> list[str]:
    """The artifacts to collect: the incident's own list, else the policy's."""
    chosen = set(requested) if requested else set(capture.artifacts)
    return [a for a in ALL_ARTIFACTS if a in chosen]


def pod_ips(pod: Mapping[str, Any]) -> frozenset[str]:
    """Every address of a pod (``status.podIP`` and ``status.podIPs``, for dual-stack):
    the sources the evidence API accepts the pod's debug container's upload from."""
    status = pod.get("status") or {}
    listed = [entry.get("ip") for entry in status.get("podIPs") or [] if isinstance(entry, Mapping)]
    return frozenset(str(ip) for ip in (status.get("podIP"), *listed) if ip)


def upload_token_lifetime(*, ttl: dt.timedelta, capture_timeout: dt.timedelta) -> dt.timedelta:
    """An upload token lives no longer than its capture may: once the incident has failed
    for want of a bundle, a token copied from the pod spec must be worth nothing."""
    return min(ttl, capture_timeout)


@dataclass(frozen=True)
class Progress:
    """What to do with a Capturing incident now."""

    action: Literal["wait", "complete", "fail"]
    reason: str = ""
    message: str = ""


def ephemeral_status(pod: Mapping[str, Any] | None, incident_uid: str) -> Mapping[str, Any] | None:
    """The status of the incident's debug container in ``pod``, if reported."""
    if pod is None:
        return None
    name = ephemeral_container_name(incident_uid)
    for entry in (pod.get("status") or {}).get("ephemeralContainerStatuses") or []:
        if entry.get("name") == name:
            return dict(entry)
    return None


def follow_capture(
    *,
    incident_uid: str,
    pod: Mapping[str, Any] | None,
    bundle_stored: bool,
    started: dt.datetime | None,
    now: dt.datetime,
    timeout: dt.timedelta,
) -> Progress:
    """Decide the fate of a Capturing incident from the store and the pod."""
    if bundle_stored:
        return Progress(action="complete")
    state = (ephemeral_status(pod, incident_uid) or {}).get("state") or {}
    terminated = state.get("terminated")
    if terminated:
        finished = parse_time(terminated.get("finishedAt")) or now
        if now - finished >= UPLOAD_GRACE:
            message = (terminated.get("message") or "").strip() or "no termination message"
            return Progress(
                action="fail",
                reason="CaptureFailed",
                message=f"the debug container exited with code {terminated.get('exitCode')} "
                f"and uploaded no bundle: {message[:500]}",
            )
    if pod is None:
        return Progress(
            action="fail", reason="PodGone", message="the pod was deleted during the capture"
        )
    if started is not None and now - started > timeout:
        return Progress(
            action="fail",
            reason="CaptureTimeout",
            message=f"no bundle stored {int(timeout.total_seconds())}s after the debug "
            "container was added",
        )
    return Progress(action="wait")


#: Longest text copied from a bundle into the status: names and errors come from tenant
#: data, and the whole object must stay far below etcd's 1.5 MiB.
_MAX_TEXT = 512


def _clip(text: str) -> str:
    return text if len(text) <= _MAX_TEXT else text[: _MAX_TEXT - 1] + "…"


def artifact_records(manifest: Mapping[str, Any] | None) -> list[ArtifactRecord]:
    """The manifest's per-artifact lines as status records."""
    records: list[ArtifactRecord] = []
    entries = (manifest or {}).get("artifacts") or []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        error = entry.get("error") or entry.get("skipped")
        sha256 = entry.get("sha256")
        duration = entry.get("durationSeconds")
        try:
            size = int(entry.get("bytes") or 0)
        except (TypeError, ValueError):
            size = 0
        records.append(
            ArtifactRecord(
                name=_clip(str(entry.get("name") or entry.get("file") or "?")),
                bytes=size,
                sha256=_clip(sha256) if isinstance(sha256, str) else None,
                durationSeconds=float(duration) if isinstance(duration, int | float) else None,
                error=_clip(str(error)) if error else None,
            )
        )
        if len(records) == 32:
            break
    return records


def analysis_of(summary: Summary, *, limit: int = 10) -> Analysis:
    """The heap summary as the incident's status records it."""
    top = summary.top
    return Analysis(
        sampleType=_clip(top.sample_type),
        totalBytes=top.total,
        top=[
            FunctionUsage(function=_clip(f.function), flatBytes=f.flat, cumBytes=f.cum)
            for f in top.functions[:limit]
        ],
        goroutines=summary.goroutines,
    )


@dataclass(frozen=True)
class AnalysisOutcome:
    """What analysing a stored bundle gave: the heap summary, or why there is none."""

    analysis: Analysis | None = None
    artifacts: tuple[ArtifactRecord, ...] = ()
    failed: str | None = None
    """The heap profile could not be read (missing, malformed)."""
    refused: str | None = None
    """A limit stopped the analysis (size, memory, CPU, time): the bundle may be hostile."""


#: Analyses started for one incident before memwarden gives up on it. An attempt that never
#: finished (the operator restarted or died during it) gets one more chance, no more: a
#: bundle that kills whatever analyses it must not make the operator crash-loop.
MAX_ANALYSIS_ATTEMPTS = 2


def analysis_refusal(attempts: int) -> str | None:
    """Why no further analysis is started after ``attempts`` unfinished ones, or None."""
    if attempts >= MAX_ANALYSIS_ATTEMPTS:
        return f"{attempts} earlier attempts did not finish"
    return None


def collected_status(
    *,
    bundle: str,
    bundle_bytes: int,
    bundle_sha256: str,
    outcome: AnalysisOutcome,
    now: dt.datetime,
) -> dict[str, Any]:
    """Status fields for an incident whose bundle is stored."""
    records = list(outcome.artifacts)
    failed = [r.name for r in records if r.error]
    notes = []
    if failed:
        notes.append(f"not collected: {', '.join(failed)}")
    if outcome.refused:
        notes.append(f"analysis refused: {outcome.refused}")
    elif outcome.failed:
        notes.append(f"heap analysis failed: {outcome.failed}")
    analysis = outcome.analysis
    if analysis is not None and analysis.top:
        first = analysis.top[0]
        flat = approximate_bytes(first.flatBytes)
        notes.insert(0, f"top in-use function {first.function} ({flat} in use)")
    status: dict[str, Any] = {
        "phase": "Collected",
        "reason": "BundleStored",
        "message": "; ".join(notes) or "all artifacts collected",
        "completedAt": rfc3339(now),
        "bundle": bundle,
        "bundleBytes": bundle_bytes,
        "bundleSha256": bundle_sha256,
        "artifacts": [r.model_dump(exclude_none=True) for r in records],
    }
    if analysis is not None:
        status["analysis"] = analysis.model_dump(exclude_none=True)
    return status
