"""Findings from Alertmanager -> governed pod, policy and container; the per-pod queue."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from memwarden.api import CaptureSpec
from memwarden.risk.alertmanager import ANY_CONTAINER
from memwarden.risk.attribution import attribute
from memwarden.risk.findings import Finding
from memwarden.risk.queue import FindingQueue
from memwarden.status import pod_view
from memwarden_testing.builders import make_candidate, make_container, make_pod

pytestmark = pytest.mark.unit

NS = "shop"


def finding(pod: str = "checkout-1", *, container: str = ANY_CONTAINER, **kw: Any) -> Finding:
    fields: dict[str, Any] = {
        "namespace": NS,
        "pod": pod,
        "container": container,
        "source": "alertmanager",
        "signal": "MemwardenNearLimit",
        "alert_name": "MemwardenNearLimit",
        **kw,
    }
    return Finding(**fields)


PODS = {
    NS: [
        pod_view(
            make_pod(
                "checkout-1",
                namespace=NS,
                labels={"app": "checkout"},
                containers=[make_container("app"), make_container("proxy")],
            )
        ),
        pod_view(make_pod("other-1", namespace=NS, labels={"app": "other"})),
        pod_view(make_pod("lonely-1", namespace=NS, labels={"app": "lonely"})),
    ]
}
#: Alerts are accepted only for pods whose policy opted in.
ACCEPTS_ALERTS = {"alerts": True}
POLICIES = {
    NS: [
        make_candidate("checkout", namespace=NS, containers=["app"], oomRisk=ACCEPTS_ALERTS),
        make_candidate(
            "checkout-urgent",
            namespace=NS,
            match_labels={"app": "checkout", "tier": "gold"},
            priority=10,
            oomRisk=ACCEPTS_ALERTS,
        ),
        make_candidate("other", namespace=NS, match_labels={"app": "other"}, oomRisk={}),
    ]
}

CASES = [
    pytest.param(finding(), ("checkout", "app"), None, id="container-chosen-from-policy"),
    pytest.param(finding(container="app"), ("checkout", "app"), None, id="named-container"),
    pytest.param(
        finding(container="proxy"), None, "container not governed", id="ungoverned-container"
    ),
    pytest.param(finding(pod="gone-1"), None, "unknown pod", id="pod-not-in-index"),
    pytest.param(finding(namespace="elsewhere"), None, "unknown pod", id="other-namespace"),
    pytest.param(finding(pod="lonely-1"), None, "no policy", id="no-policy-selects-pod"),
    pytest.param(finding(pod="other-1"), None, "alerts not accepted", id="policy-did-not-opt-in"),
    pytest.param(
        finding(labels={"namespace": NS, "exported_namespace": "payments"}),
        None,
        "namespace mismatch",
        id="labels-name-another-namespace",
    ),
    pytest.param(
        finding(labels={"namespace": NS, "exported_namespace": NS}),
        ("checkout", "app"),
        None,
        id="labels-agree-on-the-namespace",
    ),
]


@pytest.mark.parametrize(("given", "attributed", "reason"), CASES)
def test_attribution(
    given: Finding, attributed: tuple[str, str] | None, reason: str | None
) -> None:
    result = attribute([given], pods=PODS, policies=POLICIES)
    if attributed is None:
        assert result.findings == ()
        (aside,) = result.unattributed
        assert aside.reason == reason
        assert aside.finding == given
        assert given.pod in aside.message
    else:
        (found,) = result.findings
        assert (found.policy, found.container) == attributed
        assert (found.pod, found.signal, found.source) == (given.pod, given.signal, given.source)
        assert result.unattributed == ()
        assert result.captures == {(NS, "checkout"): CaptureSpec()}


def test_no_policy_accepts_alerts_unless_it_says_so() -> None:
    """Off by default: an alert author must not choose whose memory is dumped."""
    policies = {NS: [make_candidate("checkout", namespace=NS, oomRisk={"usageRatio": 0.8})]}
    result = attribute([finding()], pods=PODS, policies=policies)
    assert [a.reason for a in result.unattributed] == ["alerts not accepted"]
    assert "oomRisk.alerts" in result.unattributed[0].message


def test_attribution_keeps_order_and_each_policy_capture() -> None:
    capture = {"cooldown": "5m", "maxIncidentsPerHour": 2}
    policies = {
        NS: [make_candidate("checkout", namespace=NS, capture=capture, oomRisk=ACCEPTS_ALERTS)]
    }
    findings = [finding(), finding(pod="gone"), finding(container="proxy"), finding()]
    result = attribute(findings, pods=PODS, policies=policies)
    assert [(f.pod, f.container) for f in result.findings] == [
        ("checkout-1", "app"),
        ("checkout-1", "proxy"),
        ("checkout-1", "app"),
    ]
    assert [a.reason for a in result.unattributed] == ["unknown pod"]
    assert result.captures[(NS, "checkout")] == CaptureSpec.model_validate(capture)


# --- the queue --------------------------------------------------------------------------


def test_queue_keeps_one_finding_per_pod_and_counts_the_rest() -> None:
    queue = FindingQueue(limit=2)
    first = queue.offer([finding("a", value=1.0), finding("a", value=2.0), finding("b")])
    assert [(f.pod, f.value) for f in first.accepted] == [("a", 1.0), ("b", None)]
    assert [f.value for f in first.duplicates] == [2.0]
    second = queue.offer([finding("c"), finding("b")])
    assert [f.pod for f in second.dropped] == ["c"]
    assert [f.pod for f in second.duplicates] == ["b"]
    assert len(queue) == 2

    taken = asyncio.run(queue.take())
    assert [(f.pod, f.value) for f in taken] == [("a", 1.0), ("b", None)]
    assert len(queue) == 0
    assert queue.offer([finding("a")]).accepted  # room again, and "a" is new again


def test_queue_take_waits_for_an_offer() -> None:
    async def scenario() -> list[Finding]:
        queue = FindingQueue()
        waiting = asyncio.create_task(queue.take())
        await asyncio.sleep(0)  # let take() block on the empty queue
        assert not waiting.done()
        queue.offer([finding("a")])
        return await asyncio.wait_for(waiting, timeout=5)

    assert [f.pod for f in asyncio.run(scenario())] == ["a"]


def test_queue_refuses_a_silly_limit() -> None:
    with pytest.raises(ValueError, match="limit"):
        FindingQueue(limit=0)
