"""Benchmark and check: admission latency while the operator is busy (issue #11, item 2).

The webhook shares the operator's event loop with everything else memwarden does. This
starts the real operator (``memwarden run``, as the tests do) on the local control plane,
kept to this benchmark's namespaces, with Prometheus configured, and measures the webhook
directly: a separate load process (aiohttp over HTTPS) posts complete AdmissionReviews
to ``https://127.0.0.1:<port>/memwarden-pods`` at a fixed open-loop rate, first with the
operator idle, then while it does all of this at once:

- risk cycles: policies with ``oomRisk`` in RISK_NAMESPACES namespaces over
  RISK_PODS_PER_NAMESPACE pods each; a Prometheus (Debian's) scrapes an exporter serving
  cAdvisor-style series for every container, and the operator evaluates every
  RISK_INTERVAL_S (the series stay below every threshold: cycles, no incidents);
- evidence retention every RETENTION_INTERVAL_S over a store pre-filled through the
  store API (PREFILL_KEPT bundles kept, PREFILL_EXPIRED expired), into which expired
  bundles keep arriving (EXPIRED_PER_S), so every sweep deletes;
- captures: MemoryIncidents opened one after another on a pod playing the target (its
  status says Running at 127.0.0.1, as tests/integration/test_evidence_api.py plays it);
  the operator adds the debug container, and this benchmark plays the toolbox: it reads
  the upload URL and token from that container and uploads a real bundle (``memwarden
  capture`` of the leaky Go workload: heap, allocs, goroutine profiles), which the
  operator stores, analyses in its subprocess and records (Collected).

Then idle again, as a check on the machine's own noise. Printed and kept in
``bench/results/admission_busy.json``: p50/p90/p99/max of both phases, their ratio, and
what ran during the busy measurement (uploads stored, incidents collected, bundles swept,
risk cycles and queries from the operator's /metrics). Exits 1 when the busy p99 is
above MAX_P99_RATIO x the idle p99, when a review failed, or when the busy work did not
all run, so it serves as the check.

    .venv/bin/python bench/admission_busy_bench.py
    .venv/bin/python bench/admission_busy_bench.py --profile /tmp/busy.raw   # py-spy, busy phase
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import datetime as dt
import json
import os
import platform
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "hack")]

import yaml  # noqa: E402
from admission_bench import (  # noqa: E402  (bench/ is on sys.path: scripts run from it)
    VEGETA_BUILD,
    build,
    fresh_namespace,
    percentile,
    review,
    write_targets,
)
from kubernetes import client  # noqa: E402
from kubernetes.client.rest import ApiException  # noqa: E402

from memwarden.api import GROUP, VERSION  # noqa: E402
from memwarden.capture.plan import ENV_UPLOAD_TOKEN, ENV_UPLOAD_URL  # noqa: E402
from memwarden.evidence.adapters.store import EvidenceStore  # noqa: E402
from memwarden.webhook.manifests import POD_HANDLER_ID  # noqa: E402
from memwarden_testing.builders import make_container, make_policy, make_policy_spec  # noqa: E402
from memwarden_testing.cluster import (  # noqa: E402
    api_client,
    delete_namespaces,
    ensure_namespace,
    kubectl,
    wait_for,
)
from memwarden_testing.evidence import make_bundle, make_incident  # noqa: E402
from memwarden_testing.operator import OPERATOR_NAMESPACE, OperatorProcess  # noqa: E402

RATE = 200  # reviews per second, open loop
SECONDS = 20.0  # per phase
UNIQUE_REVIEWS = 1000
MAX_P99_RATIO = 2.0

PREFIX = "bench-busy"
WORK = ("risk", "retention", "captures")
NS_ADMIT = f"{PREFIX}-admit"  # the reviews' namespace: a policy, no pods
NS_CAPTURE = f"{PREFIX}-capture"  # the capture target and its incidents
RISK_NAMESPACES = 10
RISK_PODS_PER_NAMESPACE = 30  # 300 containers with series
RISK_INTERVAL_S = 2
RETENTION_INTERVAL_S = 2
PREFILL_KEPT = 2000
PREFILL_EXPIRED = 1000
EXPIRED_PER_S = 20
STORE_NAMESPACES = 20
#: A capture starts every 3 s at most: the cluster-wide cap of 3 concurrent captures
#: (max_concurrent_captures) at 10 s or more each (a 5 s trace alone) allows no more.
UPLOAD_EVERY_S = 3.0
LABELS = {"app": "checkout"}
MI, GI = 2**20, 2**30
TARGET_POD = "target-0"
ARTIFACTS = ["heap", "allocs", "goroutine"]
#: Short windows for a Prometheus scraping every second (as tests/integration use).
WINDOWS = {"regression": "10s", "rate": "5s", "oom": "1m"}
TICKS = os.sysconf("SC_CLK_TCK")


# --- the load: a process of its own, so this one's threads do not disturb it -----------


async def _load(url: str, ca: str, *, rate: float, seconds: float) -> dict[str, Any]:
    """Send ``rate`` reviews a second for ``seconds``, each on schedule whatever the
    replies (open loop); latency is from sending a review to its whole reply."""
    import aiohttp

    bodies = [
        json.dumps(review(pod_body(f"r{i}", NS_ADMIT), f"00000000-0000-0000-0000-{i:012d}"))
        for i in range(UNIQUE_REVIEWS)
    ]
    headers = {"Content-Type": "application/json"}
    clock = time.perf_counter  # the loop's clock (uvloop) counts whole milliseconds
    latencies: list[tuple[float, float]] = []  # (due, seconds)
    lateness: list[float] = []
    errors: list[str] = []
    mutated = 0
    connector = aiohttp.TCPConnector(ssl=ssl.create_default_context(cafile=ca), limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        for body in bodies[:20]:  # connections and the plan cache warm, not measured
            async with session.post(url, data=body, headers=headers) as reply:
                await reply.read()

        async def one(i: int, due: float) -> None:
            nonlocal mutated
            sent = clock()
            lateness.append(sent - due)
            try:
                async with session.post(
                    url, data=bodies[i % len(bodies)], headers=headers
                ) as reply:
                    payload = await reply.read()
                    status = reply.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                errors.append(repr(exc)[:200])
                return
            if status != 200:
                errors.append(f"HTTP {status}: {payload[:200]!r}")
                return
            latencies.append((due - start, clock() - sent))
            mutated += b'"patch"' in payload

        total = int(rate * seconds)
        start = clock() + 0.1
        tasks = []
        for i in range(total):
            due = start + i / rate
            delay = due - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            tasks.append(asyncio.create_task(one(i, due)))
        await asyncio.gather(*tasks)
    return summary(
        latencies, lateness, rate=rate, seconds=seconds, sent=total, mutated=mutated, errors=errors
    )


def summary(
    latencies: list[tuple[float, float]],
    lateness: list[float],
    *,
    rate: float,
    seconds: float,
    sent: int,
    mutated: int,
    errors: list[str],
) -> dict[str, Any]:
    """One phase's numbers from its (due second, latency) pairs and send lateness."""
    values = [took for _, took in latencies]
    worst: dict[int, float] = {}
    for due, took in latencies:
        worst[int(due)] = max(worst.get(int(due), 0.0), took)
    ms = 1000.0
    return {
        "offered_per_s": rate,
        "seconds": seconds,
        "sent": sent,
        "ok": len(values),
        "mutated": mutated,
        "errors": len(errors),
        "error_samples": errors[:3],
        "p50_ms": round(percentile(values, 0.5) * ms, 2) if values else None,
        "p90_ms": round(percentile(values, 0.9) * ms, 2) if values else None,
        "p99_ms": round(percentile(values, 0.99) * ms, 2) if values else None,
        "max_ms": round(max(values) * ms, 2) if values else None,
        # how far behind schedule the generator sent (its own lag, not the webhook's)
        "send_lateness_p99_ms": round(percentile(lateness, 0.99) * ms, 2),
        "max_ms_by_second": [round(worst.get(s, 0.0) * ms, 1) for s in range(int(seconds))],
    }


