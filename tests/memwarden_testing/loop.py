"""The closed-loop stack as scenarios see it, wherever it runs.

``LocalLoop``: this machine (node simulator, local Prometheus/Alertmanager, the operator
process). ``KindLoop``: a kind cluster prepared by ``e2e/kind/run.sh`` (real kubelets,
memwarden installed by its chart). The scenarios in tests/e2e use only ``Loop``'s
interface, so both run the same code.
"""

from __future__ import annotations

import json
import os
import subprocess
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from memwarden_testing.alertmanager import AlertmanagerProcess
from memwarden_testing.cluster import REPO, kubectl, wait_for
from memwarden_testing.evidence import evidence_reader_token
from memwarden_testing.nodesim import NodeSimulator
from memwarden_testing.operator import OperatorProcess
from memwarden_testing.prometheus import PrometheusServer

#: The image names the node simulator maps to local programs; kind loads images so named.
LEAKY_IMAGE = "registry.example.com/memwarden/leaky:dev"
#: The workload's user: distroless's ``nonroot``.
NON_ROOT_WORKLOAD = {
    "runAsUser": 65532,
    "runAsGroup": 65532,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}
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
    evidence_ca: Path | None = None
    """The CA of the evidence API's certificate (None: the system's trust store)."""

    def pin(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The pod spec, placed where this loop runs its workloads."""
        return spec

    def workload_metrics(self, pod: dict[str, Any]) -> str:
        """The workload's own /metrics (port 6060), through the API server's pod proxy."""
        text: str = client.CoreV1Api(self.kube).connect_get_namespaced_pod_proxy_with_path(
            f"{pod['metadata']['name']}:6060", pod["metadata"]["namespace"], "metrics"
        )
        return text

    def scrape(self, pod: dict[str, Any]) -> None:
        """Have Prometheus scrape the workload's own /metrics (its Go runtime metrics).

        Here nothing to do: the kind Prometheus discovers pods annotated ``SCRAPED``."""

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

    def scrape(self, pod: dict[str, Any]) -> None:
        """A file-discovered target with the labels Kubernetes discovery would give it."""
        assert self.prometheus is not None
        self.prometheus.scrape_pod(
            f"{pod['status']['podIP']}:6060",
            namespace=pod["metadata"]["namespace"],
            pod=pod["metadata"]["name"],
            container="app",
        )

    def workload_metrics(self, pod: dict[str, Any]) -> str:
        """Straight from the pod's loopback IP: the API server refuses to proxy to loopback.
        Polled: Running (no readiness probe) says the process started, not that it listens."""
        url = f"http://{pod['status']['podIP']}:6060/metrics"

        def read() -> str | None:
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    return str(response.read().decode())
            except (urllib.error.URLError, ConnectionError):
                return None

        text: str = wait_for(read, timeout=30, what=f"the workload's metrics at {url}")
        return text


def kind_loop(kube: client.ApiClient, kubeconfig: Path) -> Loop:
    """The loop ``e2e/kind/run.sh`` prepared: URLs of its port-forwards in the environment."""
    return Loop(
        kubeconfig=kubeconfig,
        kube=kube,
        prometheus_url=os.environ["MEMWARDEN_E2E_PROMETHEUS_URL"],
        evidence_url=os.environ["MEMWARDEN_E2E_EVIDENCE_URL"],
        evidence_ca=Path(ca) if (ca := os.environ.get("MEMWARDEN_E2E_EVIDENCE_CA")) else None,
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


# --- scenario helpers, shared by the tests/e2e modules ------------------------------


#: The scenarios' policy: a 200Mi limit, risk at half of it, a leak of 3Mi/s.
LIMIT_MI = 200
POLICY_RATIO = 0.5
LEAK_RATE = "3Mi"


def apply(loop: Loop, obj: dict[str, Any]) -> None:
    """``kubectl apply`` an object, as a user (or GitOps) would."""
    kubectl(loop.kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(obj))


def policy(
    namespace: str,
    *,
    oom_risk: bool,
    artifacts: list[str],
    trace_seconds: int = 1,
    alerts: bool = False,
) -> dict[str, Any]:
    """The scenarios' MemoryPolicy for pods labelled ``tier: go``; ``alerts`` accepts
    Alertmanager pushes for them (without ``oom_risk``: with memwarden's own signals off)."""
    spec: dict[str, Any] = {
        "selector": {"matchLabels": {"tier": "go"}},
        "memory": {"request": "64Mi", "limit": f"{LIMIT_MI}Mi"},
        "runtime": {"go": {"memoryLimit": "90%", "gogc": "100"}},
        "capture": {"artifacts": artifacts, "traceSeconds": trace_seconds, "cooldown": "30m"},
    }
    if oom_risk:
        spec["oomRisk"] = {"usageRatio": POLICY_RATIO, "timeToLimit": "0s", "for": "3s"}
    if alerts:
        spec["oomRisk"] = {"usageRatio": 0, "timeToLimit": "0s", **spec.get("oomRisk", {})}
        spec["oomRisk"]["alerts"] = True
    return {
        "apiVersion": "memwarden.dev/v1alpha1",
        "kind": "MemoryPolicy",
        "metadata": {"name": "go-services", "namespace": namespace},
        "spec": spec,
    }


#: The pod annotations Prometheus' pod scrape job (docs/risk.md) keeps: leaky's /metrics.
SCRAPED = {"prometheus.io/scrape": "true", "prometheus.io/port": "6060"}


def deployment(
    loop: Loop,
    name: str,
    *,
    pattern: str,
    env: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One replica of the leaky workload (``pattern`` none, steady...) where the loop runs;
    ``env`` adds variables, ``annotations`` go on the pod (``SCRAPED``: its Go runtime
    metrics are scraped)."""
    labels = {"app": name, "tier": "go"}
    pod_spec = loop.pin(
        {
            "terminationGracePeriodSeconds": 2,
            "containers": [
                {
                    "name": "app",
                    "image": loop.leaky_image,
                    "ports": [{"containerPort": 6060, "name": "pprof"}],
                    "env": [
                        {"name": "LEAKY_RATE", "value": LEAK_RATE},
                        {"name": "LEAKY_PATTERN", "value": pattern},
                        *({"name": k, "value": v} for k, v in (env or {}).items()),
                    ],
                    # Non-root, as production Go services run: the capture must still get
                    # /proc files and a core (issue 12 items 11 and 12).
                    "securityContext": NON_ROOT_WORKLOAD,
                }
            ],
        }
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": name},
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": dict(annotations or {})},
                "spec": pod_spec,
            },
        },
    }


def running_pod(loop: Loop, namespace: str, app: str) -> dict[str, Any]:
    """The Running pod labelled ``app``, once it has an address."""
    core = client.CoreV1Api(loop.kube)

    def ready() -> dict[str, Any] | None:
        for pod in core.list_namespaced_pod(namespace, label_selector=f"app={app}").items:
            if pod.status.phase == "Running" and pod.status.pod_ip:
                return dict(loop.kube.sanitize_for_serialization(pod))
        return None

    return wait_for(ready, timeout=90, what=f"{app} pod running")


def incidents(loop: Loop, namespace: str) -> list[dict[str, Any]]:
    """Every MemoryIncident of the namespace."""
    items = client.CustomObjectsApi(loop.kube).list_namespaced_custom_object(
        "memwarden.dev", "v1alpha1", namespace, "memoryincidents"
    )["items"]
    return list(items)


def collected(loop: Loop, namespace: str, pod: str, *, timeout: float) -> dict[str, Any]:
    """The pod's incident once Collected; fails at once if it Failed."""

    def done() -> dict[str, Any] | None:
        for incident in incidents(loop, namespace):
            if incident["spec"]["pod"] != pod:
                continue
            phase = (incident.get("status") or {}).get("phase")
            assert phase != "Failed", incident["status"]
            if phase == "Collected":
                return incident
        return None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"a Collected incident for {pod}")


def download_bundle(loop: Loop, namespace: str, name: str, tmp_path: Path) -> Path:
    """The bundle through the evidence API, as a user granted `get` on it would."""
    token = evidence_reader_token(loop.kube, namespace)
    out = tmp_path / f"{name}.tar.gz"
    result = subprocess.run(
        [
            str(Path(".venv/bin/memwarden").resolve()),
            "incidents",
            "download",
            name,
            "-n",
            namespace,
            f"--kubeconfig={loop.kubeconfig}",
            f"--evidence-token={token}",
            "--output-file",
            str(out),
            f"--evidence-url={loop.evidence_url}",
            *([f"--evidence-ca={loop.evidence_ca}"] if loop.evidence_ca else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out
