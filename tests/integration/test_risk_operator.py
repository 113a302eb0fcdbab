"""The risk loop end to end: the real operator, control plane, Prometheus and exporter.

Pods are created through the API (they stay Pending: there is no node) and admitted
with the policy's limits; the exporter serves their cAdvisor-style series.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from memwarden_testing.builders import make_container, make_policy, make_policy_spec
from memwarden_testing.cluster import events_on, kubectl, wait_for
from memwarden_testing.operator import OperatorProcess
from memwarden_testing.prometheus import (
    FAST_WINDOWS,
    ContainerSeries,
    PrometheusServer,
    SeriesExporter,
    flat,
    rising,
)

GI = 2**30
MI = 2**20
LABELS = {"app": "checkout"}

#: A Prometheus scraping every second lets the operator use short windows and cycles. The
#: session's Prometheus records memwarden's rules for these windows: the operator reads
#: them (risk_recording_rules=auto, looked up every 5 s here instead of 5 min).
RISK_ENV = {
    "MEMWARDEN_RISK_INTERVAL_SECONDS": "1",
    "MEMWARDEN_RISK_BACKOFF_MAX_SECONDS": "2",
    "MEMWARDEN_PROMETHEUS_TIMEOUT_SECONDS": "2",
    "MEMWARDEN_RISK_REGRESSION_WINDOW": FAST_WINDOWS.regression,
    "MEMWARDEN_RISK_RATE_WINDOW": FAST_WINDOWS.rate,
    "MEMWARDEN_RISK_OOM_WINDOW": FAST_WINDOWS.oom,
    "MEMWARDEN_RISK_RECORDING_RULES_CHECK_SECONDS": "5",
    # Incidents stay Pending here (no node to capture on): the cap must not get in the way.
    "MEMWARDEN_MAX_CONCURRENT_CAPTURES": "1000",
}


@pytest.fixture(scope="module")
def risk_operator(
    operator: OperatorProcess, prometheus_server: PrometheusServer
) -> Iterator[OperatorProcess]:
    """The session's operator, restarted with Prometheus configured; restored after."""
    saved = dict(operator.extra_env)
    operator.extra_env.update({**RISK_ENV, "MEMWARDEN_PROMETHEUS_URL": prometheus_server.url})
    operator.stop()
    operator.start()
    yield operator
    operator.extra_env = saved
    operator.stop()
    operator.start()


@pytest.fixture
def risky(
    risk_operator: OperatorProcess,
    prometheus: PrometheusServer,
    series_exporter: SeriesExporter,
    namespace: str,
) -> Iterator[OperatorProcess]:
    """The risk operator, running; the test namespace's series removed after the test."""
    if risk_operator.process is None or risk_operator.process.poll() is not None:
        risk_operator.start()
    yield risk_operator
    series_exporter.remove_namespace(namespace)


def apply(kubeconfig: Path, obj: dict[str, Any]) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(obj))


def risk_policy(namespace: str, **risk: Any) -> dict[str, Any]:
    spec = make_policy_spec(
        match_labels=LABELS,
        memory={"request": "512Mi", "limit": "1Gi"},
        oomRisk={"for": "5s", **risk},
        capture={"cooldown": "30m"},
    )
    return make_policy(namespace=namespace, spec=spec)


def policy_status(kube: client.ApiClient, namespace: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        "memwarden.dev", "v1alpha1", namespace, "memorypolicies", "checkout"
    )
    return dict(obj.get("status") or {})


def risk_condition(kube: client.ApiClient, namespace: str) -> dict[str, Any] | None:
    conditions = policy_status(kube, namespace).get("conditions") or []
    return next((c for c in conditions if c.get("type") == "RiskEvaluation"), None)


def wait_risk(
    kube: client.ApiClient, namespace: str, status: str, timeout: float = 30
) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        condition = risk_condition(kube, namespace)
        return condition if condition and condition["status"] == status else None

    return wait_for(check, timeout=timeout, what=f"RiskEvaluation={status}")


def incidents(kube: client.ApiClient, namespace: str) -> list[dict[str, Any]]:
    listed = client.CustomObjectsApi(kube).list_namespaced_custom_object(
        "memwarden.dev", "v1alpha1", namespace, "memoryincidents"
    )
    return list(listed["items"])


def wait_policy_indexed(kube: client.ApiClient, namespace: str) -> None:
    """The operator has the policy once its status carries the Ready condition."""
    wait_for(
        lambda: any(
            c.get("type") == "Ready" for c in policy_status(kube, namespace).get("conditions", [])
        ),
        timeout=30,
        what="policy reconciled",
    )


def create_pod(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": LABELS},
        "spec": {"containers": [make_container()]},
    }
    created = client.CoreV1Api(kube).create_namespaced_pod(namespace, body)
    pod: dict[str, Any] = client.ApiClient().sanitize_for_serialization(created)
    return pod


