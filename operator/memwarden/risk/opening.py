"""Whether a Finding opens a MemoryIncident, or why it is suppressed: pure.

Every rule is derived from the MemoryIncident objects that already exist (as listed from
the API or held in the operator's incident index), never from memory of past cycles, so
an operator restart neither opens a duplicate nor forgets a cooldown. ``now`` is passed
in. The caller creates the incidents of ``Open`` decisions and reports ``Suppressed``
ones (Event, metric); this module does neither.

Shared by every risk source: the Prometheus loop and the Alertmanager receiver.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, Literal

from memwarden.api import API_VERSION, GROUP, CaptureSpec, MemoryIncidentSpec, Trigger
from memwarden.quantity import QuantityError, parse_duration
from memwarden.risk.findings import Finding
from memwarden.timefmt import format_age, parse_time, rfc3339

POD_LABEL: Final = f"{GROUP}/pod"
POLICY_LABEL: Final = f"{GROUP}/policy"
SOURCE_LABEL: Final = f"{GROUP}/source"
#: When memwarden decided to open the incident (RFC 3339). Preferred over
#: ``creationTimestamp`` so decisions use the same clock as ``now``.
OPENED_AT_ANNOTATION: Final = f"{GROUP}/opened-at"

#: Phases in which an incident still holds (or is about to hold) a capture slot.
ACTIVE_PHASES: Final = frozenset({"Pending", "Capturing"})
#: The window of ``CaptureSpec.maxIncidentsPerHour``.
BUDGET_WINDOW: Final = dt.timedelta(hours=1)

_TIME_FORMAT = "%Y%m%d-%H%M%S"
_MAX_NAME = 63  # keeps the name usable as a label value and in DNS-1123 labels

SuppressionReason = Literal[
    "capture disabled", "no policy", "duplicate", "cooldown", "budget", "concurrency"
]


@dataclass(frozen=True)
class Open:
    """Create ``body`` (a MemoryIncident); then, optionally, write ``status`` to it."""

    finding: Finding
    name: str
    namespace: str
    body: dict[str, Any]
    status: dict[str, Any]


@dataclass(frozen=True)
class Suppressed:
    """The finding holds but opens nothing; ``message`` says why, for an Event."""

    finding: Finding
    reason: SuppressionReason
    message: str


Decision = Open | Suppressed


def decide(
    findings: Iterable[Finding],
    *,
    captures: Mapping[tuple[str, str], CaptureSpec],
    incidents: Iterable[Mapping[str, Any]],
    now: dt.datetime,
    max_concurrent: int,
) -> list[Decision]:
    """One decision per finding, in order.

    ``captures`` maps (namespace, policy name) to the policy's capture section (use
    ``CaptureSpec()`` for a policy without one); a finding whose policy is not there is
    suppressed as ``no policy``. ``incidents`` are the existing MemoryIncidents of the
    whole cluster (full objects or ``incident_view``s): cooldown and budget look at their
    namespace, the concurrency cap at all of them. Decisions see the incidents opened by
    earlier findings of the same call, so one pod gets one incident per call
    (``duplicate``) and the budget and cap hold within a batch.
    """
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    known = [k for k in map(Known.of, incidents) if k is not None and not k.deleting]
    opened_now: set[tuple[str, str]] = set()
    decisions: list[Decision] = []
    for finding in findings:
        decision = _decide_one(
            finding,
            capture=captures.get((finding.namespace, finding.policy or "")),
            known=known,
            opened_now=opened_now,
            now=now,
            max_concurrent=max_concurrent,
        )
        if isinstance(decision, Open):
            opened_now.add((finding.namespace, finding.pod))
            known.append(
                Known(
                    namespace=decision.namespace,
                    pod=finding.pod,
                    policy=finding.policy,
                    opened=now,
                    phase="Pending",
                    deleting=False,
                )
            )
        decisions.append(decision)
    return decisions


def _decide_one(
    finding: Finding,
    *,
    capture: CaptureSpec | None,
    known: Sequence[Known],
    opened_now: set[tuple[str, str]],
    now: dt.datetime,
    max_concurrent: int,
) -> Decision:
    where = f"{finding.namespace}/{finding.pod}"
    if capture is None:
        return Suppressed(finding, "no policy", f"{where}: no policy governs this pod")
    if not capture.enabled:
        return Suppressed(
            finding, "capture disabled", f"{where}: policy {finding.policy} has capture disabled"
        )
    if (finding.namespace, finding.pod) in opened_now:
        return Suppressed(finding, "duplicate", f"{where}: an incident was opened this cycle")
    cooldown = _seconds(capture.cooldown)
    recent = [
        k
        for k in known
        if k.namespace == finding.namespace
        and k.pod == finding.pod
        and k.opened is not None
        and (now - k.opened).total_seconds() < cooldown
    ]
    if recent:
        last = max(k.opened for k in recent if k.opened is not None)
        return Suppressed(
            finding,
            "cooldown",
            f"{where}: last incident opened {format_age((now - last).total_seconds())} ago, "
            f"cooldown {capture.cooldown}",
        )
    in_budget = [
        k
        for k in known
        if k.namespace == finding.namespace
        and k.policy == finding.policy
        and k.opened is not None
        and now - k.opened < BUDGET_WINDOW
    ]
    if len(in_budget) >= capture.maxIncidentsPerHour:
        return Suppressed(
            finding,
            "budget",
            f"{where}: policy {finding.policy} opened {len(in_budget)} incidents in the last "
            f"hour (maxIncidentsPerHour {capture.maxIncidentsPerHour})",
        )
    active = sum(1 for k in known if k.phase in ACTIVE_PHASES)
    if active >= max_concurrent:
        return Suppressed(
            finding,
            "concurrency",
            f"{where}: {active} captures pending or running in the cluster (cap {max_concurrent})",
        )
    return _open(finding, now=now)


def _open(finding: Finding, *, now: dt.datetime) -> Open:
    name = incident_name(finding.pod, now=now)
    observed = rfc3339(now)
    spec = MemoryIncidentSpec(
        pod=finding.pod,
        container=finding.container or None,
        policy=finding.policy,
        trigger=Trigger(
            source=finding.source,
            signal=finding.signal,
            value=finding.value,
            threshold=finding.threshold,
            alertName=finding.alert_name,
            labels=dict(finding.labels) or None,
            observedAt=observed,
        ),
    )
    labels = {POD_LABEL: _label_value(finding.pod), SOURCE_LABEL: finding.source}
    if finding.policy:
        labels[POLICY_LABEL] = _label_value(finding.policy)
    body: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "MemoryIncident",
        "metadata": {
            "name": name,
            "namespace": finding.namespace,
            "labels": labels,
            "annotations": {OPENED_AT_ANNOTATION: observed},
        },
        "spec": spec.model_dump(mode="json", exclude_none=True),
    }
    status = {"phase": "Pending", "openedAt": observed}
    return Open(finding=finding, name=name, namespace=finding.namespace, body=body, status=status)


def incident_name(pod: str, *, now: dt.datetime) -> str:
    """``<pod>-<YYYYMMDD-HHMMSS>`` (UTC), at most 63 characters.

    A pod name too long to fit is cut and given a short hash of the full name, so two
    long pods sharing a prefix never collide.
    """
    suffix = "-" + now.astimezone(dt.UTC).strftime(_TIME_FORMAT)
    room = _MAX_NAME - len(suffix)
    if len(pod) <= room:
        stem = pod
    else:
        digest = hashlib.sha256(pod.encode()).hexdigest()[:6]
        stem = pod[: room - len(digest) - 1].rstrip("-.") + "-" + digest
    return stem.rstrip("-.") + suffix


def incident_view(body: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a MemoryIncident that opening decisions read: small enough to index."""
    metadata = body.get("metadata") or {}
    spec = body.get("spec") or {}
    status = body.get("status") or {}
    annotations = metadata.get("annotations") or {}
    labels = metadata.get("labels") or {}
    view: dict[str, Any] = {
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "creationTimestamp": metadata.get("creationTimestamp"),
            "labels": {k: v for k, v in labels.items() if k in {POD_LABEL, POLICY_LABEL}},
            "annotations": {k: v for k, v in annotations.items() if k == OPENED_AT_ANNOTATION},
        },
        "spec": {"pod": spec.get("pod"), "policy": spec.get("policy")},
        "status": {"phase": status.get("phase")} if status.get("phase") else {},
    }
    if metadata.get("deletionTimestamp"):
        view["metadata"]["deletionTimestamp"] = metadata["deletionTimestamp"]
    return view