def load_main(args: argparse.Namespace) -> None:
    with contextlib.suppress(ImportError):
        import uvloop

        uvloop.install()
    result = asyncio.run(_load(args.url, args.ca, rate=args.rate, seconds=args.seconds))
    print(json.dumps(result))


def vegeta_load(
    vegeta: Path, url: str, ca: Path, *, workdir: Path, rate: float = RATE, seconds: float = SECONDS
) -> dict[str, Any]:
    """The same open-loop load, sent by vegeta (Go): a generator that its own pauses do
    not put into the latencies (the Python one's p99 lag reached 2-12 ms on a busy
    machine). The same reviews, the same fields out."""
    targets, results = workdir / "busy-targets.json", workdir / "busy-results.bin"
    if not targets.exists():
        write_targets(targets, url, (pod_body(f"r{i}", NS_ADMIT) for i in range(UNIQUE_REVIEWS)))

    def attack(attack_rate: float, duration: float) -> None:
        subprocess.run(
            [
                str(vegeta),
                "attack",
                "-format=json",
                f"-targets={targets}",
                f"-rate={int(attack_rate)}/1s",
                f"-duration={duration}s",
                "-timeout=10s",
                f"-root-certs={ca}",
                "-http2=false",  # as the API server calls a webhook (admission_bench.py)
                f"-output={results}",
            ],
            check=True,
        )

    attack(50, 0.4)  # connections and the plan cache warm, not measured
    attack(rate, seconds)
    encoded = subprocess.run(
        [str(vegeta), "encode", "-to=json", str(results)], check=True, stdout=subprocess.PIPE
    ).stdout.splitlines()
    results.unlink()
    rows = sorted((json.loads(line) for line in encoded), key=lambda row: row["seq"])

    def at(row: dict[str, Any]) -> float:
        whole, _, fraction = row["timestamp"].rstrip("Z").partition(".")
        stamp = dt.datetime.fromisoformat(whole).replace(tzinfo=dt.UTC).timestamp()
        return stamp + float(f"0.{fraction or 0}")

    start = at(rows[0])
    latencies = [(row["seq"] / rate, row["latency"] / 1e9) for row in rows if row["code"] == 200]
    lateness = [at(row) - (start + row["seq"] / rate) for row in rows]
    errors = [f"{row['code']}: {row['error']}"[:200] for row in rows if row["code"] != 200]
    mutated = sum(
        b'"patch"' in base64.b64decode(row.get("body") or "") for row in rows if row["code"] == 200
    )
    return {
        "generator": "vegeta",
        **summary(
            latencies,
            lateness,
            rate=rate,
            seconds=seconds,
            sent=len(rows),
            mutated=mutated,
            errors=errors,
        ),
    }


