"""Benchmark: a changed MemoryPolicy reaching running pods, in place and by recreate.

On the real local control plane, with the node simulator as the kubelet (its resize side
is a v1.37.2 kubelet's: hack/nodesim/README.md): ``--pods`` pods (100) in ``--deployments``
Deployments (10), each a ``sleep`` process (the cheapest container the simulator runs),
governed by one policy (memory only: an injected GOMEMLIMIT cannot change in place, so it
would keep in-place pods drifted by design). The operator runs with its defaults (update
pass every 5 s, 5 evictions a minute per policy, 20 cluster-wide) unless ``--env`` says
otherwise. For each mode, from the ``kubectl apply`` of the changed policy:

- ``apply_to_compliant_s``: the policy's status counts every pod compliant (its spec has
  the policy's resources) at the new generation;
- ``apply_to_in_effect_s``: every pod's container status reports the new limit in effect
  (the node's side: allocated and actuated, no ``PodResize*`` condition left), all pods
  Ready; for Recreate, every pod is a replacement;
- API requests per updated pod: the API server's ``apiserver_request_total`` (/metrics)
  before and after, per verb/resource/subresource, divided by the pods updated. Every
  client counts (operator, controllers, scheduler, simulator): a resize is one PATCH
  ``pods/resize`` by memwarden, and what follows (the node's status writes) is the
  cluster's cost of it; a recreate is one eviction and a whole pod life cycle.

    .venv/bin/python bench/update_bench.py                 # writes bench/results/update.json
    .venv/bin/python bench/update_bench.py --pods 10 --deployments 2 --out /tmp/u.json

Recreate is bound by the rate limit: 100 pods at 5 a minute take at least 20 minutes
(``recreate_floor_s``); pass ``--env MEMWARDEN_UPDATE_EVICTIONS_PER_MINUTE_PER_POLICY=20``
to see the rest of the path at a higher limit.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "hack"), str(HERE)]

import devcluster  # noqa: E402
import yaml  # noqa: E402
from admission_bench import clear_foreign_webhooks, fresh_namespace, git_state  # noqa: E402
from kubernetes import client  # noqa: E402
from scale_bench import ProcessSampler  # noqa: E402

from memwarden.settings import Settings  # noqa: E402
from memwarden_testing.builders import make_policy, make_policy_spec  # noqa: E402
from memwarden_testing.cluster import (  # noqa: E402
    api_client,
    delete_namespaces,
    ensure_namespace,
    kubectl,
    policy_status,
    wait_for,
)
from memwarden_testing.nodesim import NodeSimulator  # noqa: E402
from memwarden_testing.operator import OPERATOR_NAMESPACE, OperatorProcess  # noqa: E402

NAMESPACE = "update-bench"
POLICY = "fleet"
#: The policy before, in place, and for recreate: Burstable throughout (a resize may not
#: change the QoS class), every step growing (no shrink below usage to refuse).
SIZES = {
    "initial": {"request": "16Mi", "limit": "32Mi"},
    "InPlace": {"request": "24Mi", "limit": "48Mi"},
    "Recreate": {"request": "32Mi", "limit": "64Mi"},
}
#: The benchmark's own API requests while it measures (its apply and its polling), by
#: the same keys as ``request_counts``: subtracted, so the deltas are the cluster's.
OWN: dict[str, int] = {}
_SERIES = re.compile(r"^apiserver_request_total\{([^}]*)\} (\S+)$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


def request_counts(kube: client.ApiClient) -> dict[str, float]:
    """``apiserver_request_total`` summed per ``VERB resource[/subresource]`` (every code)."""
    response = kube.call_api("GET", f"{kube.configuration.host}/metrics")
    assert response.status == 200, response.status
    counts: dict[str, float] = {}
    for line in bytes(response.read()).decode().splitlines():
        match = _SERIES.match(line)
        if match is None:
            continue
        labels = dict(_LABEL.findall(match.group(1)))
        resource = labels.get("resource", "")
        if labels.get("subresource"):
            resource += "/" + labels["subresource"]
        key = f"{labels.get('verb', '')} {resource}"
        counts[key] = counts.get(key, 0.0) + float(match.group(2))
    return counts


def own(key: str) -> None:
    OWN[key] = OWN.get(key, 0) + 1


def per_pod(
    before: dict[str, float], after: dict[str, float], pods: int, mine: dict[str, int]
) -> dict[str, float]:
    """What changed, per updated pod, largest first, without the benchmark's own requests
    (WATCH and zero deltas left out)."""
    deltas = {
        key: (after.get(key, 0.0) - before.get(key, 0.0) - mine.get(key, 0)) / pods
        for key in after
        if not key.startswith("WATCH")
    }
    kept = {k: round(v, 2) for k, v in deltas.items() if v >= 0.005}
    return dict(sorted(kept.items(), key=lambda kv: -kv[1]))


def apply_policy(kubeconfig: Path, *, size: dict[str, str], update: str) -> None:
    spec = make_policy_spec(match_labels={"app": "fleet"}, memory=size, update=update)
    body = make_policy(POLICY, namespace=NAMESPACE, spec=spec)
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(body))


def change_policy(kube: client.ApiClient, *, size: dict[str, str], update: str) -> int:
    """The measured change: one merge patch of the policy's spec (what ``kubectl apply``
    sends, without its discovery requests); the policy's new generation."""
    own("PATCH memorypolicies")
    patched = client.CustomObjectsApi(kube).patch_namespaced_custom_object(
        "memwarden.dev",
        "v1alpha1",
        NAMESPACE,
        "memorypolicies",
        POLICY,
        {"spec": {"memory": size, "update": update}},
    )
    return int(patched["metadata"]["generation"])


