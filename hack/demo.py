"""``make demo``: memwarden at work on this machine, narrated (demo infrastructure).

Brings up the real local control plane, starts the operator with its admission webhook,
applies the example policy and a Deployment, and shows what memwarden did. Everything
keeps running afterwards so you can explore; ``make demo-down`` stops it all.

    python hack/demo.py up | down
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO / "hack")]

import devcluster  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from memwarden_testing.cluster import api_client, kubectl, wait_for  # noqa: E402
from memwarden_testing.operator import OPERATOR_NAMESPACE, OperatorProcess  # noqa: E402

STATE = REPO / ".demo"
NAMESPACE = "shop"


def say(text: str) -> None:
    print(f"\n\033[1m==> {text}\033[0m", flush=True)


def ensure_namespace(core: client.CoreV1Api, name: str) -> None:
    try:
        core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=name)))
    except ApiException as exc:
        if exc.status != 409:
            raise

    def ready() -> bool:
        try:
            core.read_namespaced_service_account("default", name)
        except ApiException:
            return False
        return True

    wait_for(ready, timeout=60, what=f"namespace {name}")


def up() -> None:
    STATE.mkdir(exist_ok=True)
    layout = devcluster.default_layout()
    say("Starting the local Kubernetes control plane (etcd, kube-apiserver, "
        "kube-controller-manager, kube-scheduler v1.37.2, built from Go modules)")
    devcluster.up(layout)
    kubeconfig = layout.kubeconfig
    kube = api_client(kubeconfig)
    core = client.CoreV1Api(kube)
    version = json.loads(kubectl(kubeconfig, "version", "-o", "json").stdout)
    print(f"    server {version['serverVersion']['gitVersion']} at {layout.server}")

    say("Installing memwarden's CRDs (generated from the pydantic models)")
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s",
            "crd/memorypolicies.memwarden.dev", "crd/memoryincidents.memwarden.dev")
    ensure_namespace(core, OPERATOR_NAMESPACE)
    ensure_namespace(core, NAMESPACE)

    say("Starting the operator (memwarden run) and registering its admission webhook "
        "(failurePolicy Ignore, timeout 3s)")
    stop_operator()
    operator = OperatorProcess(kubeconfig=kubeconfig, workdir=STATE)
    ca = operator.make_certificates()
    operator.start()
    operator.register_webhook(ca)
    assert operator.process is not None
    (STATE / "operator.pid").write_text(f"{operator.process.pid}\n")
    (STATE / "webhook-name").write_text(operator.webhook_name)
    print(f"    pid {operator.process.pid}, log {operator.log_path}")

    say("Applying the example policy (examples/policies/checkout.yaml)")
    policy_text = (REPO / "examples" / "policies" / "checkout.yaml").read_text()
    print("    " + policy_text.replace("\n", "\n    ").rstrip())
    kubectl(kubeconfig, "apply", "-f", "-", input=policy_text)
    wait_for(lambda: _status(kube).get("conditions"), timeout=60, what="policy reconciled")

    say("What will it do? memwarden explain, offline, before anything is created")
    explained = _memwarden("explain", "--policy", "examples/policies/checkout.yaml",
                           "--pod", "examples/policies/checkout-deployment.yaml")
    print("    " + explained.replace("\n", "\n    ").rstrip())

    say("Creating the checkout Deployment; admission applies the policy")
    kubectl(kubeconfig, "apply", "-f", str(REPO / "examples" / "policies" / "checkout-deployment.yaml"))
    pods = wait_for(lambda: (lambda items: items if len(items) == 2 else None)(
        core.list_namespaced_pod(NAMESPACE, label_selector="app=checkout").items),
        timeout=60, what="two checkout pods")
    for pod in pods:
        container = pod.spec.containers[0]
        env = {e.name: e.value for e in container.env or []}
        print(f"    {pod.metadata.name}: requests {container.resources.requests} "
              f"limits {container.resources.limits} GOMEMLIMIT={env.get('GOMEMLIMIT')} "
              f"GOGC={env.get('GOGC')}")
        print(f"      memwarden.dev/applied: {pod.metadata.annotations.get('memwarden.dev/applied')}")

    status = wait_for(lambda: (s := _status(kube)).get("matchedPods") == 2 and s, timeout=60,
                      what="policy status")
    say("Policy status")
    print(f"    matched {status['matchedPods']}, compliant {status['compliantPods']}, "
          f"drifted {status['driftedPods']}")

    say("Explore")
    kc = f"--kubeconfig {kubeconfig}"
    print(f"""    export KUBECONFIG={kubeconfig}
    .venv/bin/kubectl get memorypolicies -n {NAMESPACE}          # mpol: matched / compliant / drifted
    .venv/bin/kubectl get pods -n {NAMESPACE} -o yaml | grep -A3 GOMEMLIMIT
    .venv/bin/kubectl get events -n {NAMESPACE}
    .venv/bin/memwarden explain --policy examples/policies/checkout-intent.yaml \\
        --pod examples/policies/checkout-deployment.yaml --throttling-factor 0.9 \\
        --reservation-policy TieredReservation
    .venv/bin/memwarden incidents list -n {NAMESPACE} {kc}
    make demo-down""")


def _status(kube: client.ApiClient) -> dict:
    obj = client.CustomObjectsApi(kube).get_namespaced_custom_object(
        "memwarden.dev", "v1alpha1", NAMESPACE, "memorypolicies", "checkout")
    return dict(obj.get("status") or {})


def _memwarden(*args: str) -> str:
    import subprocess

    result = subprocess.run([str(REPO / ".venv" / "bin" / "memwarden"), *args], cwd=REPO,
                            capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


def stop_operator() -> None:
    pid_file = STATE / "operator.pid"
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


def down() -> None:
    layout = devcluster.default_layout()
    stop_operator()
    name_file = STATE / "webhook-name"
    if name_file.exists() and devcluster.running_pids(layout):
        kubectl(layout.kubeconfig, "delete", "mutatingwebhookconfiguration",
                name_file.read_text().strip(), "--ignore-not-found", check=False)
        kubectl(layout.kubeconfig, "delete", "namespace", NAMESPACE, "--ignore-not-found",
                "--wait=false", check=False)
        name_file.unlink()
    devcluster.down(layout)
    print("demo: down")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down"])
    args = parser.parse_args()
    up() if args.action == "up" else down()
    return 0


if __name__ == "__main__":
    sys.exit(main())
