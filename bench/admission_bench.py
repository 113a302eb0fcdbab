"""Benchmark: the admission webhook, on the real local control plane.

1. AdmissionReviews per second and p50/p99 latency of the webhook over HTTPS at fixed
   offered rates (open loop: requests are sent on schedule, not after the previous reply).
2. Pod-create latency through the real API server (server-side dry run, which still
   calls mutating webhooks) with the webhook versus without it (a namespace the webhook
   configuration excludes), interleaved in one run, and their ratio.

    .venv/bin/python bench/admission_bench.py      # writes bench/results/admission.json
"""

from __future__ import annotations

import asyncio
import json
import os
import platform
import ssl
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "hack")]

import aiohttp  # noqa: E402
import devcluster  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client  # noqa: E402

from memwarden.manifests import POD_HANDLER_ID  # noqa: E402
from memwarden_testing.builders import make_container, make_policy, make_policy_spec  # noqa: E402
from memwarden_testing.cluster import api_client, ensure_namespace, kubectl, wait_for  # noqa: E402
from memwarden_testing.operator import OPERATOR_NAMESPACE, OperatorProcess  # noqa: E402

RATES = (50, 200)
SECONDS_PER_RATE = 5
POD_CREATES = 150


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def review(namespace: str) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "generateName": "bench-",
            "namespace": namespace,
            "labels": {"app": "checkout"},
        },
        "spec": {"containers": [make_container(env={"LOG": "info"})]},
    }
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": namespace,
            "userInfo": {"username": "bench"},
            "object": pod,
        },
    }


async def offered_load(*, url: str, ca: Path, namespace: str, rate: int) -> dict[str, Any]:
    context = ssl.create_default_context(cafile=str(ca))
    latencies: list[float] = []
    errors = 0
    patched = 0

    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(ssl=context, limit=64)
    ) as session:

        async def one() -> None:
            nonlocal errors, patched
            started = time.perf_counter()
            try:
                async with session.post(url, json=review(namespace)) as response:
                    body = await response.json()
                    if response.status != 200:
                        errors += 1
                        return
                    patched += "patch" in body["response"]
            except aiohttp.ClientError:
                errors += 1
                return
            latencies.append(time.perf_counter() - started)

        tasks = []
        began = time.perf_counter()
        total = rate * SECONDS_PER_RATE
        for i in range(total):
            delay = began + i / rate - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one()))
        await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - began
    return {
        "offered_per_s": rate,
        "achieved_per_s": round(len(latencies) / elapsed, 1),
        "requests": total,
        "errors": errors,
        "mutated": patched,
        "p50_ms": round(percentile(latencies, 0.5) * 1000, 2),
        "p99_ms": round(percentile(latencies, 0.99) * 1000, 2),
    }


def pod_create_latency(
    kube: client.ApiClient, *, with_webhook: str, without: str
) -> dict[str, Any]:
    core = client.CoreV1Api(kube)
    times: dict[str, list[float]] = {with_webhook: [], without: []}
    mutated = 0
    for i in range(POD_CREATES * 2):
        namespace = with_webhook if i % 2 == 0 else without
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"p{i}", "labels": {"app": "checkout"}},
            "spec": {"containers": [make_container()]},
        }
        started = time.perf_counter()
        created = core.create_namespaced_pod(namespace, body, dry_run="All")
        times[namespace].append(time.perf_counter() - started)
        if namespace == with_webhook and created.spec.containers[0].resources.limits:
            mutated += 1
    on, off = times[with_webhook], times[without]
    return {
        "pods_each": POD_CREATES,
        "with_webhook_p50_ms": round(statistics.median(on) * 1000, 2),
        "with_webhook_p99_ms": round(percentile(on, 0.99) * 1000, 2),
        "without_p50_ms": round(statistics.median(off) * 1000, 2),
        "without_p99_ms": round(percentile(off, 0.99) * 1000, 2),
        "ratio_p50": round(statistics.median(on) / statistics.median(off), 2),
        "mutated_with_webhook": mutated,
    }


def main() -> None:
    layout = devcluster.default_layout()
    devcluster.up(layout)
    kubeconfig = layout.kubeconfig
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    kube = api_client(kubeconfig)
    core = client.CoreV1Api(kube)
    ensure_namespace(core, OPERATOR_NAMESPACE)
    ensure_namespace(core, "bench-admission")
    ensure_namespace(core, "bench-excluded", labels={"memwarden.dev/ignore": "true"})
    for namespace in ("bench-admission", "bench-excluded"):
        policy = make_policy(
            namespace=namespace,
            spec=make_policy_spec(
                memory={"request": "512Mi", "limit": "1Gi"}, go={"memoryLimit": "90%"}
            ),
        )
        kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(policy))

    with tempfile.TemporaryDirectory() as tmp:
        operator = OperatorProcess(kubeconfig=kubeconfig, workdir=Path(tmp))
        ca = Path(tmp) / "ca.crt"
        ca.write_bytes(operator.make_certificates())
        operator.start()
        try:
            operator.register_webhook(ca.read_bytes())
            wait_for(
                lambda: (
                    client.CoreV1Api(kube)
                    .create_namespaced_pod(
                        "bench-admission",
                        {
                            "apiVersion": "v1",
                            "kind": "Pod",
                            "metadata": {"name": "probe", "labels": {"app": "checkout"}},
                            "spec": {"containers": [make_container()]},
                        },
                        dry_run="All",
                    )
                    .spec.containers[0]
                    .resources.limits
                ),
                timeout=60,
                what="the webhook mutating pods",
            )
            url = f"https://127.0.0.1:{operator.webhook_port}/{POD_HANDLER_ID}"
            direct = [
                asyncio.run(offered_load(url=url, ca=ca, namespace="bench-admission", rate=r))
                for r in RATES
            ]
            through_api = pod_create_latency(
                kube, with_webhook="bench-admission", without="bench-excluded"
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
    for namespace in ("bench-admission", "bench-excluded"):
        core.delete_namespace(namespace)

    print(f"{'offered/s':>10} {'achieved/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for row in direct:
        print(
            f"{row['offered_per_s']:>10} {row['achieved_per_s']:>11} {row['p50_ms']:>8} "
            f"{row['p99_ms']:>8} {row['errors']:>7}"
        )
    print(
        f"pod create via API server, p50: with webhook {through_api['with_webhook_p50_ms']} ms, "
        f"without {through_api['without_p50_ms']} ms, ratio {through_api['ratio_p50']}"
    )
    out = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "webhook_direct": direct,
        "pod_create": through_api,
    }
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "admission.json").write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
