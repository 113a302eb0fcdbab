"""Benchmark: the admission cost of the JVM and Node.js contracts against Go alone.

The question (issue 14): does a policy with ``runtime.jvm`` and ``runtime.node`` (flags
merged into the pod's own JAVA_TOOL_OPTIONS and NODE_OPTIONS) keep admission within 5 %
of a Go-only policy (GOMEMLIMIT)? On the real local control plane, with memwarden's
webhook (``memwarden run``, as the tests start it), in three namespaces:

- ``go``: memory + ``runtime.go``;
- ``runtimes``: the same + ``runtime.jvm`` (percentage, metaspace, direct memory) and
  ``runtime.node`` (percentage);
- ``none``: excluded from the webhook (the API server's own cost).

Every pod is the same (so its size does not differ): one container with its own
JAVA_TOOL_OPTIONS and NODE_OPTIONS, which the ``runtimes`` policy merges into.

1. Pod creates through the API server (server-side dry run still calls the webhook),
   the namespaces interleaved, in rounds that each start with another namespace.
2. The webhook alone: complete AdmissionReviews posted one at a time over one kept-alive
   connection, the two policies alternating; pods of one shape (the plan cache answers,
   as for a Deployment's pods) and of a new shape each time (every review planned anew).
3. The plan in-process (``mutation.plan_pod``, no cache): the pure cost.

    .venv/bin/python bench/admission_runtimes_bench.py   # bench/results/admission_runtimes.json

The machine is shared (2 cores, other engineers' control planes): the JSON records the
load before and after; read a few-percent difference through the API server as noise
unless the rounds agree.
"""

from __future__ import annotations

import http.client
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "hack"), str(HERE)]

import devcluster  # noqa: E402
import yaml  # noqa: E402
from admission_bench import (  # noqa: E402
    CpuWatch,
    clear_foreign_webhooks,
    fresh_namespace,
    git_state,
    ms,
    percentile,
    review,
)
from kubernetes import client  # noqa: E402

from memwarden.mutation import plan_pod  # noqa: E402
from memwarden.selection import container_names, select_policy  # noqa: E402
from memwarden.sizing import KubeletProfile  # noqa: E402
from memwarden.webhook.manifests import OPT_OUT_LABEL, POD_HANDLER_ID  # noqa: E402
from memwarden_testing.builders import (  # noqa: E402
    make_candidate,
    make_container,
    make_policy,
    make_policy_spec,
)
from memwarden_testing.cluster import (  # noqa: E402
    api_client,
    delete_namespaces,
    ensure_namespace,
    kubectl,
    wait_for,
)
from memwarden_testing.operator import OPERATOR_NAMESPACE, OperatorProcess  # noqa: E402

NS = {"go": "bench-rt-go", "runtimes": "bench-rt-runtimes", "none": "bench-rt-none"}
LABELS = {"app": "checkout"}
MEMORY = {"request": "512Mi", "limit": "1Gi"}
GO = {"memoryLimit": "90%"}
JVM = {"maxRAMPercentage": 70, "maxMetaspace": "128Mi", "maxDirectMemory": "64Mi"}
NODE = {"maxOldSpaceSize": "75%"}
SPECS = {
    "go": make_policy_spec(memory=MEMORY, go=GO),
    "runtimes": make_policy_spec(memory=MEMORY, go=GO, jvm=JVM, node=NODE),
}
THEIR_ENV = {
    "LOG": "info",
    "JAVA_TOOL_OPTIONS": "-Dfile.encoding=UTF-8 -javaagent:/otel/agent.jar -Xss512k",
    "NODE_OPTIONS": "--enable-source-maps --require=/otel/register.js",
}

POD_CREATES = 300  # per namespace and round
ROUNDS = 3
DIRECT_REVIEWS = 1500  # per policy and shape kind
PLANS = 5000  # per policy, in-process


def pod(name: str, namespace: str, *, shape: int = 0) -> dict[str, Any]:
    """The benchmark's pod; ``shape`` > 0 makes its env (and so its plan-cache key) new."""
    env = dict(THEIR_ENV, LOG=f"info-{shape}") if shape else THEIR_ENV
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": LABELS},
        "spec": {"containers": [make_container(env=env)]},
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": ms(statistics.median(values)),
        "p90_ms": ms(percentile(values, 0.9)),
        "p99_ms": ms(percentile(values, 0.99)),
        "mean_ms": ms(statistics.fmean(values)),
    }