def memory_limit(pod: dict[str, Any]) -> str | None:
    return ((pod["spec"]["containers"][0].get("resources") or {}).get("limits") or {}).get("memory")


def stays(predicate: Callable[[], bool], *, seconds: float, what: str) -> None:
    """Poll ``predicate`` for ``seconds``; fail as soon as it is false."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), what
        time.sleep(0.5)


def events_about(kube: client.ApiClient, namespace: str, text: str) -> list[Any]:
    return [e for e in events_on(kube, namespace, "checkout") if text in (e.message or "")]


def setup_pods(
    kube: client.ApiClient, kubeconfig: Path, namespace: str, exporter: SeriesExporter, **risk: Any
) -> None:
    apply(kubeconfig, risk_policy(namespace, **risk))
    wait_policy_indexed(kube, namespace)
    for name in ("leaky", "steady"):
        assert memory_limit(create_pod(kube, namespace, name)) == "1Gi"
    exporter.set_many(
        [
            # 512 MiB to go at 2 MiB/s: about 256 s to the limit, well within 10m.
            ContainerSeries(
                namespace, "leaky", "app", working_set=rising(GI / 2, 2 * MI, until=GI)
            ),
            ContainerSeries(namespace, "steady", "app", working_set=flat(GI / 2)),
        ]
    )


def test_rising_series_opens_one_incident_and_cooldown_survives_a_restart(
    risky: OperatorProcess, kube: client.ApiClient, namespace: str, series_exporter: SeriesExporter
) -> None:
    setup_pods(kube, risky.kubeconfig, namespace, series_exporter)

    opened = wait_for(lambda: incidents(kube, namespace), timeout=60, what="an incident")
    stays(lambda: len(incidents(kube, namespace)) == 1, seconds=5, what="exactly one incident")
    (incident,) = opened
    spec = incident["spec"]
    assert (spec["pod"], spec["container"], spec["policy"]) == ("leaky", "app", "checkout")
    trigger = spec["trigger"]
    assert (trigger["source"], trigger["signal"], trigger["threshold"]) == (
        "prometheus",
        "timeToLimit",
        600,
    )
    assert 150 < trigger["value"] < 300  # seconds left at 2 MiB/s
    assert incident["metadata"]["labels"]["memwarden.dev/pod"] == "leaky"
    assert incident["metadata"]["name"].startswith("leaky-")
    assert wait_risk(kube, namespace, "True")["reason"] == "Evaluated"
    # Usage, time to limit and OOM events: all three read the recording rules.
    wait_for(
        lambda: "(3 on recording rules)" in (risk_condition(kube, namespace) or {})["message"],
        timeout=20,
        what="queries on recording rules",
    )
    wait_for(
        lambda: policy_status(kube, namespace).get("lastIncident") == incident["metadata"]["name"],
        timeout=10,
        what="lastIncident",
    )
    wait_for(
        lambda: events_about(kube, namespace, "suppressed (cooldown)"),
        timeout=20,
        what="cooldown Event",
    )

    # The signal still holds; a restarted operator must see the incident and hold off.
    restarted_at = time.time()
    risky.stop()
    risky.start()
    wait_for(
        lambda: [
            e
            for e in events_about(kube, namespace, "suppressed (cooldown)")
            if (e.last_timestamp or e.event_time or e.metadata.creation_timestamp).timestamp()
            >= restarted_at - 1
        ],
        timeout=30,
        what="cooldown Event from the restarted operator",
    )
    assert [i["metadata"]["name"] for i in incidents(kube, namespace)] == [
        incident["metadata"]["name"]
    ]


def test_prometheus_outage_degrades_and_recovers(
    risky: OperatorProcess,
    kube: client.ApiClient,
    namespace: str,
    series_exporter: SeriesExporter,
    prometheus: PrometheusServer,
) -> None:
    apply(risky.kubeconfig, risk_policy(namespace))
    wait_policy_indexed(kube, namespace)
    # A governed pod with series: with nothing to evaluate, nothing is queried.
    assert memory_limit(create_pod(kube, namespace, "steady")) == "1Gi"
    series_exporter.set(ContainerSeries(namespace, "steady", "app", working_set=flat(GI / 2)))
    wait_risk(kube, namespace, "True")

    prometheus.stop()
    try:
        degraded = wait_risk(kube, namespace, "False")
        assert degraded["reason"] == "PrometheusUnavailable"
        assert prometheus.url.split("//")[1] in degraded["message"]
        # Other conditions are left alone.
        types = {c["type"] for c in policy_status(kube, namespace)["conditions"]}
        assert {"Ready", "RiskEvaluation"} <= types
        assert risky.process is not None and risky.process.poll() is None
        assert memory_limit(create_pod(kube, namespace, "during-outage")) == "1Gi"
    finally:
        prometheus.start()
    recovered = wait_risk(kube, namespace, "True", timeout=30)
    assert recovered["reason"] == "Evaluated"
    assert incidents(kube, namespace) == []