def policy_generation(custom: client.CustomObjectsApi) -> int:
    own("GET memorypolicies")
    obj = custom.get_namespaced_custom_object(
        "memwarden.dev", "v1alpha1", NAMESPACE, "memorypolicies", POLICY
    )
    return int(obj["metadata"]["generation"])


def deploy(apps: client.AppsV1Api, sim: NodeSimulator, *, deployments: int, pods: int) -> None:
    replicas = pods // deployments
    for d in range(deployments):
        name = f"fleet-{d}"
        container = {"name": "app", "image": "example.com/fleet:1", "command": ["sleep", "1d"]}
        spec = sim.pin({"terminationGracePeriodSeconds": 1, "containers": [container]})
        labels = {"app": "fleet", "deployment": name}
        apps.create_namespaced_deployment(
            NAMESPACE,
            {
                "apiVersion": "apps/v1",
                "kind": "Deployment",
                "metadata": {"name": name},
                "spec": {
                    "replicas": replicas + (1 if d < pods % deployments else 0),
                    "selector": {"matchLabels": labels},
                    "template": {"metadata": {"labels": labels}, "spec": spec},
                },
            },
        )


def fleet(core: client.CoreV1Api) -> list[Any]:
    own("LIST pods")
    return [
        p
        for p in core.list_namespaced_pod(NAMESPACE, label_selector="app=fleet").items
        if p.metadata.deletion_timestamp is None
    ]


def in_effect(pod: Any, limit: str) -> bool:
    """Ready, running with ``limit`` in effect, and no resize left to do on its node."""
    conditions = {c.type: c.status for c in pod.status.conditions or []}
    if conditions.get("Ready") != "True":
        return False
    if "PodResizePending" in conditions or "PodResizeInProgress" in conditions:
        return False
    statuses = pod.status.container_statuses or []
    return bool(statuses) and all(
        ((s.resources.limits or {}) if s.resources else {}).get("memory") == limit for s in statuses
    )


def compliant(kube: client.ApiClient, pods: int, generation: int) -> bool:
    own("GET memorypolicies")
    status = policy_status(kube, NAMESPACE, POLICY)
    return (
        status.get("observedGeneration") == generation
        and status.get("matchedPods") == pods
        and status.get("compliantPods") == pods
    )


def quiet(core: client.CoreV1Api) -> None:
    """No namespace is being deleted (the namespace controller's sweep of an earlier run's
    or test's namespace would be counted in the requests measured)."""
    wait_for(
        lambda: all(n.status.phase != "Terminating" for n in core.list_namespace().items),
        timeout=600,
        interval=2,
        what="no namespace terminating",
    )


def timed_wait(fn: Callable[[], Any], *, timeout: float, what: str) -> float:
    started = time.monotonic()
    wait_for(fn, timeout=timeout, interval=0.5, what=what)
    return time.monotonic() - started


def update_round(
    *,
    mode: str,
    pods: int,
    kube: client.ApiClient,
    operator: OperatorProcess,
    sampler: ProcessSampler,
    node: ProcessSampler,
    timeout: float,
) -> dict[str, Any]:
    core = client.CoreV1Api(kube)
    size = SIZES[mode]
    quiet(core)
    names_before = {p.metadata.name for p in fleet(core)}
    requests_before = request_counts(kube)
    cpu_before, node_cpu_before = sampler.cpu_seconds(), node.cpu_seconds()
    evicted_before = operator.metric("memwarden_evictions_total", outcome="evicted")
    resized_before = operator.metric("memwarden_resizes_total", outcome="accepted")
    OWN.clear()
    started = time.monotonic()
    generation = change_policy(kube, size=size, update=mode)
    to_compliant = timed_wait(
        lambda: compliant(kube, pods, generation),
        timeout=timeout,
        what=f"{mode}: every pod compliant",
    )

    def done() -> bool:
        found = fleet(core)
        replaced = mode != "Recreate" or not names_before & {p.metadata.name for p in found}
        return len(found) == pods and replaced and all(in_effect(p, size["limit"]) for p in found)

    wait_for(done, timeout=timeout, interval=0.5, what=f"{mode}: the new limit in effect")
    to_in_effect = time.monotonic() - started
    elapsed = to_in_effect
    after = fleet(core)
    result: dict[str, Any] = {
        "mode": mode,
        "pods": pods,
        "policy": size,
        "apply_to_compliant_s": round(to_compliant, 1),
        "apply_to_in_effect_s": round(to_in_effect, 1),
        "operator_cpu_s": round(sampler.cpu_seconds() - cpu_before, 2),
        # The simulator (test infrastructure, a Python thread per pod) is not memwarden.
        "node_simulator_cpu_s": round(node.cpu_seconds() - node_cpu_before, 2),
        "restarts": sum(
            s.restart_count for p in after for s in (p.status.container_statuses or [])
        ),
        "same_pods": len(names_before & {p.metadata.name for p in after}),
        "resizes_accepted": operator.metric("memwarden_resizes_total", outcome="accepted")
        - resized_before,
        "evictions": operator.metric("memwarden_evictions_total", outcome="evicted")
        - evicted_before,
    }
    if mode == "Recreate":
        result["evictions_per_minute"] = round(result["evictions"] / elapsed * 60, 1)
    mine = dict(OWN)
    result["api_requests_per_updated_pod"] = per_pod(
        requests_before, request_counts(kube), pods, mine
    )
    result["benchmark_own_requests"] = mine
    print(json.dumps(result, indent=2), flush=True)
    return result


