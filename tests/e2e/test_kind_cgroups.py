"""Only a real node can say it: the cgroup files the kubelet wrote equal `memwarden explain`.

Runs on a kind cluster prepared by e2e/kind/run.sh (kubelets with MemoryQoS,
memoryThrottlingFactor 0.9, TieredReservation); deselected everywhere else (marker
``kind``): the node simulator has no cgroups to read.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from memwarden.quantity import parse_bytes
from memwarden_testing.cluster import REPO, kubectl, wait_for
from memwarden_testing.loop import Loop

pytestmark = pytest.mark.kind

PROFILE = (
    "--kubernetes-minor",
    "37",
    "--throttling-factor",
    "0.9",
    "--reservation-policy",
    "TieredReservation",
)
FILES = ("memory.min", "memory.low", "memory.high", "memory.max")


def pod_body(loop: Loop, *, cpu: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "sized", "labels": {"tier": "go"}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "image": loop.leaky_image,
                    "env": [{"name": "LEAKY_PATTERN", "value": "none"}],
                    "resources": {"requests": dict(cpu), "limits": dict(cpu)},
                }
            ]
        },
    }


def read_cgroup(node: str, container_id: str) -> dict[str, int | None]:
    """The container's memory files, read on the kind node (docker exec)."""
    script = (
        f'd=$(find /sys/fs/cgroup -type d -name "*{container_id}*" | head -1); '
        f'for f in {" ".join(FILES)}; do echo "$f $(cat $d/$f)"; done'
    )
    out = subprocess.run(
        ["docker", "exec", node, "sh", "-c", script], capture_output=True, text=True, check=True
    ).stdout
    values: dict[str, int | None] = {}
    for line in out.splitlines():
        name, value = line.split()
        values[name] = (
            None if value == "max" or (name != "memory.max" and value == "0") else int(value)
        )
    return values


@pytest.mark.parametrize(
    ("memory", "cpu"),
    [
        pytest.param(
            {"protect": "128Mi", "max": "256Mi"}, {"cpu": "100m"}, id="burstable-low-and-high"
        ),
        pytest.param(
            {"request": "192Mi", "limit": "192Mi"}, {"cpu": "100m"}, id="guaranteed-min-no-high"
        ),
        pytest.param({"request": "64Mi", "limit": "256Mi"}, {}, id="burstable-plain"),
    ],
)
def test_kubelet_wrote_what_explain_predicted(
    loop: Loop, namespace: str, tmp_path: Path, memory: dict[str, str], cpu: dict[str, str]
) -> None:
    policy = {
        "apiVersion": "memwarden.dev/v1alpha1",
        "kind": "MemoryPolicy",
        "metadata": {"name": "sizing", "namespace": namespace},
        "spec": {"selector": {"matchLabels": {"tier": "go"}}, "memory": memory},
    }
    pod = pod_body(loop, cpu=cpu)
    (tmp_path / "policy.yaml").write_text(yaml.safe_dump(policy))
    (tmp_path / "pod.yaml").write_text(
        yaml.safe_dump({**pod, "metadata": {**pod["metadata"], "namespace": namespace}})
    )
    explained = subprocess.run(
        [
            str(REPO / ".venv/bin/memwarden"),
            "explain",
            "--policy",
            str(tmp_path / "policy.yaml"),
            "--pod",
            str(tmp_path / "pod.yaml"),
            *PROFILE,
            "-o",
            "json",
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    predicted = json.loads(explained.stdout)["containers"][0]["cgroup"]

    kubectl(loop.kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(policy))
    custom, core = client.CustomObjectsApi(loop.kube), client.CoreV1Api(loop.kube)

    def reconciled() -> Any:
        obj = custom.get_namespaced_custom_object(
            "memwarden.dev", "v1alpha1", namespace, "memorypolicies", "sizing"
        )
        return (obj.get("status") or {}).get("conditions")

    wait_for(reconciled, timeout=60, what="the policy reconciled")
    core.create_namespaced_pod(namespace, pod)
    running = wait_for(lambda: _running(core, namespace), timeout=120, what="the pod running")
    container_id = running.status.container_statuses[0].container_id.split("://", 1)[1]
    node = running.spec.node_name
    assert os.environ.get("MEMWARDEN_E2E_KIND_CLUSTER"), "run through e2e/kind/run.sh"

    actual = read_cgroup(node, container_id)
    for name in FILES:
        expected = predicted[name]
        want = None if expected in (None, "max") else parse_bytes(expected)
        assert actual[name] == want, (name, actual, predicted)


def _running(core: client.CoreV1Api, namespace: str) -> Any:
    pod = core.read_namespaced_pod("sized", namespace)
    return pod if pod.status.phase == "Running" and pod.status.container_statuses else None
