"""``make demo``: memwarden's whole loop on this machine, narrated (demo infrastructure).

Brings up the real local control plane, the node simulator (it stands in for a kubelet:
there is no container runtime here), Prometheus and Alertmanager, and the operator with
its admission webhook (as the chart's least-privilege ServiceAccount). Applies the example
policy and a leaking Go Deployment (examples/demo/), then narrates: the admitted pod's
resources and env, the memory rising, the incident, the evidence and what leaked.
Everything keeps running so you can explore; ``make demo-down`` stops it all.

    python hack/demo.py up | down
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "hack")]

import devcluster  # noqa: E402
from kubernetes import client  # noqa: E402

from memwarden.quantity import approximate_bytes  # noqa: E402
from memwarden_testing.alertmanager import AlertmanagerProcess  # noqa: E402
from memwarden_testing.cluster import api_client, ensure_namespace, kubectl, wait_for  # noqa: E402
from memwarden_testing.nodesim import NodeSimulator  # noqa: E402
from memwarden_testing.operator import (  # noqa: E402
    OPERATOR_NAMESPACE,
    OperatorProcess,
    least_privilege_kubeconfig,
)
from memwarden_testing.prometheus import PrometheusServer  # noqa: E402

STATE = REPO / ".demo"
NAMESPACE = "shop"
NODE = "memwarden-sim-0"
MEMWARDEN = REPO / ".venv" / "bin" / "memwarden"
KUBECTL = REPO / ".venv" / "bin" / "kubectl"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def indent(text: str) -> str:
    return "    " + text.rstrip().replace("\n", "\n    ")


def remember(name: str, pid: int) -> None:
    (STATE / f"{name}.pid").write_text(f"{pid}\n")


def up() -> None:
    down(quiet=True, keep_cluster=True)
    STATE.mkdir(exist_ok=True)
    layout = devcluster.default_layout()
    say(
        "The local Kubernetes control plane: etcd, kube-apiserver, kube-controller-manager, "
        "kube-scheduler v1.37.2, built from Go modules"
    )
    devcluster.up(layout)
    kubeconfig = layout.kubeconfig
    kube = api_client(kubeconfig)
    core = client.CoreV1Api(kube)
    version = json.loads(kubectl(kubeconfig, "version", "-o", "json").stdout)
    print(f"    server {version['serverVersion']['gitVersion']} at {layout.server}")

    say("memwarden's CRDs (generated from the pydantic models)")
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    kubectl(
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/memorypolicies.memwarden.dev",
        "crd/memoryincidents.memwarden.dev",
    )
    ensure_namespace(core, OPERATOR_NAMESPACE)
    ensure_namespace(core, NAMESPACE)

    say(
        f"A node: the node simulator registers {NODE} and runs its pods as local processes "
        "(test/demo infrastructure, not a kubelet)"
    )
    sim = NodeSimulator(
        kubeconfig=kubeconfig, state_dir=STATE / "nodesim", node_name=NODE, exit_with_parent=False
    )
    sim.start()
    print(f"    cAdvisor-style metrics on {sim.metrics_url}")

    operator = OperatorProcess(kubeconfig=kubeconfig, workdir=STATE)
    alertmanager = AlertmanagerProcess(
        workdir=STATE,
        receiver_url=operator.alertmanager_url,
        token_file=operator.alertmanager_token_file,
        ca_file=operator.ca_file,
    )
    prometheus = PrometheusServer(
        workdir=STATE / "prometheus",
        targets=[f"127.0.0.1:{sim.info['metrics_port']}"],
        metrics_path="/metrics/cadvisor",
        alertmanagers=[f"127.0.0.1:{alertmanager.port}"],
    )
    say("Prometheus scraping the node, Alertmanager routing to memwarden's receiver")
    say(
        "The operator (memwarden run) as its least-privilege ServiceAccount, and its webhook "
        "(failurePolicy Ignore, timeout 3s)"
    )
    operator.identity = least_privilege_kubeconfig(kube, admin_kubeconfig=kubeconfig, workdir=STATE)
    operator.extra_env.update(
        {
            "MEMWARDEN_PROMETHEUS_URL": prometheus.url,
            "MEMWARDEN_RISK_INTERVAL_SECONDS": "5",
        }
    )
    ca = operator.make_certificates()
    operator.start()
    operator.register_webhook(ca)
    alertmanager.start()
    prometheus.start()
    for name, process in (
        ("operator", operator.process),
        ("alertmanager", alertmanager.process),
        ("prometheus", prometheus.process),
    ):
        assert process is not None
        remember(name, process.pid)
    (STATE / "webhook-name").write_text(operator.webhook_name)
    (STATE / "endpoints.json").write_text(
        json.dumps(
            {
                "prometheus": prometheus.url,
                "alertmanager": alertmanager.url,
                "evidence": operator.evidence_url,
            }
        )
    )
    print(
        f"    operator log {operator.log_path}; Prometheus {prometheus.url}; "
        f"Alertmanager {alertmanager.url}"
    )

    say("The policy (examples/demo/policy.yaml)")
    policy_text = (REPO / "examples" / "demo" / "policy.yaml").read_text()
    print(indent(policy_text))
    kubectl(kubeconfig, "apply", "-f", "-", input=policy_text)
    wait_for(lambda: _policy(kube).get("conditions"), timeout=60, what="policy reconciled")

    say("What will it do to the checkout Deployment? memwarden explain, offline")
    print(
        indent(
            _run(
                str(MEMWARDEN),
                "explain",
                "--policy",
                "examples/demo/policy.yaml",
                "--pod",
                "examples/demo/checkout.yaml",
            )
        )
    )

    say("The leaking Go service (examples/demo/checkout.yaml); admission applies the policy")
    kubectl(kubeconfig, "apply", "-f", str(REPO / "examples" / "demo" / "checkout.yaml"))
    pod = wait_for(lambda: _running_pod(core), timeout=90, what="the checkout pod running")
    container = pod.spec.containers[0]
    env = {e.name: e.value for e in container.env or []}
    print(f"    {pod.metadata.name} on {pod.spec.node_name}, pod IP {pod.status.pod_ip}")
    print(f"    requests {container.resources.requests}, limits {container.resources.limits}")
    print(
        f"    GOMEMLIMIT={env.get('GOMEMLIMIT')} GOGC={env.get('GOGC')} -- and the Go runtime "
        f"reports go_gc_gomemlimit_bytes {_gomemlimit(pod.status.pod_ip):.0f}"
    )

    say("Memory rising (working set / limit, from the node's cAdvisor metrics)")
    name = pod.metadata.name
    incident = None
    deadline = time.monotonic() + 240
    last = -1.0
    while time.monotonic() < deadline and incident is None:
        ratio = _ratio(sim, name)
        if ratio - last >= 0.05:
            print(f"    {ratio:5.0%} of 256Mi")
            last = ratio
        incident = _incident(kube, name)
        time.sleep(1)
    if incident is None:
        raise SystemExit("demo: no incident opened; see .demo/operator.log")
    trigger = incident["spec"]["trigger"]
    say(
        f"Incident {incident['metadata']['name']}: {trigger['signal']} = {trigger['value']:.2f} "
        f"(threshold {trigger['threshold']}) for 10s -> a debug container captures evidence"
    )
    collected = wait_for(
        lambda: _collected(kube, incident["metadata"]["name"]),
        timeout=180,
        what="the incident Collected",
    )
    status = collected["status"]
    print(f"    debug container {status.get('ephemeralContainer')} (SYS_PTRACE only)")
    absent = [a["name"] for a in status.get("artifacts", []) if a.get("error") == "absent"]
    for artifact in status.get("artifacts", []):
        if artifact.get("error") == "absent":
            continue
        detail = artifact.get("error") or f"sha256 {(artifact.get('sha256') or '')[:16]}"
        print(
            f"    {artifact['name']:24} {approximate_bytes(artifact.get('bytes', 0)):>8}  {detail}"
        )
    if absent:
        print(f"    not on this node: {', '.join(absent)}")
    bundle = approximate_bytes(status["bundleBytes"])
    print(f"    bundle {bundle}, sha256 {status['bundleSha256'][:16]}...")
    say("What is eating memory (heap profile, in-use bytes)")
    for entry in status["analysis"]["top"][:5]:
        print(
            f"    {approximate_bytes(entry['flatBytes']):>8} flat "
            f"{approximate_bytes(entry['cumBytes']):>8} cum  {entry['function']}"
        )
    print(f"    goroutines: {status['analysis'].get('goroutines')}")
    pod_now = core.read_namespaced_pod(name, NAMESPACE)
    restarts = sum(s.restart_count for s in pod_now.status.container_statuses or [])
    print(
        f"    ... captured while the container was still alive (restarts so far: {restarts}); "
        "the OOM kill comes later"
    )

    say("Explore")
    evidence = operator.evidence_url
    print(f"""    export KUBECONFIG={kubeconfig}
    {KUBECTL} get mpol,minc -n {NAMESPACE}
    {KUBECTL} describe memoryincident -n {NAMESPACE} {collected["metadata"]["name"]}
    {KUBECTL} get events -n {NAMESPACE}
    {MEMWARDEN} incidents list -n {NAMESPACE}
    {MEMWARDEN} incidents download {collected["metadata"]["name"]} -n {NAMESPACE} \\
        --evidence-url {evidence} --evidence-ca {operator.ca_file} -o bundle.tar.gz \\
        --service-account sre
    {MEMWARDEN} analyze bundle.tar.gz
    make demo-down""")


def _run(*args: str) -> str:
    result = subprocess.run(list(args), cwd=REPO, capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


def _policy(kube: client.ApiClient) -> dict[str, Any]:
    obj = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        "memwarden.dev", "v1alpha1", NAMESPACE, "memorypolicies", "go-services"
    )
    return dict(obj.get("status") or {})


def _running_pod(core: client.CoreV1Api) -> Any:
    for pod in core.list_namespaced_pod(NAMESPACE, label_selector="app=checkout").items:
        if pod.status.phase == "Running" and pod.status.pod_ip:
            return pod
    return None


def _gomemlimit(pod_ip: str) -> float:
    def scrape() -> float | None:
        try:
            with urllib.request.urlopen(f"http://{pod_ip}:6060/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return None
        match = re.search(r"^go_gc_gomemlimit_bytes (\S+)$", text, re.MULTILINE)
        return float(match.group(1)) if match else None

    return wait_for(scrape, timeout=30, what="the workload's /metrics")


def _ratio(sim: NodeSimulator, pod: str) -> float:
    match = re.search(
        r'^container_memory_working_set_bytes\{[^}]*pod="' + pod + r'"[^}]*\} (\S+)',
        sim.cadvisor(),
        re.MULTILINE,
    )
    return float(match.group(1)) / (256 * 2**20) if match else 0.0


def _incidents(kube: client.ApiClient) -> list[dict[str, Any]]:
    return list(
        client.CustomObjectsApi(kube).list_namespaced_custom_object(
            "memwarden.dev", "v1alpha1", NAMESPACE, "memoryincidents"
        )["items"]
    )


def _incident(kube: client.ApiClient, pod: str) -> dict[str, Any] | None:
    return next((i for i in _incidents(kube) if i["spec"]["pod"] == pod), None)


def _collected(kube: client.ApiClient, name: str) -> dict[str, Any] | None:
    for incident in _incidents(kube):
        if incident["metadata"]["name"] == name:
            phase = (incident.get("status") or {}).get("phase")
            if phase in {"Failed", "Skipped"}:
                raise SystemExit(f"demo: incident {phase}: {incident['status'].get('message')}")
            return incident if phase == "Collected" else None
    return None


def _stop_pid(name: str) -> None:
    pid_file = STATE / f"{name}.pid"
    if not pid_file.exists():
        return
    pid = int(pid_file.read_text())
    try:
        os.killpg(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            os.kill(pid, 0)
            time.sleep(0.2)
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    pid_file.unlink()


def _running(name: str) -> bool:
    """Whether the demo's process ``name`` (its pid file) is alive."""
    pid_file = STATE / f"{name}.pid"
    if not pid_file.exists():
        return False
    try:
        os.kill(int(pid_file.read_text()), 0)
    except (ProcessLookupError, ValueError):
        return False
    return True