def run_load(url: str, ca: Path, *, rate: float = RATE, seconds: float = SECONDS) -> dict[str, Any]:
    out = subprocess.run(
        [
            sys.executable,
            str(Path(__file__).resolve()),
            "load",
            f"--url={url}",
            f"--ca={ca}",
            f"--rate={rate}",
            f"--seconds={seconds}",
        ],
        check=True,
        capture_output=True,
        text=True,
        timeout=seconds + 120,
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


# --- objects ----------------------------------------------------------------------------


def pod_body(name: str, namespace: str) -> dict[str, Any]:
    """A pod of the policies' app: a 1Gi limit of its own (the risk signals need one, and
    no webhook is registered with the API server), never scheduled (a scheduling gate:
    no scheduler churn, nothing for a node to run)."""
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": LABELS},
        "spec": {
            "containers": [make_container(memory_request="512Mi", memory_limit="1Gi")],
            "schedulingGates": [{"name": "memwarden.dev/bench"}],
        },
    }


def risk_namespaces() -> list[str]:
    return [f"{PREFIX}-risk-{i}" for i in range(RISK_NAMESPACES)]


def apply(kubeconfig: Path, obj: dict[str, Any]) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(obj))


def risk_policy(namespace: str) -> dict[str, Any]:
    spec = make_policy_spec(
        match_labels=LABELS,
        memory={"request": "512Mi", "limit": "1Gi"},
        oomRisk={"for": "5s", "usageRatio": 0.9, "timeToLimit": "10m"},
        capture={"cooldown": "30m"},
    )
    return make_policy(namespace=namespace, spec=spec)


