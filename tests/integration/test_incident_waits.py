"""The incident lifecycle on the real operator, where no node is needed: an incident for a
pod that is not running waits for it, quietly, and a missing pod fails it with a reason."""

from __future__ import annotations

from typing import Any

import pytest
from kubernetes import client

from memwarden.api import GROUP, VERSION
from memwarden_testing.builders import make_pod
from memwarden_testing.cluster import events_on, wait_for
from memwarden_testing.evidence import make_incident
from memwarden_testing.operator import OperatorProcess

pytestmark = pytest.mark.integration

PLURAL = "memoryincidents"


def incident_status(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    obj = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return dict(obj.get("status") or {})


def create_and_wait(
    kube: client.ApiClient, namespace: str, name: str, *, pod: str, phase: str
) -> dict[str, Any]:
    """Create incident ``name`` for ``pod``; its status once the operator set ``phase``."""
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, make_incident(name, pod=pod)
    )
    return wait_for(
        lambda: (s := incident_status(kube, namespace, name)).get("phase") == phase and s,
        what=f"incident {name} {phase}",
    )


def test_an_incident_waits_for_its_pod_without_error_events(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    log_start = memwarden.log_path.stat().st_size
    pod = make_pod("unschedulable", namespace=namespace)
    pod["spec"]["nodeSelector"] = {"memwarden.dev/test": "no-such-node"}  # Pending for good
    client.CoreV1Api(kube).create_namespaced_pod(namespace, pod)
    status = create_and_wait(kube, namespace, "waits", pod="unschedulable", phase="Pending")
    assert status["message"] == "container app is not running yet"
    retry = "Handler 'start_capture' failed temporarily: waiting: container app"

    def retries() -> list[str]:
        with memwarden.log_path.open(errors="replace") as log:
            log.seek(log_start)
            return [line for line in log.read().splitlines() if retry in line]

    lines = wait_for(lambda: len(r := retries()) >= 2 and r, what="the operator to retry twice")
    assert all(" INFO " in line for line in lines), lines
    assert not [e for e in events_on(kube, namespace, "waits") if e.type != "Normal"]


def test_an_incident_for_a_missing_pod_fails_with_the_reason(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    status = create_and_wait(kube, namespace, "orphan", pod="never-created", phase="Failed")
    assert status["reason"] == "PodNotFound"
    assert "does not exist" in status["message"]
    warnings = wait_for(
        lambda: [e for e in events_on(kube, namespace, "orphan") if e.type == "Warning"],
        what="a Warning Event saying why",
    )
    assert any("does not exist" in (e.message or "") for e in warnings)