def run(
    *, pods: int, deployments: int, modes: list[str], extra_env: dict[str, str]
) -> dict[str, Any]:
    layout = devcluster.default_layout()
    devcluster.up(layout)
    kubeconfig = layout.kubeconfig
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    kube = api_client(kubeconfig)
    core, apps = client.CoreV1Api(kube), client.AppsV1Api(kube)
    custom = client.CustomObjectsApi(kube)
    ensure_namespace(core, OPERATOR_NAMESPACE)
    clear_foreign_webhooks(kubeconfig)  # an interrupted run's would see every create
    fresh_namespace(core, kubeconfig, NAMESPACE)
    settings = Settings.from_env(extra_env)
    per_policy = settings.updates.evictions_per_minute_per_policy
    result: dict[str, Any] = {
        "pods": pods,
        "deployments": deployments,
        "update_interval_s": settings.updates.interval_seconds,
        "evictions_per_minute_per_policy": per_policy,
        "evictions_per_minute": settings.updates.evictions_per_minute,
        # The k-th eviction (from 0) may go at minute k // rate (a sliding 60 s window).
        "recreate_floor_s": (pods - 1)
        // min(per_policy, settings.updates.evictions_per_minute)
        * 60,
        "rounds": [],
    }
    timeout = max(600.0, result["recreate_floor_s"] * 3)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sim = NodeSimulator(
            kubeconfig=kubeconfig,
            state_dir=work / "nodesim",
            taint=True,
            # Room for every step's requests; RSS sampled once a second (cheap at 100 pods).
            extra_args=("--memory=64Gi", f"--pods={max(110, pods + 20)}", "--sample-interval=1"),
        )
        operator = OperatorProcess(
            kubeconfig=kubeconfig,
            workdir=work,
            extra_env=extra_env,
            extra_args=[f"--namespace={NAMESPACE}"],
        )
        with sim:
            ca = operator.make_certificates()
            operator.start()
            try:
                operator.register_webhook(ca)
                apply_policy(kubeconfig, size=SIZES["initial"], update="Initial")
                deploy(apps, sim, deployments=deployments, pods=pods)
                generation = policy_generation(custom)
                wait_for(
                    lambda: (
                        compliant(kube, pods, generation)
                        and all(in_effect(p, SIZES["initial"]["limit"]) for p in fleet(core))
                        and len(fleet(core)) == pods
                    ),
                    timeout=300,
                    interval=1,
                    what=f"{pods} pods running, admitted with the policy",
                )
                assert operator.process is not None and sim.process is not None
                sampler = ProcessSampler(operator.process.pid)
                node = ProcessSampler(sim.process.pid)
                for mode in modes:
                    result["rounds"].append(
                        update_round(
                            mode=mode,
                            pods=pods,
                            kube=kube,
                            operator=operator,
                            sampler=sampler,
                            node=node,
                            timeout=timeout,
                        )
                    )
            finally:
                operator.stop()
                kubectl(
                    kubeconfig,
                    "delete",
                    "mutatingwebhookconfiguration",
                    operator.webhook_name,
                    "--ignore-not-found",
                )
                delete_namespaces(kubeconfig, NAMESPACE, check=False)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--deployments", type=int, default=10)
    parser.add_argument(
        "--modes", default="InPlace,Recreate", help="comma-separated, run in this order"
    )
    parser.add_argument("--out", default=str(HERE / "results" / "update.json"))
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the operator (repeatable)"
    )
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    modes = [m for m in args.modes.split(",") if m]
    unknown = set(modes) - {"InPlace", "Recreate"}
    if unknown:
        parser.error(f"unknown modes {sorted(unknown)}")
    result = run(pods=args.pods, deployments=args.deployments, modes=modes, extra_env=extra_env)
    result["operator_env"] = extra_env
    result.update({"python": platform.python_version(), "cpus": os.cpu_count(), **git_state()})
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