def env_names(created: Any) -> dict[str, str]:
    return {e.name: e.value for e in created.spec.containers[0].env or []}


def mutated(core: client.CoreV1Api, namespace: str) -> bool:
    created = core.create_namespaced_pod(namespace, pod("probe", namespace), dry_run="All")
    return "GOMEMLIMIT" in env_names(created)


def pod_creates(core: client.CoreV1Api) -> dict[str, Any]:
    order = list(NS)
    times: dict[str, list[float]] = {k: [] for k in order}
    rounds = []
    merged = 0
    for round_ in range(ROUNDS):
        this: dict[str, list[float]] = {k: [] for k in order}
        for i in range(POD_CREATES * len(order)):
            kind = order[(i + round_) % len(order)]
            body = pod(f"p{round_}-{i}", NS[kind])
            del body["metadata"]["namespace"]
            started = time.perf_counter()
            created = core.create_namespaced_pod(NS[kind], body, dry_run="All")
            elapsed = time.perf_counter() - started
            times[kind].append(elapsed)
            this[kind].append(elapsed)
            if kind == "runtimes":
                merged += "-XX:MaxRAMPercentage=70" in env_names(created)["JAVA_TOOL_OPTIONS"]
        rounds.append(
            {
                "runtimes_over_go_p50": round(
                    statistics.median(this["runtimes"]) / statistics.median(this["go"]), 3
                ),
                **{f"{k}_p50_ms": ms(statistics.median(v)) for k, v in this.items()},
            }
        )
    rows = {k: summary(v) for k, v in times.items()}
    return {
        "pods_each": POD_CREATES * ROUNDS,
        "runtimes_pods_merged": merged,
        **rows,
        "runtimes_over_go": {
            q: round(rows["runtimes"][f"{q}_ms"] / rows["go"][f"{q}_ms"], 3)
            for q in ("p50", "p90", "p99", "mean")
        },
        "webhook_share_p50_ms": {
            k: round(rows[k]["p50_ms"] - rows["none"]["p50_ms"], 2) for k in ("go", "runtimes")
        },
        "rounds": rounds,
    }


