"""Benchmark: the operator at cluster scale, on the real local control plane.

1,000 MemoryPolicies (100 namespaces x 10) and 10,000 Pending pods created through the
API server by 16 client threads, with memwarden's webhook registered. Measured:

- start: operator process start -> webhook listening with every policy indexed;
- during the creates: pods admitted without their policy (must be 0), create latency,
  operator CPU and RSS;
- after: time until every policy's status counts all its pods; then at rest (60 s):
  operator CPU, RSS, log lines per second; time from one more pod create to its
  policy's status counting it;
- a burst: 2,000 creates from 20 concurrent clients into one namespace: how many were
  admitted with their policy, and the slowest create.

    .venv/bin/python bench/scale_bench.py            # writes bench/results/scale.json
    .venv/bin/python bench/scale_bench.py --pods 2000 --namespaces 20   # smaller
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "hack")]

import devcluster  # noqa: E402
import yaml  # noqa: E402
from admission_bench import clear_foreign_webhooks, percentile  # noqa: E402
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from memwarden.api import APPLIED_ANNOTATION  # noqa: E402
from memwarden_testing.builders import make_container, make_policy, make_policy_spec  # noqa: E402
from memwarden_testing.cluster import (  # noqa: E402
    api_client,
    child_pids,
    ensure_namespace,
    kubectl,
    wait_for,
)
from memwarden_testing.operator import OPERATOR_NAMESPACE, OperatorProcess  # noqa: E402

POLICIES_PER_NAMESPACE = 10
CLIENT_THREADS = 16
BURST_PODS, BURST_CLIENTS = 2_000, 20
REST_SECONDS = 60.0
TICKS = os.sysconf("SC_CLK_TCK")


class ProcessSampler:
    """CPU seconds and RSS of the operator: its process and its admission worker (the
    webhook's own process, ``admission_process: worker``), from /proc."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def worker_pid(self) -> int | None:
        found = child_pids(self.pid, b"memwarden.webhook.worker")
        return found[0] if found else None

    def _pids(self) -> list[int]:
        worker = self.worker_pid()
        return [self.pid] if worker is None else [self.pid, worker]

    def cpu_seconds(self) -> float:
        total = 0.0
        for pid in self._pids():
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += (int(fields[11]) + int(fields[12])) / TICKS
        return total

    def rss_parts_mib(self) -> dict[str, float]:
        """VmRSS of the operator and of its admission worker (shared libraries count in
        both: the sum overstates what the pair uses)."""
        parts = {}
        for name, pid in zip(("operator", "admission_worker"), self._pids(), strict=False):
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    parts[name] = round(int(line.split()[1]) / 1024, 1)
        return parts

    def rss_mib(self) -> float:
        return sum(self.rss_parts_mib().values())

    def pss_mib(self) -> float:
        """The pair's proportional set size: a page both map (the interpreter, shared
        libraries) counts half in each, so the sum counts it once, as the container's
        memory cgroup does; VmRSS's sum counts it twice."""
        total = 0
        for pid in self._pids():
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Pss:"):
                    total += int(line.split()[1])
        return round(total / 1024, 1)


class PeakRss(threading.Thread):
    """Samples RSS every 0.5 s in the background; ``peak`` is the highest seen."""

    def __init__(self, sampler: ProcessSampler) -> None:
        super().__init__(daemon=True)
        self.sampler, self.peak, self._done = sampler, 0.0, threading.Event()

    def run(self) -> None:
        while not self._done.wait(0.5):
            self.peak = max(self.peak, self.sampler.rss_mib())

    def stop(self) -> float:
        self._done.set()
        self.join()
        return self.peak


def pod_body(name: str, app: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": app, "tier": "web"}},
        "spec": {"containers": [make_container(env={"LOG": "info"})]},
    }


def governed(pod: Any) -> bool:
    return APPLIED_ANNOTATION in (pod.metadata.annotations or {})


def create_many(
    kubeconfig: Path, jobs: list[tuple[str, str, str]], *, clients: int
) -> tuple[list[float], int, int]:
    """Create (namespace, name, app) pods from ``clients`` threads, each with its own
    client; return the latencies, how many came back without memwarden's annotation, and
    how many creates failed."""
    local = threading.local()
    lock = threading.Lock()
    latencies: list[float] = []
    counts = {"ungoverned": 0, "failed": 0}

    def one(job: tuple[str, str, str]) -> None:
        if not hasattr(local, "core"):
            local.core = client.CoreV1Api(api_client(kubeconfig))
        namespace, name, app = job
        started = time.perf_counter()
        try:
            created = local.core.create_namespaced_pod(namespace, pod_body(name, app))
        except ApiException:
            with lock:
                counts["failed"] += 1
            return
        elapsed = time.perf_counter() - started
        with lock:
            latencies.append(elapsed)
            counts["ungoverned"] += not governed(created)

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        list(pool.map(one, jobs))
    return latencies, counts["ungoverned"], counts["failed"]


def matched_total(custom: client.CustomObjectsApi) -> int:
    items = custom.list_cluster_custom_object("memwarden.dev", "v1alpha1", "memorypolicies")
    return sum(int((i.get("status") or {}).get("matchedPods") or 0) for i in items["items"])


def statuses_written(custom: client.CustomObjectsApi) -> int:
    items = custom.list_cluster_custom_object("memwarden.dev", "v1alpha1", "memorypolicies")
    return sum(1 for i in items["items"] if (i.get("status") or {}).get("conditions"))


def matched(custom: client.CustomObjectsApi, namespace: str, name: str) -> int:
    obj = custom.get_namespaced_custom_object(
        "memwarden.dev", "v1alpha1", namespace, "memorypolicies", name
    )
    return int((obj.get("status") or {}).get("matchedPods") or 0)


def scheduler_tried(core: client.CoreV1Api, namespace: str) -> bool:
    """Every pod of ``namespace`` has the scheduler's PodScheduled condition."""
    pods = core.list_namespaced_pod(namespace).items
    return all(any(c.type == "PodScheduled" for c in (p.status.conditions or [])) for p in pods)


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.monotonic()
    result = fn()
    return time.monotonic() - started, result


def log_lines(operator: OperatorProcess) -> int:
    return len(operator.log_path.read_bytes().splitlines())


def setup_policies(kubeconfig: Path, core: client.CoreV1Api, namespaces: list[str]) -> None:
    documents = []
    for namespace in namespaces:
        ensure_namespace(core, namespace)
        for p in range(POLICIES_PER_NAMESPACE):
            spec = make_policy_spec(
                match_labels={"app": f"app-{p}"},
                memory={"request": "256Mi", "limit": "512Mi"},
                go={"memoryLimit": "90%"},
            )
            documents.append(make_policy(f"policy-{p}", namespace=namespace, spec=spec))
    for start in range(0, len(documents), 200):
        kubectl(
            kubeconfig,
            "apply",
            "--server-side",
            "-f",
            "-",
            input=yaml.safe_dump_all(documents[start : start + 200]),
        )


def delete_namespaces(core: client.CoreV1Api, namespaces: list[str]) -> None:
    for namespace in namespaces:
        try:
            core.delete_namespace(namespace)
        except ApiException as exc:
            if exc.status != 404:
                raise

    def gone() -> bool:
        names = {n.metadata.name for n in core.list_namespace().items}
        return not names & set(namespaces)

    wait_for(gone, timeout=900, interval=2, what="bench namespaces deleted")


def run(
    *, pods: int, namespace_count: int, profile: str | None = None, extra_env: dict[str, str]
) -> dict[str, Any]:
    layout = devcluster.default_layout()
    devcluster.up(layout)
    kubeconfig = layout.kubeconfig
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    kube = api_client(kubeconfig)
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    ensure_namespace(core, OPERATOR_NAMESPACE)
    clear_foreign_webhooks(kubeconfig)  # an interrupted run's would see every create
    namespaces = [f"scale-{n:03d}" for n in range(namespace_count)]
    burst_namespace, unwatched = "scale-burst", "scale-unwatched"
    delete_namespaces(core, [*namespaces, burst_namespace, unwatched])  # an interrupted run's
    ensure_namespace(core, unwatched, labels={"memwarden.dev/ignore": "true"})
    print(f"creating {namespace_count * POLICIES_PER_NAMESPACE} policies", flush=True)
    setup_policies(kubeconfig, core, [*namespaces, burst_namespace])
    result: dict[str, Any] = {
        "policies": (namespace_count + 1) * POLICIES_PER_NAMESPACE,
        "namespaces": namespace_count,
        "pods": pods,
    }
    with tempfile.TemporaryDirectory() as tmp:
        operator = OperatorProcess(kubeconfig=kubeconfig, workdir=Path(tmp), extra_env=extra_env)
        ca = operator.make_certificates()
        started = time.monotonic()
        operator.start()
        try:
            wait_for(
                lambda: "listening" in operator.log_tail(100_000),
                timeout=120,
                what="webhook listening",
            )
            result["start_to_webhook_listening_s"] = round(time.monotonic() - started, 2)
            operator.register_webhook(ca)
            # Settled: every policy has its first status (the start-up's own work is done).
            wait_for(
                lambda: statuses_written(custom) >= result["policies"],
                timeout=300,
                interval=1,
                what="every policy's first status",
            )
            result["start_to_every_status_s"] = round(time.monotonic() - started, 2)
            assert operator.process is not None
            sampler = ProcessSampler(operator.process.pid)
            result["rss_after_start_mib"] = round(sampler.rss_mib(), 1)
            result["rss_after_start_parts_mib"] = sampler.rss_parts_mib()
            result["pss_after_start_mib"] = sampler.pss_mib()

            # -- the burst: 2,000 creates, 20 clients, one namespace; then the same into a
            # namespace the webhook skips, for what the API server alone costs here -----
            for key, target in (("burst", burst_namespace), ("burst_no_webhook", unwatched)):
                jobs = [(target, f"burst-{i}", f"app-{i % 10}") for i in range(BURST_PODS)]
                wall, (latencies, ungoverned, failed) = timed(
                    lambda jobs=jobs: create_many(kubeconfig, jobs, clients=BURST_CLIENTS)
                )
                result[key] = {
                    "creates": BURST_PODS,
                    "clients": BURST_CLIENTS,
                    "admitted_with_policy": len(latencies) - ungoverned,
                    "admitted_without_policy": ungoverned,
                    "failed": failed,
                    "creates_per_s": round(len(latencies) / wall, 1),
                    "p50_ms": round(statistics.median(latencies) * 1000, 1),
                    "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
                    "max_ms": round(max(latencies) * 1000, 1),
                }
                print(f"{key}: {result[key]}", flush=True)

            # -- 10,000 pods across the namespaces ----------------------------------------
            jobs = [
                (namespaces[i % namespace_count], f"pod-{i}", f"app-{(i // namespace_count) % 10}")
                for i in range(pods)
            ]
            cpu_before = sampler.cpu_seconds()
            peak = PeakRss(sampler)
            peak.start()
            wall, (latencies, ungoverned, failed) = timed(
                lambda: create_many(kubeconfig, jobs, clients=CLIENT_THREADS)
            )
            result["creates"] = {
                "wall_s": round(wall, 1),
                "creates_per_s": round(len(latencies) / wall, 1),
                "admitted_without_policy": ungoverned,
                "failed": failed,
                "p50_ms": round(statistics.median(latencies) * 1000, 1),
                "p99_ms": round(percentile(latencies, 0.99) * 1000, 1),
                "max_ms": round(max(latencies) * 1000, 1),
                "operator_cpu_cores": round((sampler.cpu_seconds() - cpu_before) / wall, 3),
            }
            print(f"creates: {result['creates']}", flush=True)
            expected = pods + BURST_PODS
            waited, _ = timed(
                lambda: wait_for(
                    lambda: matched_total(custom) >= expected,
                    timeout=300,
                    interval=1,
                    what=f"statuses counting {expected} pods",
                )
            )
            result["creates"]["last_create_to_all_counted_s"] = round(waited, 1)
            result["creates"]["rss_peak_mib"] = round(peak.stop(), 1)

            # -- at rest: once the scheduler has tried every pod (until then it writes
            # each pod's PodScheduled condition, and those events are not rest) ----------
            settled, _ = timed(
                lambda: wait_for(
                    lambda: all(scheduler_tried(core, ns) for ns in namespaces),
                    timeout=900,
                    interval=5,
                    what="the scheduler to try every pod",
                )
            )
            result["creates"]["scheduler_settled_after_s"] = round(settled, 1)
            cpu_before, lines_before = sampler.cpu_seconds(), log_lines(operator)
            rest_started = time.monotonic()
            if profile is not None:  # py-spy (not a dependency): collapsed stacks at rest
                subprocess.run(
                    [
                        "py-spy",
                        "record",
                        "--pid",
                        str(sampler.pid),
                        "--duration",
                        str(int(REST_SECONDS)),
                        "--format",
                        "raw",
                        "--output",
                        profile,
                        "--nonblocking",
                    ],
                    check=True,
                    capture_output=True,
                )
            else:
                time.sleep(REST_SECONDS)  # the interval being measured: nothing to poll for
            rest = time.monotonic() - rest_started
            result["rest"] = {
                "seconds": round(rest, 1),
                "operator_cpu_cores": round((sampler.cpu_seconds() - cpu_before) / rest, 4),
                "log_lines_per_s": round((log_lines(operator) - lines_before) / rest, 3),
                "rss_mib": round(sampler.rss_mib(), 1),
                "rss_parts_mib": sampler.rss_parts_mib(),
                "pss_mib": sampler.pss_mib(),
            }
            before = matched(custom, namespaces[0], "policy-0")
            probe_started = time.monotonic()
            client.CoreV1Api(kube).create_namespaced_pod(namespaces[0], pod_body("probe", "app-0"))
            wait_for(
                lambda: matched(custom, namespaces[0], "policy-0") > before,
                timeout=60,
                interval=0.1,
                what="the probe pod counted",
            )
            result["rest"]["create_to_status_counted_s"] = round(
                time.monotonic() - probe_started, 2
            )
            print(f"rest: {result['rest']}", flush=True)
        finally:
            operator.stop()
            kubectl(
                kubeconfig,
                "delete",
                "mutatingwebhookconfiguration",
                operator.webhook_name,
                "--ignore-not-found",
            )
            delete_namespaces(core, [*namespaces, burst_namespace, unwatched])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=10_000)
    parser.add_argument("--namespaces", type=int, default=100)
    parser.add_argument("--out", default=str(HERE / "results" / "scale.json"))
    parser.add_argument(
        "--profile", default=None, help="py-spy's collapsed stacks of the rest phase to this file"
    )
    parser.add_argument(
        "--env", action="append", default=[], help="NAME=VALUE for the operator (repeatable)"
    )
    args = parser.parse_args()
    extra_env = dict(item.split("=", 1) for item in args.env)
    result = run(
        pods=args.pods, namespace_count=args.namespaces, profile=args.profile, extra_env=extra_env
    )
    result["operator_env"] = extra_env
    result.update({"python": platform.python_version(), "cpus": os.cpu_count()})
    print(json.dumps(result, indent=2))
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