@dataclass(frozen=True)
class Known:
    """An existing incident, as far as opening decisions (and the gate of an incident's
    own capture, ``capture/incident.py``) care."""

    namespace: str
    pod: str
    policy: str | None
    opened: dt.datetime | None
    phase: str
    deleting: bool
    name: str | None = None
    created: dt.datetime | None = None
    """``creationTimestamp``: set by the API server, so it orders incidents even when a
    hand-made one carries an ``opened-at`` annotation of its own choosing."""

    @classmethod
    def of(cls, obj: Mapping[str, Any]) -> Known | None:
        metadata = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        pod = spec.get("pod")
        namespace = metadata.get("namespace")
        if not pod or not namespace:
            return None
        annotations = metadata.get("annotations") or {}
        opened = parse_time(annotations.get(OPENED_AT_ANNOTATION)) or parse_time(
            metadata.get("creationTimestamp")
        )
        # No phase yet: just created, the capture has not picked it up: it holds a slot.
        return cls(
            namespace=str(namespace),
            pod=str(pod),
            policy=spec.get("policy"),
            opened=opened,
            phase=str(status.get("phase") or "Pending"),
            deleting=bool(metadata.get("deletionTimestamp")),
            name=metadata.get("name"),
            created=parse_time(metadata.get("creationTimestamp")),
        )


def _seconds(duration: str) -> float:
    try:
        return parse_duration(duration)
    except QuantityError:  # the CRD pattern forbids it; be safe rather than never cool down
        return parse_duration(CaptureSpec().cooldown)


def _label_value(text: str) -> str:
    """A label value (≤ 63 chars, alphanumeric at both ends); long names are cut."""
    return text[:63].strip("-._")


__all__ = [
    "ACTIVE_PHASES",
    "OPENED_AT_ANNOTATION",
    "POD_LABEL",
    "POLICY_LABEL",
    "SOURCE_LABEL",
    "Decision",
    "Known",
    "Open",
    "Suppressed",
    "SuppressionReason",
    "decide",
    "incident_name",
    "incident_view",
]