def _release_incidents(kubeconfig: Path) -> None:
    """docs/evidence.md's way out when the operator is gone: drop the incidents'
    finalizers (policies carry none), so the namespace's deletion completes."""
    listed = kubectl(
        kubeconfig, "get", "memoryincidents", "-n", NAMESPACE, "-o", "name", check=False
    )
    for name in listed.stdout.split():
        kubectl(
            kubeconfig,
            "patch",
            "-n",
            NAMESPACE,
            name,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
            check=False,
        )


def _delete_namespace(kubeconfig: Path) -> None:
    """Delete the demo namespace while the operator (its incidents' finalizer: their
    evidence goes with them) and the node (its pods) still run. With the operator gone,
    release the incidents first rather than wait for a finalizer nobody will remove."""
    if not _running("operator"):
        _release_incidents(kubeconfig)
    for attempt in ("first", "after releasing the incidents"):
        if attempt != "first":
            _release_incidents(kubeconfig)
        deleted = kubectl(
            kubeconfig,
            "delete",
            "namespace",
            NAMESPACE,
            "--ignore-not-found",
            "--timeout=90s",
            check=False,
        )
        if deleted.returncode == 0:
            return


def down(*, quiet: bool = False, keep_cluster: bool = False) -> None:
    layout = devcluster.default_layout()
    cluster_up = bool(devcluster.running_pids(layout))
    if cluster_up:
        _delete_namespace(layout.kubeconfig)
    for name in ("prometheus", "alertmanager", "operator"):
        _stop_pid(name)
    name_file = STATE / "webhook-name"
    if name_file.exists() and cluster_up:
        kubectl(
            layout.kubeconfig,
            "delete",
            "mutatingwebhookconfiguration",
            name_file.read_text().strip(),
            "--ignore-not-found",
            check=False,
        )
        name_file.unlink()
    NodeSimulator.stop_detached(state_dir=STATE / "nodesim", node_name=NODE)
    if not keep_cluster:
        devcluster.down(layout)
    if not quiet:
        print("demo: down")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args()
    if args.action == "up":
        up()
    else:
        down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