def play_running(core: client.CoreV1Api, namespace: str, name: str) -> None:
    """The pod's status as a kubelet would write it once its container runs, at
    127.0.0.1: this process's address, so its uploads come "from the pod"."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    status = {
        "phase": "Running",
        "podIP": "127.0.0.1",
        "podIPs": [{"ip": "127.0.0.1"}],
        "startTime": now,
        "containerStatuses": [
            {
                "name": "app",
                "ready": True,
                "restartCount": 0,
                "image": "example.com/app:1",
                "imageID": "",
                "state": {"running": {"startedAt": now}},
            }
        ],
    }
    core.patch_namespaced_pod_status(name, namespace, {"status": status})


def real_bundle(workdir: Path) -> bytes:
    """``memwarden capture`` of the leaky Go workload (built by hack/build-leaky.sh):
    the bundle a debug container would upload, heap profile inside."""
    from memwarden_testing.leaky import build_leaky, find_go, run_leaky, wait_leaked

    go = find_go()
    if go is None:
        raise SystemExit("the Go toolchain is required (leaky, the capture target)")
    binary = build_leaky(go)
    out = workdir / "bundle.tar.gz"
    env = {"LEAKY_RATE": "256Mi", "LEAKY_MAX": str(48 * MI), "LEAKY_GOROUTINES": "20"}
    with run_leaky(binary, workdir=workdir, env=env) as leaky:
        wait_leaked(leaky, 48 * MI, timeout=60)
        subprocess.run(
            [
                sys.executable,
                "-m",
                "memwarden.cli",
                "capture",
                f"--pid={leaky.pid}",
                f"--pprof-port={leaky.port}",
                f"--artifacts={','.join(ARTIFACTS)}",
                f"--out={out}",
                f"--workdir={workdir}",
            ],
            check=True,
            capture_output=True,
            timeout=120,
        )
    return out.read_bytes()


# --- the busy work ----------------------------------------------------------------------


class Uploads(threading.Thread):
    """Captures one after another: open an incident, wait for the operator's debug
    container, upload the bundle with its token as the toolbox would, wait for Collected."""

    def __init__(self, kube: client.ApiClient, bundle: bytes, *, ca_file: Path) -> None:
        super().__init__(daemon=True)
        self.ca_file = ca_file  # the operator's HTTP API is HTTPS
        self.custom = client.CustomObjectsApi(kube)
        self.core = client.CoreV1Api(kube)
        self.bundle = bundle
        self.stop = threading.Event()
        self.stored = 0  # 201 from the operator's evidence API
        self.collected = 0  # incidents the operator completed (analysed)
        self.analysed_top: str | None = None
        self.errors: list[str] = []

    def incident(self, name: str) -> dict[str, Any]:
        obj: dict[str, Any] = self.custom.get_namespaced_custom_object(
            GROUP, VERSION, NS_CAPTURE, "memoryincidents", name
        )
        return obj

    def phase(self, name: str, *wanted: str) -> dict[str, Any] | None:
        obj = self.incident(name)
        status = obj.get("status") or {}
        if status.get("phase") in ("Failed", "Skipped"):
            raise RuntimeError(f"incident {name} {status.get('phase')}: {status.get('message')}")
        return status if status.get("phase") in wanted else None

    def once(self, number: int) -> None:
        import requests

        name = f"busy-{number}"
        self.custom.create_namespaced_custom_object(
            GROUP,
            VERSION,
            NS_CAPTURE,
            "memoryincidents",
            make_incident(name, pod=TARGET_POD, artifacts=ARTIFACTS),
        )
        status = wait_for(
            lambda: self.phase(name, "Capturing"), timeout=30, what=f"{name} Capturing"
        )
        pod = self.core.read_namespaced_pod(TARGET_POD, NS_CAPTURE)
        (container,) = [
            c for c in pod.spec.ephemeral_containers or [] if c.name == status["ephemeralContainer"]
        ]
        env = {e.name: e.value for e in container.env or []}
        reply = requests.put(
            env[ENV_UPLOAD_URL],
            data=self.bundle,
            headers={
                "Authorization": f"Bearer {env[ENV_UPLOAD_TOKEN]}",
                "Content-Type": "application/gzip",
            },
            timeout=60,
            verify=str(self.ca_file),
        )
        if reply.status_code != 201:
            raise RuntimeError(f"upload of {name}: {reply.status_code} {reply.text[:200]}")
        self.stored += 1
        done = wait_for(lambda: self.phase(name, "Collected"), timeout=60, what=f"{name} Collected")
        self.collected += 1
        top = ((done.get("analysis") or {}).get("top") or [{}])[0]
        self.analysed_top = top.get("function")

    def run(self) -> None:
        number = 0
        while not self.stop.is_set():
            started = time.monotonic()
            try:
                self.once(number)
            except (AssertionError, RuntimeError, ApiException, OSError) as exc:
                self.errors.append(f"{type(exc).__name__}: {str(exc)[:300]}")
                if len(self.errors) > 20:
                    return
                self.stop.wait(1)
            number += 1
            self.stop.wait(max(0.0, started + UPLOAD_EVERY_S - time.monotonic()))


class ExpiredBundles(threading.Thread):
    """Expired bundles arriving in the live store (through the store API), so that every
    retention sweep has something to delete."""

    def __init__(self, root: Path) -> None:
        super().__init__(daemon=True)
        self.store = EvidenceStore(root)
        self.stop = threading.Event()
        self.written = 0
        self.data = make_bundle()

    def run(self) -> None:
        while not self.stop.wait(1 / EXPIRED_PER_S):
            write_bundle(
                self.store,
                f"{PREFIX}-store-{self.written % STORE_NAMESPACES}",
                f"expired-late-{self.written}",
                self.data,
                expired=True,
            )
            self.written += 1


def write_bundle(
    store: EvidenceStore, namespace: str, name: str, data: bytes, *, expired: bool
) -> None:
    age = dt.timedelta(days=8 if expired else 1)  # the default max age is 7 days
    with store.open_upload(namespace, name, uid=f"uid-{name}", max_bytes=len(data)) as writer:
        writer.write(data)
        writer.commit(now=dt.datetime.now(dt.UTC) - age)


def prefill(root: Path) -> None:
    store = EvidenceStore(root)
    data = make_bundle()
    for i in range(PREFILL_KEPT + PREFILL_EXPIRED):
        expired = i >= PREFILL_KEPT
        name = f"expired-{i}" if expired else f"kept-{i}"
        write_bundle(store, f"{PREFIX}-store-{i % STORE_NAMESPACES}", name, data, expired=expired)


def expired_in(root: Path) -> int:
    """Expired bundles still in the store (names ``expired-*``)."""
    return sum(
        1
        for ns in root.glob(f"{PREFIX}-store-*")
        for entry in ns.iterdir()
        if entry.name.startswith("expired-")
    )


# --- CPU ----------------------------------------------------------------------------------


def process_cpu(pid: int) -> tuple[float, float]:
    """(own CPU seconds, reaped children's) of a live process."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS, (int(fields[13]) + int(fields[14])) / TICKS


def machine_busy() -> float:
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / TICKS


def all_cpu() -> dict[int, tuple[str, float]]:
    found: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
                found[int(entry.name)] = (cmd[:90], sum(process_cpu(int(entry.name))[:1]))
    return found


class CpuWatch:
    """Over an interval: the operator's CPU (its own, its analysis children's), the whole
    machine's, and the busiest other processes."""

    def __init__(self, operator_pid: int) -> None:
        self.pid = operator_pid
        self.started = time.monotonic()
        self.bench = process_cpu(os.getpid())[0]
        self.operator = process_cpu(operator_pid)
        self.machine = machine_busy()
        self.processes = all_cpu()
        #: The webhook's own process (admission_process: worker), if there is one.
        worker_module = "memwarden.webhook.worker"
        self.worker = next(
            (pid for pid, (cmd, _) in self.processes.items() if worker_module in cmd), None
        )

    def stop(self) -> dict[str, Any]:
        wall = time.monotonic() - self.started
        own, children = process_cpu(self.pid)
        after = all_cpu()
        others = sorted(
            (
                (total - self.processes[pid][1], cmd)
                for pid, (cmd, total) in after.items()
                if pid in self.processes and pid not in (self.pid, os.getpid(), self.worker)
            ),
            reverse=True,
        )
        worker_cpu = 0.0
        if self.worker is not None and self.worker in after:
            worker_cpu = after[self.worker][1] - self.processes[self.worker][1]
        return {
            "operator_cores": round((own - self.operator[0]) / wall, 2),
            "admission_worker_cores": round(worker_cpu / wall, 2),
            "operator_children_cores": round((children - self.operator[1]) / wall, 2),
            "machine_busy_cores": round((machine_busy() - self.machine) / wall, 2),
            # this benchmark's own threads (uploads, expired bundles; not the load process)
            "bench_cores": round((process_cpu(os.getpid())[0] - self.bench) / wall, 2),
            "other_processes": [
                {"cmd": cmd, "cores": round(cpu / wall, 2)}
                for cpu, cmd in others[:5]
                if cpu / wall >= 0.03
            ],
        }


# --- the run ------------------------------------------------------------------------------


def measure(
    operator: OperatorProcess, load: Callable[[], dict[str, Any]], *, profile: str | None = None
) -> dict[str, Any]:
    assert operator.process is not None
    watch = CpuWatch(operator.process.pid)
    spy = None
    if profile is not None:  # py-spy's raw stacks of the operator while the load runs
        spy = subprocess.Popen(
            [
                str(REPO / ".venv" / "bin" / "py-spy"),
                "record",
                f"--pid={operator.process.pid}",
                f"--duration={int(SECONDS)}",
                "--format=raw",
                f"--output={profile}",
                "--nonblocking",
                "--threads",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
    handler_before = handler_buckets(operator)
    result = load()
    if spy is not None:
        spy.wait(timeout=60)
    result["cpu"] = watch.stop()
    result["handler_p99_at_most_ms"] = bucket_p99_ms(handler_before, handler_buckets(operator))
    return result


#: memwarden_webhook_duration_seconds' bucket bounds (metrics.py), as its labels print them.
HANDLER_BUCKETS = ("0.0005", "0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "+Inf")


def handler_buckets(operator: OperatorProcess) -> dict[str, float]:
    """The webhook handler's own time (request read to reply built, in the worker), as
    cumulative bucket counts: what the review cost inside memwarden, not on the way."""
    name = "memwarden_webhook_duration_seconds_bucket"
    return {le: operator.metric(name, le=le) for le in HANDLER_BUCKETS}


def bucket_p99_ms(before: dict[str, float], after: dict[str, float]) -> float | None:
    """The upper bound of the bucket holding the phase's 99th percentile."""
    total = after["+Inf"] - before["+Inf"]
    for le in HANDLER_BUCKETS[:-1]:
        if total and after[le] - before[le] >= 0.99 * total:
            return float(le) * 1000
    return None


def metrics(operator: OperatorProcess) -> dict[str, float]:
    return {
        "risk_cycles": operator.metric("memwarden_risk_cycle_seconds_count"),
        "risk_queries": operator.metric("memwarden_risk_queries_total"),
        "risk_failures": operator.metric("memwarden_risk_evaluation_failures_total"),
        "collected": operator.metric(
            "memwarden_incident_phase_transitions_total", phase="Collected"
        ),
        "webhook_requests": operator.metric("memwarden_webhook_requests_total"),
    }


def print_phase(label: str, row: dict[str, Any]) -> None:
    cpu = row["cpu"]
    print(
        f"{label:12} p50 {row['p50_ms']:>7} ms  p90 {row['p90_ms']:>7}  p99 {row['p99_ms']:>7}"
        f"  max {row['max_ms']:>8}  ok {row['ok']}/{row['sent']} mutated {row['mutated']}"
        f"  | operator {cpu['operator_cores']} cores (+{cpu['operator_children_cores']}"
        f" analysis, {cpu['admission_worker_cores']} admission worker),"
        f" machine {cpu['machine_busy_cores']}, load lag p99"
        f" {row['send_lateness_p99_ms']} ms, handler p99 <= {row['handler_p99_at_most_ms']} ms",
        flush=True,
    )


def run(
    kubeconfig: Path, *, profile: str | None, work: Sequence[str], generator: str
) -> dict[str, Any]:
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    kube = api_client(kubeconfig)
    core = client.CoreV1Api(kube)
    namespaces = [NS_ADMIT, NS_CAPTURE, *risk_namespaces()]
    from memwarden_testing.prometheus import (
        TEST_RULES,
        ContainerSeries,
        PrometheusServer,
        SeriesExporter,
        flat,
    )

    exporter = SeriesExporter().start()
    with tempfile.TemporaryDirectory(prefix="admission-busy-") as tmp:
        workdir = Path(tmp)
        prometheus = PrometheusServer(
            workdir=workdir / "prometheus", targets=[exporter.target], recording=TEST_RULES
        )
        operator = OperatorProcess(
            kubeconfig=kubeconfig,
            workdir=workdir / "operator",
            extra_args=[f"--namespace={ns}" for ns in namespaces],
        )
        uploads: Uploads | None = None
        expired: ExpiredBundles | None = None
        try:
            print("a real bundle: memwarden capture of leaky ...", flush=True)
            bundle = real_bundle(workdir)
            ensure_namespace(core, OPERATOR_NAMESPACE)
            for namespace in namespaces:
                fresh_namespace(core, kubeconfig, namespace)
            apply(
                kubeconfig,
                make_policy(
                    namespace=NS_ADMIT,
                    spec=make_policy_spec(
                        match_labels=LABELS,
                        memory={"request": "512Mi", "limit": "1Gi"},
                        go={"memoryLimit": "90%"},
                    ),
                ),
            )
            # Hand-made incidents capture only a pod a policy governs with capture on, outside
            # its cooldown (issue 12): one incident every few seconds on the same pod.
            apply(
                kubeconfig,
                make_policy(
                    namespace=NS_CAPTURE,
                    spec=make_policy_spec(
                        match_labels=LABELS,
                        capture={"cooldown": "0s", "maxIncidentsPerHour": 1000},
                        oomRisk={"usageRatio": 0, "timeToLimit": "0s"},
                    ),
                ),
            )
            series = []
            for namespace in risk_namespaces():
                for i in range(RISK_PODS_PER_NAMESPACE):
                    core.create_namespaced_pod(namespace, pod_body(f"app-{i}", namespace))
                    series.append(
                        ContainerSeries(
                            namespace=namespace,
                            pod=f"app-{i}",
                            container="app",
                            working_set=flat(300 * MI),
                            limit_bytes=GI,
                        )
                    )
            exporter.set_many(series)
            core.create_namespaced_pod(NS_CAPTURE, pod_body(TARGET_POD, NS_CAPTURE))
            play_running(core, NS_CAPTURE, TARGET_POD)
            prometheus.start()
            # The store's pre-fill is written now, beside the live store, and moved in
            # when the busy phase starts: the idle phase sweeps an empty store.
            staging = workdir / "staging"
            prefill(staging)

            operator.workdir.mkdir()
            ca = workdir / "operator" / "ca.crt"
            ca.write_bytes(operator.make_certificates())
            operator.extra_env.update(
                {
                    "MEMWARDEN_PROMETHEUS_URL": prometheus.url,
                    "MEMWARDEN_RISK_INTERVAL_SECONDS": str(RISK_INTERVAL_S),
                    "MEMWARDEN_RISK_BACKOFF_MAX_SECONDS": "4",
                    "MEMWARDEN_PROMETHEUS_TIMEOUT_SECONDS": "2",
                    "MEMWARDEN_RISK_REGRESSION_WINDOW": WINDOWS["regression"],
                    "MEMWARDEN_RISK_RATE_WINDOW": WINDOWS["rate"],
                    "MEMWARDEN_RISK_OOM_WINDOW": WINDOWS["oom"],
                    "MEMWARDEN_RISK_RECORDING_RULES_CHECK_SECONDS": "5",
                    "MEMWARDEN_MAX_CONCURRENT_CAPTURES": "1000",
                    "MEMWARDEN_EVIDENCE_RETENTION_INTERVAL_SECONDS": str(RETENTION_INTERVAL_S),
                }
            )
            operator.start()
            url = f"https://127.0.0.1:{operator.webhook_port}/{POD_HANDLER_ID}"
            if generator == "vegeta":
                vegeta = build(VEGETA_BUILD)

                def load() -> dict[str, Any]:
                    return vegeta_load(vegeta, url, ca, workdir=workdir)
            else:

                def load() -> dict[str, Any]:
                    return run_load(url, ca)

            store_root = workdir / "operator" / "evidence"
            wait_for(store_root.is_dir, timeout=30, what="the operator's evidence store")
            time.sleep(5)  # start-up settles (pod list, heap freeze): part of no phase

            print(f"idle: {RATE}/s for {SECONDS:g} s ...", flush=True)
            idle = measure(operator, load)
            print_phase("idle", idle)

            # -- busy: every piece started, then measured once each has been seen working
            if "risk" in work:
                for namespace in risk_namespaces():
                    apply(kubeconfig, risk_policy(namespace))
            expired = ExpiredBundles(store_root)
            if "retention" in work:
                for directory in staging.iterdir():
                    directory.rename(store_root / directory.name)
                expired.start()
            uploads = Uploads(kube, bundle, ca_file=operator.ca_file)
            if "captures" in work:
                uploads.start()
            first = metrics(operator)
            wait_for(
                lambda: (
                    (
                        "risk" not in work
                        or metrics(operator)["risk_queries"] > first["risk_queries"]
                    )
                    and ("captures" not in work or uploads.collected > 0)
                    and ("retention" not in work or expired_in(store_root) < PREFILL_EXPIRED)
                ),
                timeout=120,
                interval=0.5,
                what="a risk cycle with queries, an upload collected, a sweep deleting",
            )
            before = metrics(operator)
            stored_before, collected_before = uploads.stored, uploads.collected
            deleted_before = PREFILL_EXPIRED + expired.written - expired_in(store_root)
            print(f"busy: {RATE}/s for {SECONDS:g} s ...", flush=True)
            busy = measure(operator, load, profile=profile)
            after = metrics(operator)
            deleted_after = PREFILL_EXPIRED + expired.written - expired_in(store_root)
            busy["during"] = {
                "uploads_stored": uploads.stored - stored_before,
                "incidents_collected": uploads.collected - collected_before,
                "bundles_swept": deleted_after - deleted_before,
                "bundles_in_store": sum(1 for _ in store_root.glob("*/*/meta.json")),
                **{k: after[k] - before[k] for k in after},
                "risk_evaluation": risk_conditions(kube) if "risk" in work else None,
                "upload_errors": uploads.errors[:5],
                "analysis_top_function": uploads.analysed_top,
            }
            print_phase("busy", busy)
            print(f"  during busy: {busy['during']}", flush=True)
            uploads.stop.set()
            expired.stop.set()
            if uploads.is_alive():
                uploads.join(timeout=90)
            if expired.is_alive():
                expired.join(timeout=10)
            # Idle again as idle was: no oomRisk policies, the store emptied (moved out).
            for namespace in risk_namespaces():
                kubectl(
                    kubeconfig,
                    "delete",
                    "memorypolicy",
                    "checkout",
                    "-n",
                    namespace,
                    "--ignore-not-found",
                )
            for directory in store_root.glob(f"{PREFIX}-store-*"):
                directory.rename(staging / directory.name)
            time.sleep(RETENTION_INTERVAL_S * 2)  # the last sweep and analysis finish
            print(f"idle again: {RATE}/s for {SECONDS:g} s ...", flush=True)
            idle_after = measure(operator, load)
            print_phase("idle again", idle_after)
            return {
                "idle": idle,
                "busy": busy,
                "idle_after": idle_after,
                "operator_log_tail": operator.log_tail(1500) if uploads.errors else None,
            }
        finally:
            for thread in (uploads, expired):
                if thread is not None and thread.is_alive():
                    thread.stop.set()
                    thread.join(timeout=90)
            # Namespaces while the operator runs: it removes its incidents' finalizers.
            delete_namespaces(kubeconfig, *namespaces, check=False)
            strip_finalizers(kube, NS_CAPTURE)
            operator.stop()
            prometheus.stop()
            exporter.stop()


def risk_conditions(kube: client.ApiClient) -> dict[str, int]:
    """How the risk policies' RiskEvaluation conditions read now, by message."""
    custom = client.CustomObjectsApi(kube)
    seen: dict[str, int] = {}
    for namespace in risk_namespaces():
        status = (
            custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "memorypolicies", "checkout"
            ).get("status")
            or {}
        )
        for condition in status.get("conditions") or []:
            if condition.get("type") == "RiskEvaluation":
                key = f"{condition.get('status')}: {condition.get('message')}"
                seen[key] = seen.get(key, 0) + 1
    return seen


def strip_finalizers(kube: client.ApiClient, namespace: str) -> None:
    """Incidents left behind (the operator was down): their finalizers removed, so the
    namespace's deletion completes."""
    custom = client.CustomObjectsApi(kube)
    with contextlib.suppress(ApiException):
        listed = custom.list_namespaced_custom_object(GROUP, VERSION, namespace, "memoryincidents")
        for item in listed["items"]:
            with contextlib.suppress(ApiException):
                custom.patch_namespaced_custom_object(
                    GROUP,
                    VERSION,
                    namespace,
                    "memoryincidents",
                    item["metadata"]["name"],
                    {"metadata": {"finalizers": None}},
                )


def git_commit() -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True, check=False
    ).stdout.strip()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command")
    load = sub.add_parser("load", help="(internal) the load process")
    load.add_argument("--url", required=True)
    load.add_argument("--ca", required=True)
    load.add_argument("--rate", type=float, default=RATE)
    load.add_argument("--seconds", type=float, default=SECONDS)
    parser.add_argument("--profile", default=None, help="py-spy raw stacks of the busy phase")
    parser.add_argument("--out", default=str(HERE / "results" / "admission_busy.json"))
    parser.add_argument(
        "--generator",
        choices=("vegeta", "python"),
        default="vegeta",
        help="what sends the reviews: vegeta (Go), or the aiohttp load process of earlier runs",
    )
    parser.add_argument(
        "--only",
        choices=WORK,
        action="append",
        default=None,
        help="run only this busy work (repeatable; to find which one slows admission)",
    )
    args = parser.parse_args()
    if args.command == "load":
        load_main(args)
        return 0

    import devcluster

    layout = devcluster.default_layout()
    cluster_was_up = (layout.pki / "done").exists() and devcluster._readyz(layout)
    devcluster.up(layout)
    started = time.monotonic()
    try:
        out = run(
            layout.kubeconfig,
            profile=args.profile,
            work=args.only or WORK,
            generator=args.generator,
        )
    finally:
        if not cluster_was_up and os.environ.get("MEMWARDEN_KEEP_CLUSTER") != "1":
            devcluster.down(layout)
    idle, busy = out["idle"], out["busy"]
    ratio = round(busy["p99_ms"] / idle["p99_ms"], 2)
    during = busy["during"]
    ran = {
        "uploads stored": during["uploads_stored"],
        "incidents collected": during["incidents_collected"],
        "bundles swept": during["bundles_swept"],
        "risk cycles": during["risk_cycles"],
    }
    failures = [f"{what}: none during the busy phase" for what, n in ran.items() if n <= 0]
    failures += [
        f"{name}: {row['errors']} reviews failed ({row['error_samples']})"
        for name, row in (("idle", idle), ("busy", busy))
        if row["errors"]
    ]
    if ratio > MAX_P99_RATIO:
        failures.append(f"busy p99 {busy['p99_ms']} ms is {ratio}x idle ({idle['p99_ms']} ms)")
    result = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "commit": git_commit(),
        "seconds": round(time.monotonic() - started, 1),
        "setup": {
            "rate_per_s": RATE,
            "seconds_per_phase": SECONDS,
            "risk": f"{RISK_NAMESPACES} namespaces x {RISK_PODS_PER_NAMESPACE} pods, "
            f"every {RISK_INTERVAL_S} s",
            "retention": f"every {RETENTION_INTERVAL_S} s; {PREFILL_KEPT} kept + "
            f"{PREFILL_EXPIRED} expired bundles, {EXPIRED_PER_S} more expired per second",
            "captures": f"one every {UPLOAD_EVERY_S:g} s at most, bundle of {ARTIFACTS}",
        },
        **out,
        "p99_ratio": ratio,
        "max_p99_ratio": MAX_P99_RATIO,
        "failures": failures,
    }
    Path(args.out).parent.mkdir(exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(
        f"\np99 busy/idle: {ratio}x (limit {MAX_P99_RATIO}x); p50 {idle['p50_ms']} -> "
        f"{busy['p50_ms']} ms, p99 {idle['p99_ms']} -> {busy['p99_ms']} ms; "
        f"idle again p99 {out['idle_after']['p99_ms']} ms"
    )
    print("during the busy phase: " + ", ".join(f"{k} {v}" for k, v in ran.items()))
    for failure in failures:
        print(f"FAIL {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
