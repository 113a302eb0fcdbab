"""Opening decisions: cooldown, budget, concurrency, dedupe, all from existing incidents."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from memwarden.api import CaptureSpec, MemoryIncidentSpec
from memwarden.risk.findings import Finding
from memwarden.risk.opening import (
    OPENED_AT_ANNOTATION,
    POD_LABEL,
    POLICY_LABEL,
    Open,
    Suppressed,
    decide,
    incident_name,
    incident_view,
)
from memwarden.timefmt import rfc3339

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 25, 18, 12, 0, tzinfo=dt.UTC)
NS = "shop"


def finding(pod: str = "checkout-1", *, signal: str = "usageRatio", **kw: Any) -> Finding:
    base: dict[str, Any] = {
        "namespace": NS,
        "pod": pod,
        "container": "app",
        "source": "prometheus",
        "signal": signal,
        "value": 0.95,
        "threshold": 0.9,
        "policy": "checkout",
    }
    return Finding(**{**base, **kw})


def incident(
    pod: str = "checkout-1",
    *,
    ago: dt.timedelta,
    phase: str | None = "Collected",
    namespace: str = NS,
    policy: str | None = "checkout",
    annotated: bool = True,
    deleting: bool = False,
) -> dict[str, Any]:
    """An existing MemoryIncident as listed from the API, opened ``ago`` before NOW."""
    opened = rfc3339(NOW - ago)
    metadata: dict[str, Any] = {
        "name": incident_name(pod, now=NOW - ago),
        "namespace": namespace,
        "creationTimestamp": opened,
    }
    if annotated:
        metadata["annotations"] = {OPENED_AT_ANNOTATION: opened}
    if deleting:
        metadata["deletionTimestamp"] = rfc3339(NOW)
    obj: dict[str, Any] = {"metadata": metadata, "spec": {"pod": pod, "policy": policy}}
    if phase:
        obj["status"] = {"phase": phase}
    return obj


def run(
    findings: list[Finding],
    incidents: list[dict[str, Any]],
    *,
    capture: CaptureSpec | None = None,
    cap: int = 5,
) -> list[str]:
    """Decisions as short strings: ``open`` or the suppression reason."""
    captures = {(NS, "checkout"): capture or CaptureSpec(cooldown="30m", maxIncidentsPerHour=3)}
    decisions = decide(
        findings, captures=captures, incidents=incidents, now=NOW, max_concurrent=cap
    )
    return ["open" if isinstance(d, Open) else d.reason for d in decisions]


MINUTE = dt.timedelta(minutes=1)


@pytest.mark.parametrize(
    ("incidents", "expected"),
    [
        pytest.param([], "open", id="no-incident"),
        pytest.param([incident(ago=10 * MINUTE)], "cooldown", id="within-cooldown"),
        pytest.param([incident(ago=29 * MINUTE)], "cooldown", id="just-within-cooldown"),
        pytest.param([incident(ago=30 * MINUTE)], "open", id="cooldown-elapsed"),
        pytest.param(
            [incident(ago=5 * MINUTE, annotated=False)], "cooldown", id="creation-time-fallback"
        ),
        pytest.param([incident(ago=5 * MINUTE, phase="Failed")], "cooldown", id="failed-counts"),
        pytest.param([incident("other", ago=MINUTE)], "open", id="other-pod"),
        pytest.param(
            [incident(ago=MINUTE, namespace="elsewhere")], "open", id="same-pod-name-other-ns"
        ),
        pytest.param([incident(ago=MINUTE, deleting=True)], "open", id="deleted-incident"),
        pytest.param(
            [incident(ago=MINUTE, policy=None, phase="Collected")], "cooldown", id="manual-counts"
        ),
    ],
)
def test_cooldown(incidents: list[dict[str, Any]], expected: str) -> None:
    assert run([finding()], incidents) == [expected]


@pytest.mark.parametrize(
    ("incidents", "expected"),
    [
        pytest.param([incident(f"p{i}", ago=40 * MINUTE) for i in range(2)], "open", id="under"),
        pytest.param(
            [incident(f"p{i}", ago=40 * MINUTE) for i in range(3)], "budget", id="at-budget"
        ),
        pytest.param(
            [incident(f"p{i}", ago=61 * MINUTE) for i in range(3)], "open", id="outside-hour"
        ),
        pytest.param(
            [incident(f"p{i}", ago=40 * MINUTE, policy="other") for i in range(3)],
            "open",
            id="other-policy",
        ),
    ],
)
def test_budget(incidents: list[dict[str, Any]], expected: str) -> None:
    assert run([finding()], incidents) == [expected]


@pytest.mark.parametrize(
    ("phases", "cap", "expected"),
    [
        pytest.param(["Pending", "Capturing"], 3, "open", id="under-cap"),
        pytest.param(["Pending", "Capturing", "Capturing"], 3, "concurrency", id="at-cap"),
        pytest.param([None, None, None], 3, "concurrency", id="no-phase-is-pending"),
        pytest.param(["Collected", "Failed", "Skipped"], 3, "open", id="finished-dont-count"),
    ],
)
def test_concurrency_is_cluster_wide(phases: list[str | None], cap: int, expected: str) -> None:
    others = [
        incident(f"p{i}", ago=2 * dt.timedelta(hours=1), phase=phase, namespace=f"ns{i}")
        for i, phase in enumerate(phases)
    ]
    assert run([finding()], others, cap=cap) == [expected]


@pytest.mark.parametrize(
    ("findings", "expected"),
    [
        pytest.param(
            [finding(signal="usageRatio"), finding(signal="timeToLimit")],
            ["open", "duplicate"],
            id="two-signals-one-pod",
        ),
        pytest.param(
            [finding(container="app"), finding(container="sidecar")],
            ["open", "duplicate"],
            id="two-containers-one-pod",
        ),
        pytest.param(
            [finding("a"), finding("b"), finding("c"), finding("d")],
            ["open", "open", "open", "budget"],
            id="budget-within-batch",
        ),
        pytest.param(
            [finding("a"), finding(policy="unknown")],
            ["open", "no policy"],
            id="ungoverned",
        ),
    ],
)
def test_batch(findings: list[Finding], expected: list[str]) -> None:
    assert run(findings, []) == expected


def test_concurrency_within_batch() -> None:
    assert run([finding("a"), finding("b")], [], cap=1) == ["open", "concurrency"]


def test_capture_disabled_opens_nothing() -> None:
    assert run([finding()], [], capture=CaptureSpec(enabled=False)) == ["capture disabled"]


def test_open_body_is_a_valid_incident() -> None:
    (decision,) = decide(
        [finding(value=0.97)],
        captures={(NS, "checkout"): CaptureSpec()},
        incidents=[],
        now=NOW,
        max_concurrent=1,
    )
    assert isinstance(decision, Open)
    body = decision.body
    assert decision.name == body["metadata"]["name"] == "checkout-1-20261125-181200"
    assert body["metadata"]["namespace"] == NS
    assert body["metadata"]["labels"][POD_LABEL] == "checkout-1"
    assert body["metadata"]["labels"][POLICY_LABEL] == "checkout"
    spec = MemoryIncidentSpec.model_validate(body["spec"])
    assert (spec.pod, spec.container, spec.policy) == ("checkout-1", "app", "checkout")
    assert spec.trigger.source == "prometheus"
    assert (spec.trigger.signal, spec.trigger.value, spec.trigger.threshold) == (
        "usageRatio",
        0.97,
        0.9,
    )
    assert decision.status == {"phase": "Pending", "openedAt": "2026-11-25T18:12:00Z"}


def test_suppression_message_names_the_pod() -> None:
    (decision,) = decide(
        [finding()],
        captures={(NS, "checkout"): CaptureSpec(cooldown="30m")},
        incidents=[incident(ago=5 * MINUTE)],
        now=NOW,
        max_concurrent=1,
    )
    assert isinstance(decision, Suppressed)
    assert decision.message == "shop/checkout-1: last incident opened 5m ago, cooldown 30m"


@pytest.mark.parametrize(
    "pod",
    [
        pytest.param("a", id="short"),
        pytest.param("x" * 47, id="exact-fit"),
        pytest.param("checkout-" + "y" * 60, id="too-long"),
        pytest.param("a" * 40 + "-" * 10 + "b" * 20, id="dash-at-cut"),
    ],
)
def test_incident_name_fits_and_is_deterministic(pod: str) -> None:
    name = incident_name(pod, now=NOW)
    assert len(name) <= 63
    assert name.endswith("-20261125-181200")
    assert name == incident_name(pod, now=NOW)
    assert name[0].isalnum()
    assert "--" not in name.removesuffix("-20261125-181200")[-8:]


def test_long_names_sharing_a_prefix_do_not_collide() -> None:
    prefix = "p" * 60
    assert incident_name(prefix + "a", now=NOW) != incident_name(prefix + "b", now=NOW)


def test_incident_view_keeps_what_decisions_need() -> None:
    full = incident(ago=5 * MINUTE, phase="Capturing")
    full["metadata"]["labels"] = {POD_LABEL: "checkout-1", "team": "x"}
    full["spec"]["trigger"] = {"source": "prometheus"}
    view = incident_view(full)
    assert "trigger" not in view["spec"]
    assert view["metadata"]["labels"] == {POD_LABEL: "checkout-1"}
    assert run([finding()], [view]) == run([finding()], [full]) == ["cooldown"]


def test_naive_now_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone"):
        decide([], captures={}, incidents=[], now=dt.datetime(2026, 1, 1), max_concurrent=1)
