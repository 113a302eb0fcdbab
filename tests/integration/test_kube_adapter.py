"""The kube adapter against the real API server: the calls made outside kopf handlers."""

from __future__ import annotations

import pytest
from kubernetes import client

from memwarden.kube import Kube, NotFound

pytestmark = pytest.mark.integration


def test_an_event_posted_by_the_adapter_is_listed_on_its_object(
    kube: client.ApiClient, namespace: str
) -> None:
    config_map = client.CoreV1Api(kube).create_namespaced_config_map(
        namespace, {"metadata": {"name": "subject"}, "data": {}}
    )
    subject = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {
            "name": "subject",
            "namespace": namespace,
            "uid": config_map.metadata.uid,
        },
    }

    Kube(kube).post_event(subject, type="Normal", reason="EvidenceCollected", message="x" * 2000)

    events = client.CoreV1Api(kube).list_namespaced_event(
        namespace, field_selector="involvedObject.name=subject"
    )
    [event] = events.items
    assert (event.type, event.reason) == ("Normal", "EvidenceCollected")
    assert event.involved_object.uid == config_map.metadata.uid
    assert event.involved_object.kind == "ConfigMap"
    assert len(event.message) == 1024  # cut, not refused
    assert event.source.component == "memwarden"


def test_an_event_in_a_missing_namespace_is_a_clear_error(kube: client.ApiClient) -> None:
    subject = {"kind": "ConfigMap", "metadata": {"name": "x", "namespace": "no-such-namespace"}}
    with pytest.raises(NotFound, match="post Event Gone in no-such-namespace"):
        Kube(kube).post_event(subject, type="Normal", reason="Gone", message="")
