"""The closed-loop stack as scenarios see it, wherever it runs.

``LocalLoop``: this machine (node simulator, local Prometheus/Alertmanager, the operator
process). ``KindLoop``: a kind cluster prepared by ``e2e/kind/run.sh`` (real kubelets,
memwarden installed by its chart). The scenarios in tests/e2e use only ``Loop``'s
interface, so both run the same code.
"""

from __future__ import annotations

import json
import os
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from memwarden_testing.alertmanager import AlertmanagerProcess
from memwarden_testing.cluster import REPO
from memwarden_testing.nodesim import NodeSimulator
from memwarden_testing.operator import OperatorProcess
from memwarden_testing.prometheus import PrometheusServer

#: The image names the node simulator maps to local programs; kind loads images so named.
LEAKY_IMAGE = "registry.example.com/memwarden/leaky:dev"
TOOLBOX_IMAGE = "registry.example.com/memwarden/toolbox:dev"
ALERTED_PREFIX = "alerted-"
ALERT_RATIO = 0.5


@dataclass
class Loop:
    """What a closed-loop scenario talks to: the cluster, Prometheus, the evidence API."""

    kubeconfig: Path
    kube: client.ApiClient
    prometheus_url: str
    evidence_url: str
    leaky_image: str = LEAKY_IMAGE

    def pin(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The pod spec, placed where this loop runs its workloads."""
        return spec

    def workload_metrics(self, pod: dict[str, Any]) -> str:
        """The workload's own /metrics (port 6060), through the API server's pod proxy."""
        text: str = client.CoreV1Api(self.kube).connect_get_namespaced_pod_proxy_with_path(
            f"{pod['metadata']['name']}:6060", pod["metadata"]["namespace"], "metrics"
        )
        return text

    def working_set(self, *, namespace: str, pod: str) -> float:
        """The container's working set in bytes, as Prometheus has it now (0 if unknown)."""
        query = (
            f'max(container_memory_working_set_bytes{{namespace="{namespace}",pod="{pod}",'
            f'container="app"}})'
        )
        url = f"{self.prometheus_url}/api/v1/query?{urllib.parse.urlencode({'query': query})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            result = json.load(response)["data"]["result"]
        return float(result[0]["value"][1]) if result else 0.0


@dataclass
class LocalLoop(Loop):
    """This machine: pods pinned to the session's (tainted) node simulator."""

    sim: NodeSimulator | None = None
    prometheus: PrometheusServer | None = None
    alertmanager: AlertmanagerProcess | None = None
    operator: OperatorProcess | None = None

    def pin(self, spec: dict[str, Any]) -> dict[str, Any]:
        assert self.sim is not None
        return self.sim.pin(spec)

    def workload_metrics(self, pod: dict[str, Any]) -> str:
        """Straight from the pod's loopback IP: the API server refuses to proxy to loopback."""
        url = f"http://{pod['status']['podIP']}:6060/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            return str(response.read().decode())


def kind_loop(kube: client.ApiClient, kubeconfig: Path) -> Loop:
    """The loop ``e2e/kind/run.sh`` prepared: URLs of its port-forwards in the environment."""
    return Loop(
        kubeconfig=kubeconfig,
        kube=kube,
        prometheus_url=os.environ["MEMWARDEN_E2E_PROMETHEUS_URL"],
        evidence_url=os.environ["MEMWARDEN_E2E_EVIDENCE_URL"],
        leaky_image=os.environ.get("MEMWARDEN_E2E_LEAKY_IMAGE", LEAKY_IMAGE),
    )


def alert_rule() -> dict[str, object]:
    """The rule of docs/alerting.md, for pods named alerted-*, with a test's threshold."""
    text = (REPO / "docs" / "alerting.md").read_text()
    blocks = [b.split("```", 1)[0] for b in text.split("```yaml")[1:]]
    rule: dict[str, object] = yaml.safe_load(blocks[0])["spec"]["groups"][0]["rules"][0]
    expr = str(rule["expr"]).replace(
        'container!="POD"}', f'container!="POD",pod=~"{ALERTED_PREFIX}.*"}}'
    )
    expr = expr.replace("> 0.9", f"> {ALERT_RATIO}")
    assert f"> {ALERT_RATIO}" in expr and ALERTED_PREFIX in expr, expr
    return {**rule, "expr": expr, "for": "2s"}
