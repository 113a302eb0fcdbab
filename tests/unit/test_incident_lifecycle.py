"""The capture lifecycle's decisions: target, follow-up, completion records."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from memwarden.api import CaptureSpec
from memwarden.capture import incident as lifecycle
from memwarden.capture.analysis import FunctionStat, Summary, TopReport
from memwarden.capture.plan import ephemeral_container_name
from memwarden.risk.opening import OPENED_AT_ANNOTATION
from memwarden.timefmt import rfc3339
from memwarden_testing.builders import make_candidate, make_pod

pytestmark = pytest.mark.unit

NOW = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
WAIT = dt.timedelta(minutes=2)


def pod(
    *, phase: str = "Running", running: bool = True, ephemeral: dict[str, Any] | None = None
) -> dict[str, Any]:
    state = {"running": {"startedAt": "2026-11-25T11:00:00Z"}} if running else {"waiting": {}}
    status: dict[str, Any] = {
        "phase": phase,
        "containerStatuses": [{"name": "app", "state": state}],
    }
    if ephemeral is not None:
        status["ephemeralContainerStatuses"] = [ephemeral]
    return {"spec": {"containers": [{"name": "app"}, {"name": "proxy"}]}, "status": status}


@pytest.mark.parametrize(
    ("the_pod", "requested", "created", "expected"),
    [
        pytest.param(
            pod(), None, NOW, lifecycle.Target(container="app"), id="default-first-container"
        ),
        pytest.param(pod(), "app", NOW, lifecycle.Target(container="app"), id="named"),
        pytest.param(None, None, NOW, "PodNotFound", id="pod-gone"),
        pytest.param(pod(), "db", NOW, "ContainerNotFound", id="no-such-container"),
        pytest.param(pod(phase="Pending", running=False), None, NOW, "wait", id="pending-waits"),
        pytest.param(
            pod(phase="Pending", running=False),
            None,
            NOW - 2 * WAIT,
            "PodNotRunning",
            id="pending-too-long-fails",
        ),
    ],
)
def test_choose_target(
    the_pod: Any, requested: str | None, created: dt.datetime, expected: Any
) -> None:
    target = lifecycle.choose_target(
        pod=the_pod, requested=requested, created=created, now=NOW, pod_wait=WAIT
    )
    if isinstance(expected, lifecycle.Target):
        assert target == expected
    elif expected == "wait":
        assert target.wait and target.container is None and target.fail is None
    else:
        assert target.fail is not None and target.fail[0] == expected


@pytest.mark.parametrize(
    ("requested", "policy", "expected"),
    [
        pytest.param(None, ["heap", "gcore"], ["heap", "gcore"], id="policy-list"),
        pytest.param(
            ["trace", "heap"], ["heap"], ["heap", "trace"], id="incident-overrides-in-order"
        ),
    ],
)
def test_capture_artifacts(
    requested: list[str] | None, policy: list[str], expected: list[str]
) -> None:
    spec = CaptureSpec.model_validate({"artifacts": policy})
    assert lifecycle.capture_artifacts(capture=spec, requested=requested) == expected


def terminated(exit_code: int, *, finished: dt.datetime, message: str = "") -> dict[str, Any]:
    return {
        "name": ephemeral_container_name("uid-1"),
        "state": {
            "terminated": {
                "exitCode": exit_code,
                "finishedAt": rfc3339(finished),
                "message": message,
            }
        },
    }


@pytest.mark.parametrize(
    ("kwargs", "action", "reason"),
    [
        pytest.param(
            {"bundle_stored": True, "pod": None},
            "complete",
            "",
            id="stored-completes-even-if-pod-gone",
        ),
        pytest.param({"bundle_stored": False, "pod": pod()}, "wait", "", id="running-waits"),
        pytest.param({"bundle_stored": False, "pod": None}, "fail", "PodGone", id="pod-deleted"),
        pytest.param(
            {
                "bundle_stored": False,
                "pod": pod(ephemeral=terminated(1, finished=NOW, message="x")),
            },
            "wait",
            "",
            id="exited-grace-for-upload",
        ),
        pytest.param(
            {
                "bundle_stored": False,
                "pod": pod(
                    ephemeral=terminated(
                        1,
                        finished=NOW - dt.timedelta(minutes=1),
                        message="heap: connection refused",
                    )
                ),
            },
            "fail",
            "CaptureFailed",
            id="exited-without-bundle",
        ),
        pytest.param(
            {"bundle_stored": False, "pod": pod(), "started": NOW - dt.timedelta(hours=1)},
            "fail",
            "CaptureTimeout",
            id="timeout",
        ),
    ],
)
def test_follow_capture(kwargs: dict[str, Any], action: str, reason: str) -> None:
    arguments = {
        "incident_uid": "uid-1",
        "started": NOW,
        "now": NOW,
        "timeout": dt.timedelta(minutes=5),
        **kwargs,
    }
    progress = lifecycle.follow_capture(**arguments)
    assert progress.action == action
    assert progress.reason == reason
    if reason == "CaptureFailed":
        assert "connection refused" in progress.message


def test_collected_status_records_artifacts_and_errors() -> None:
    manifest = {
        "artifacts": [
            {
                "name": "heap",
                "file": "heap.pb.gz",
                "bytes": 10,
                "sha256": "ab",
                "durationSeconds": 0.1,
            },
            {"name": "gcore", "bytes": 0, "skipped": "SYS_PTRACE not granted (Pod Security)"},
        ]
    }
    status = lifecycle.collected_status(
        bundle="evidence://ns/inc",
        bundle_bytes=99,
        bundle_sha256="cd",
        outcome=lifecycle.AnalysisOutcome(artifacts=tuple(lifecycle.artifact_records(manifest))),
        now=NOW,
    )
    assert status["phase"] == "Collected"
    assert status["artifacts"][0] == {
        "name": "heap",
        "bytes": 10,
        "sha256": "ab",
        "durationSeconds": 0.1,
    }
    assert status["artifacts"][1]["error"] == "SYS_PTRACE not granted (Pod Security)"
    assert "not collected: gcore" in status["message"]
    assert status["completedAt"] == "2026-11-25T12:00:00Z"


def test_collected_status_names_the_top_function_first_in_readable_units() -> None:
    top = TopReport(
        sample_type="inuse_space",
        unit="bytes",
        total=160 * 2**20,
        functions=(FunctionStat("main.retainSessionBuffers", 155236116, 155236116),),
    )
    manifest = {"artifacts": [{"name": "heap", "bytes": 10, "sha256": "ab"}]}
    status = lifecycle.collected_status(
        bundle="evidence://ns/inc",
        bundle_bytes=99,
        bundle_sha256="cd",
        outcome=lifecycle.AnalysisOutcome(
            analysis=lifecycle.analysis_of(Summary(top=top, goroutines=8)),
            artifacts=tuple(lifecycle.artifact_records(manifest)),
        ),
        now=NOW,
    )
    assert status["message"] == "top in-use function main.retainSessionBuffers (148Mi in use)"
    assert status["analysis"]["top"][0]["flatBytes"] == 155236116  # exact in the status


@pytest.mark.parametrize(
    ("outcome", "message"),
    [
        pytest.param(
            lifecycle.AnalysisOutcome(refused="heap.pb.gz: more than 500000 samples"),
            "analysis refused: heap.pb.gz: more than 500000 samples",
            id="refused",
        ),
        pytest.param(
            lifecycle.AnalysisOutcome(failed="heap.pb.gz: truncated varint"),
            "heap analysis failed: heap.pb.gz: truncated varint",
            id="failed",
        ),
    ],
)
def test_collected_status_says_why_there_is_no_analysis(
    outcome: lifecycle.AnalysisOutcome, message: str
) -> None:
    status = lifecycle.collected_status(
        bundle="evidence://ns/inc", bundle_bytes=99, bundle_sha256="cd", outcome=outcome, now=NOW
    )
    assert status["phase"] == "Collected"
    assert status["message"] == message
    assert "analysis" not in status


@pytest.mark.parametrize(
    ("attempts", "refused"),
    [
        pytest.param(0, None, id="first"),
        pytest.param(1, None, id="one-unfinished-gets-another-chance"),
        pytest.param(2, "2 earlier attempts did not finish", id="then-no-more"),
    ],
)
def test_analysis_is_not_retried_forever(attempts: int, refused: str | None) -> None:
    assert lifecycle.analysis_refusal(attempts) == refused


def test_text_from_a_bundle_is_clipped_for_the_status() -> None:
    manifest = {"artifacts": [{"name": "n" * 100_000, "error": "e" * 100_000, "bytes": "x"}] * 99}
    records = lifecycle.artifact_records(manifest)
    assert len(records) == 32
    assert len(records[0].name) <= 512 and len(records[0].error or "") <= 512
    assert records[0].bytes == 0


# --- the gate: who may capture what (issue 12 item 1) ----------------------------------

GATE_NS = "shop"


def gated_pod(labels: dict[str, str] | None = None) -> dict[str, Any]:
    return make_pod("checkout-1", namespace=GATE_NS, labels=labels or {"app": "checkout"})


def hand_made(
    name: str = "mine",
    *,
    pod: str = "checkout-1",
    created: dt.datetime = NOW,
    phase: str | None = None,
    policy: str | None = None,
    opened_at: str | None = None,
    deleting: bool = False,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {
        "name": name,
        "namespace": GATE_NS,
        "creationTimestamp": rfc3339(created),
    }
    if opened_at:
        metadata["annotations"] = {OPENED_AT_ANNOTATION: opened_at}
    if deleting:
        metadata["deletionTimestamp"] = rfc3339(created)
    return {
        "metadata": metadata,
        "spec": {"pod": pod, **({"policy": policy} if policy else {})},
        "status": {"phase": phase} if phase else {},
    }


PERMISSIVE = make_candidate("permissive", namespace=GATE_NS, match_labels={"app": "other"})
STRICT = make_candidate(
    "checkout", namespace=GATE_NS, capture={"enabled": False}, match_labels={"app": "checkout"}
)
SLOW = make_candidate("checkout", namespace=GATE_NS, capture={"cooldown": "10m", "traceSeconds": 9})
EARLIER = NOW - dt.timedelta(minutes=1)


@pytest.mark.parametrize(
    ("policies", "others", "max_concurrent", "reason"),
    [
        pytest.param([SLOW], [], 3, None, id="governed-and-free"),
        pytest.param([PERMISSIVE], [], 3, "NoGoverningPolicy", id="no-policy-selects-the-pod"),
        pytest.param([], [], 3, "NoGoverningPolicy", id="no-policy-in-the-namespace"),
        pytest.param([STRICT, PERMISSIVE], [], 3, "CaptureDisabled", id="capture-disabled"),
        pytest.param(
            [SLOW],
            [hand_made("before", created=EARLIER, phase="Collected")],
            3,
            "Cooldown",
            id="cooldown-after-an-earlier-capture",
        ),
        pytest.param(
            [SLOW],
            [hand_made("before", created=NOW - dt.timedelta(minutes=11))],
            3,
            None,
            id="cooldown-over",
        ),
        pytest.param(
            [SLOW],
            [hand_made("before", created=EARLIER, phase="Skipped")],
            3,
            None,
            id="a-skipped-incident-starts-no-cooldown",
        ),
        pytest.param(
            [SLOW],
            [hand_made("before", created=EARLIER, deleting=True)],
            3,
            None,
            id="a-deleted-incident-starts-no-cooldown",
        ),
        pytest.param(
            [SLOW],
            [hand_made("later", created=NOW + dt.timedelta(seconds=1))],
            3,
            None,
            id="a-later-incident-never-refuses-an-earlier-one",
        ),
        pytest.param(
            [SLOW],
            [hand_made("zzz", created=NOW), hand_made("aaa", created=NOW)],
            9,
            "Cooldown",
            id="same-second-the-smaller-name-goes-first",
        ),
        pytest.param(
            [SLOW],
            [hand_made("zzz", created=NOW, phase="Capturing")],
            9,
            "Cooldown",
            id="a-started-capture-counts-however-it-sorts",
        ),
        pytest.param(
            [SLOW],
            [hand_made(f"busy-{i}", pod=f"other-{i}", phase="Capturing") for i in range(2)],
            2,
            "ConcurrencyLimit",
            id="cluster-cap-reached",
        ),
        pytest.param(
            [SLOW],
            [hand_made("busy", pod="other", created=NOW + dt.timedelta(1), phase="Capturing")],
            1,
            "ConcurrencyLimit",
            id="a-running-capture-holds-a-slot-whenever-it-started",
        ),
        pytest.param(
            [SLOW],
            [hand_made("queued", pod="other", created=NOW + dt.timedelta(1), phase="Pending")],
            1,
            None,
            id="a-later-waiting-incident-does-not-hold-our-slot",
        ),
        pytest.param(
            [SLOW],
            [hand_made("done", pod="other", created=EARLIER, phase="Collected")],
            1,
            None,
            id="finished-captures-free-their-slot",
        ),
    ],
)
def test_gate_capture(
    policies: list[Any], others: list[dict[str, Any]], max_concurrent: int, reason: str | None
) -> None:
    incident = hand_made()
    gate = lifecycle.gate_capture(
        incident=incident,
        pod=gated_pod(),
        policies=policies,
        incidents=[incident, *others],
        now=NOW,
        max_concurrent=max_concurrent,
    )
    if reason is None:
        assert gate.refused is None, gate.refused
        assert gate.policy is not None and gate.policy.name == "checkout"
    else:
        assert gate.refused is not None and gate.refused[0] == reason, gate.refused
        assert "checkout-1" in gate.refused[1] or reason == "ConcurrencyLimit"


def test_a_hand_made_incident_takes_the_governing_policys_settings_whatever_it_names() -> None:
    gate = lifecycle.gate_capture(
        incident=hand_made(policy="permissive"),
        pod=gated_pod(),
        policies=[SLOW, PERMISSIVE],
        incidents=[],
        now=NOW,
        max_concurrent=3,
    )
    assert gate.refused is None
    assert gate.capture == CaptureSpec(cooldown="10m", traceSeconds=9)
    named = lifecycle.gate_capture(
        incident=hand_made(policy="permissive"),
        pod=gated_pod(),
        policies=[STRICT, PERMISSIVE],
        incidents=[],
        now=NOW,
        max_concurrent=3,
    )
    assert named.refused is not None and named.refused[0] == "CaptureDisabled"


def test_an_opened_at_annotation_does_not_jump_the_queue() -> None:
    """The order is the API server's creationTimestamp, not an annotation the creator set."""
    earlier = hand_made("first", created=EARLIER, phase="Pending")
    forged = hand_made("second", pod="other", opened_at="2020-01-01T00:00:00Z")
    gate = lifecycle.gate_capture(
        incident=forged,
        pod=gated_pod(),
        policies=[SLOW],
        incidents=[earlier, forged],
        now=NOW,
        max_concurrent=1,
    )
    assert gate.refused is not None and gate.refused[0] == "ConcurrencyLimit"


@pytest.mark.parametrize(
    ("namespace", "refused"),
    [
        pytest.param("kube-system", True, id="kube-system"),
        pytest.param("memwarden-system", True, id="memwardens-own"),
        pytest.param("shop", False, id="a-tenant-namespace"),
    ],
)
def test_never_governed_namespaces_get_no_capture(namespace: str, refused: bool) -> None:
    why = lifecycle.ungoverned_namespace(
        namespace, never_governed=frozenset({"kube-system", "memwarden-system"})
    )
    assert (why is not None) == refused
    if why:
        assert namespace in why
