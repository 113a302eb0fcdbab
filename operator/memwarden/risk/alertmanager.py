"""Alertmanager's webhook payload (version 4) and the findings it carries. Pure.

Parses the body Alertmanager POSTs to a webhook receiver into :class:`Finding` values:
one per *firing* alert that names a pod (``namespace`` and ``pod`` labels). Resolved
alerts are ignored (an incident, once open, runs to its end); firing alerts that name no
pod are counted as unmapped, so a route sending unrelated alerts here shows up in logs
and metrics instead of vanishing. No HTTP, no Kubernetes, no clock: the receiver
(:mod:`memwarden.risk.adapters.receiver`) and the handlers act on the result.

Payload reference: https://prometheus.io/docs/alerting/latest/configuration/#webhook_config
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from memwarden.risk.findings import Finding

#: The only payload version Alertmanager has ever sent (0.x through 0.28).
PAYLOAD_VERSION = "4"
#: Labels or annotations read as the observed value / threshold, first match wins.
VALUE_KEYS = ("value", "observed")
THRESHOLD_KEYS = ("threshold",)
#: Finding.container when the alert names no container: the incident opener picks the
#: governed container (the policy's first) once it knows the pod.
ANY_CONTAINER = ""
#: Lengths of ``Trigger.signal`` and ``Trigger.alertName`` in the MemoryIncident schema.
SIGNAL_MAX = 128
ALERT_NAME_MAX = 256


class PayloadError(ValueError):
    """The body is not an Alertmanager v4 webhook payload; the message says where."""


class _Model(BaseModel):
    # Alertmanager may add fields in later releases: accept and ignore them.
    model_config = ConfigDict(extra="ignore", frozen=True)


class Alert(_Model):
    """One alert of a notification (Alertmanager's ``template.Alert``)."""

    status: Literal["firing", "resolved"]
    labels: dict[str, str]
    annotations: dict[str, str] = Field(default_factory=dict)
    startsAt: datetime | None = None
    endsAt: datetime | None = None
    generatorURL: str = ""
    fingerprint: str = ""


class WebhookPayload(_Model):
    """The body of one webhook notification: one alert group."""

    version: Literal["4"]
    status: Literal["firing", "resolved"]
    receiver: str
    alerts: list[Alert]
    groupKey: str = ""
    truncatedAlerts: int = Field(default=0, ge=0)
    groupLabels: dict[str, str] = Field(default_factory=dict)
    commonLabels: dict[str, str] = Field(default_factory=dict)
    commonAnnotations: dict[str, str] = Field(default_factory=dict)
    externalURL: str = ""


@dataclass(frozen=True)
class AlertBatch:
    """What one notification asks of memwarden.

    ``unmapped`` names the firing alerts that carry no namespace/pod labels (by
    alertname); ``truncated`` is how many alerts Alertmanager left out (``max_alerts``).
    """

    receiver: str
    findings: tuple[Finding, ...]
    resolved: int = 0
    unmapped: tuple[str, ...] = ()
    truncated: int = 0


def _number(sources: tuple[dict[str, str], ...], keys: tuple[str, ...]) -> float | None:
    """The first key of the first source that holds a finite number; a ``%`` is /100."""
    for source in sources:
        for key in keys:
            text = source.get(key)
            if text is None:
                continue
            text = text.strip()
            scale = 1.0
            if text.endswith("%"):
                text, scale = text[:-1], 0.01
            try:
                number = float(text) * scale
            except ValueError:
                continue
            if math.isfinite(number):
                return number
    return None


def alert_finding(alert: Alert) -> Finding | None:
    """The finding of one firing alert; None when it names no pod.

    The signal is the alert's name; the value and threshold come from annotations
    (then labels) called ``value`` / ``threshold`` when they hold numbers.
    """
    namespace = alert.labels.get("namespace", "")
    pod = alert.labels.get("pod", "")
    if not namespace or not pod:
        return None
    name = alert.labels.get("alertname", "") or "alert"
    sources = (alert.annotations, alert.labels)
    return Finding(
        namespace=namespace,
        pod=pod,
        container=alert.labels.get("container", ANY_CONTAINER),
        source="alertmanager",
        # Cut to what MemoryIncident's trigger accepts: one odd alert must not fail a pass.
        signal=name[:SIGNAL_MAX],
        value=_number(sources, VALUE_KEYS),
        threshold=_number(sources, THRESHOLD_KEYS),
        alert_name=name[:ALERT_NAME_MAX],
        labels=dict(alert.labels),
    )


def findings_from_payload(payload: WebhookPayload) -> AlertBatch:
    """Firing alerts that name a pod, in payload order; resolved and unmapped counted."""
    findings: list[Finding] = []
    unmapped: list[str] = []
    resolved = 0
    for alert in payload.alerts:
        if alert.status == "resolved":
            resolved += 1
            continue
        finding = alert_finding(alert)
        if finding is None:
            unmapped.append(alert.labels.get("alertname", "") or "alert")
        else:
            findings.append(finding)
    return AlertBatch(
        receiver=payload.receiver,
        findings=tuple(findings),
        resolved=resolved,
        unmapped=tuple(unmapped),
        truncated=payload.truncatedAlerts,
    )


def parse_payload(body: bytes | str) -> AlertBatch:
    """Parse a webhook body; :class:`PayloadError` names what is wrong (for a 400)."""
    try:
        data = json.loads(body)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise PayloadError(f"body is not JSON: {exc}") from exc
    except RecursionError as exc:  # "[[[[..." a few thousand deep
        raise PayloadError("body is not JSON we accept: nested too deeply") from exc
    except ValueError as exc:  # an integer of more than 4,300 digits (sys.int_info)
        raise PayloadError(f"body is not JSON we accept: {str(exc)[:100]}") from exc
    if not isinstance(data, dict):
        raise PayloadError(f"body is a JSON {type(data).__name__}, not an object")
    if data.get("version") != PAYLOAD_VERSION:
        raise PayloadError(
            f"unsupported payload version {str(data.get('version'))[:16]!r}: "
            f"only {PAYLOAD_VERSION!r} is understood"
        )
    try:
        payload = WebhookPayload.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(part) for part in first["loc"]) or "body"
        raise PayloadError(f"not an Alertmanager payload: {where}: {first['msg']}") from exc
    return findings_from_payload(payload)