def direct(port: int, path: str, ca: Path) -> dict[str, Any]:
    """Reviews posted to the webhook one at a time over one kept-alive TLS connection (as
    the API server calls it), the two policies alternating."""
    out: dict[str, Any] = {}
    context = ssl.create_default_context(cafile=str(ca))
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    for label, new_shape in (("same_shape", False), ("new_shape_each", True)):
        times: dict[str, list[float]] = {"go": [], "runtimes": []}
        for i in range(DIRECT_REVIEWS * 2):
            kind = ("go", "runtimes")[(i + i // 2) % 2]
            body = json.dumps(review(pod(f"d{i}", NS[kind], shape=i + 1 if new_shape else 0)))
            started = time.perf_counter()
            connection.request("POST", path, body, {"Content-Type": "application/json"})
            reply = json.loads(connection.getresponse().read())["response"]
            times[kind].append(time.perf_counter() - started)
            if not reply.get("patch"):
                raise SystemExit(f"the webhook returned no patch for a {kind} pod: {reply}")
        rows = {k: summary(v) for k, v in times.items()}
        out[label] = {
            **rows,
            "runtimes_over_go_p50": round(rows["runtimes"]["p50_ms"] / rows["go"]["p50_ms"], 3),
        }
    return out


def in_process() -> dict[str, Any]:
    """``plan_pod`` with no cache: what the runtime contracts add to the pure decision."""
    profile = KubeletProfile.defaults_for(37)
    out: dict[str, Any] = {}
    for kind in ("go", "runtimes"):
        extra = {"jvm": JVM, "node": NODE} if kind == "runtimes" else {}
        candidate = make_candidate(memory=MEMORY, go=GO, **extra)
        body = pod("p", "shop")
        regular, sidecars = container_names(body)
        selection = select_policy(
            labels=LABELS, container_names=regular, sidecar_names=sidecars, candidates=[candidate]
        )
        started = time.perf_counter()
        for _ in range(PLANS):
            plan_pod(pod=body, selection=selection, profile=profile)
        out[f"{kind}_us_per_plan"] = round((time.perf_counter() - started) / PLANS * 1e6, 1)
    out["runtimes_over_go"] = round(out["runtimes_us_per_plan"] / out["go_us_per_plan"], 3)
    return out


def run(kubeconfig: Path) -> dict[str, Any]:
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    kube = api_client(kubeconfig)
    core = client.CoreV1Api(kube)
    removed = clear_foreign_webhooks(kubeconfig)
    webhook = None
    try:
        ensure_namespace(core, OPERATOR_NAMESPACE)
        fresh_namespace(core, kubeconfig, NS["go"])
        fresh_namespace(core, kubeconfig, NS["runtimes"])
        fresh_namespace(core, kubeconfig, NS["none"], labels={OPT_OUT_LABEL: "true"})
        for kind, spec in SPECS.items():
            policy = make_policy(namespace=NS[kind], spec=spec)
            kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(policy))
        with tempfile.TemporaryDirectory() as tmp:
            operator = OperatorProcess(kubeconfig=kubeconfig, workdir=Path(tmp) / "memwarden")
            operator.workdir.mkdir()
            ca = Path(tmp) / "ca.crt"
            ca.write_bytes(operator.make_certificates())
            try:
                operator.start()
                webhook = operator.webhook_name
                operator.register_webhook(ca.read_bytes())
                for namespace in (NS["go"], NS["runtimes"]):
                    wait_for(
                        lambda namespace=namespace: mutated(core, namespace),
                        timeout=60,
                        what=f"memwarden's webhook mutating pods in {namespace}",
                    )
                print("pod creates through the API server ...", flush=True)
                assert operator.process is not None
                watch = CpuWatch(operator.process.pid)
                through_api = pod_creates(core)
                through_api["machine"] = watch.stop()
                print("the webhook alone ...", flush=True)
                alone = direct(operator.webhook_port, f"/{POD_HANDLER_ID}", ca)
            finally:
                operator.stop()
    finally:
        if webhook is not None:
            kubectl(
                kubeconfig,
                "delete",
                "mutatingwebhookconfiguration",
                webhook,
                "--ignore-not-found",
                check=False,
            )
        delete_namespaces(kubeconfig, *NS.values(), check=False)
    return {
        "leftover_webhooks_removed": removed,
        "pod_create": through_api,
        "webhook_direct": alone,
    }


def main() -> None:
    # The operator process runs this checkout's code, not what the shared venv points at.
    os.environ["PYTHONPATH"] = os.pathsep.join(
        [str(REPO / "operator"), *filter(None, [os.environ.get("PYTHONPATH")])]
    )
    layout = devcluster.default_layout()
    cluster_was_up = (layout.pki / "done").exists() and devcluster._readyz(layout)
    measured = git_state()
    devcluster.up(layout)
    load_before = os.getloadavg()
    try:
        out = run(layout.kubeconfig)
    finally:
        if not cluster_was_up and os.environ.get("MEMWARDEN_KEEP_CLUSTER") != "1":
            devcluster.down(layout)
    out = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **measured,
        "policies": SPECS,
        "pod_env": THEIR_ENV,
        **out,
        "plan_in_process": in_process(),
        "machine_load": {
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
    }
    api = out["pod_create"]
    print(
        f"pod create p50 (ms): none {api['none']['p50_ms']}, go {api['go']['p50_ms']}, "
        f"runtimes {api['runtimes']['p50_ms']}; runtimes/go {api['runtimes_over_go']}"
    )
    print(f"  per round runtimes/go p50: {[r['runtimes_over_go_p50'] for r in api['rounds']]}")
    for label, row in out["webhook_direct"].items():
        print(
            f"webhook alone, {label}: go p50 {row['go']['p50_ms']} ms p99 {row['go']['p99_ms']}"
            f" ms; runtimes p50 {row['runtimes']['p50_ms']} ms p99 {row['runtimes']['p99_ms']}"
            f" ms; runtimes/go p50 {row['runtimes_over_go_p50']}"
        )
    print(f"plan in process: {out['plan_in_process']}")
    print(
        f"load average before {out['machine_load']['loadavg_before']}, after "
        f"{out['machine_load']['loadavg_after']}"
    )
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "admission_runtimes.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
