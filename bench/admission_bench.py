"""Benchmark: the admission webhook, on the real local control plane, beside VPA's.

Two mutating webhooks run side by side on the same local control plane: memwarden's
(``memwarden run``, as the tests start it) and the VPA admission-controller v1.8.1 (built
by ``hack/vpa/build.sh``), each scoped to its own namespace; a third namespace is
excluded from both.

1. Pod-create latency through the real API server (server-side dry run, which still calls
   mutating webhooks): memwarden's namespace, VPA's and the excluded one, interleaved in
   one loop; p50/p90/p99 of each, their ratios to the excluded namespace, and how many
   pods each webhook really mutated (memwarden: limits set; VPA: requests set to the
   recommendation of a VerticalPodAutoscaler whose target Deployment owns the pod).
2. Each webhook's own throughput over HTTPS, driven by vegeta (``hack/vegeta/build.sh``;
   the generator is Go so that it is not the bottleneck) over HTTP/1.1, as the API server
   calls a webhook service: complete AdmissionReviews at escalating offered rates until
   the webhook breaks (success < 99 % or p99 > 3 s) or saturates (throughput under 90 %
   of the offered rate), and one step past that. Every reply is decoded and counted as
   mutated if it is a 200 carrying a patch for one of the reviews sent.

    .venv/bin/python bench/admission_bench.py      # writes bench/results/admission.json

The generator, both webhooks and the control plane share the machine's cores: the JSON
records the CPU each used and the busiest other processes during the run.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import platform
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "hack")]

import devcluster  # noqa: E402
import yaml  # noqa: E402
from kubernetes import client  # noqa: E402
from kubernetes.utils.quantity import parse_quantity  # noqa: E402

from memwarden.webhook.manifests import OPT_OUT_LABEL, POD_HANDLER_ID  # noqa: E402
from memwarden_testing.builders import make_container, make_policy, make_policy_spec  # noqa: E402
from memwarden_testing.cluster import (  # noqa: E402
    api_client,
    child_pids,
    delete_namespaces,
    ensure_namespace,
    kubectl,
    stop_process_group,
    wait_for,
)
from memwarden_testing.operator import OPERATOR_NAMESPACE, OperatorProcess, free_port  # noqa: E402
from memwarden_testing.tls import loopback_certificates  # noqa: E402

VPA_BUILD = REPO / "hack" / "vpa" / "build.sh"
VEGETA_BUILD = REPO / "hack" / "vegeta" / "build.sh"

NS_MEMWARDEN = "bench-admission"
NS_VPA = "bench-vpa"
NS_NONE = "bench-excluded"
OWNER = "checkout"  # the Deployment in each namespace whose ReplicaSet owns the pods
LABELS = {"app": "checkout"}
RECOMMENDATION = {"cpu": "250m", "memory": "300Mi"}
VPA_CRDS = ("verticalpodautoscalers", "verticalpodautoscalercheckpoints")

POD_CREATES = 300  # per namespace and round
#: Rounds of the interleaved creates, each starting with another namespace: one round's
#: ratio swings by more than the difference between the webhooks on this machine.
ROUNDS = 3
RATES = (250, 500, 1000, 2000, 4000, 8000, 16000)
SECONDS_PER_RATE = 5
UNIQUE_REVIEWS = 2000  # distinct uids; vegeta sends them round-robin
VEGETA_MAX_WORKERS = 1000  # in-flight requests at most (one goroutine each)
VEGETA_TIMEOUT_S = 10
BREAK_SUCCESS = 0.99
BREAK_P99_S = 3.0
SATURATED_FRACTION = 0.9

CLK_TCK = os.sysconf("SC_CLK_TCK")
#: The processes this run started, by pid, named as the CPU reports show them.
OURS: dict[int, str] = {}


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 2)


def build(script: Path) -> Path:
    """Run a cached build script (idempotent); returns the path it prints."""
    out = subprocess.run(["bash", str(script)], check=True, stdout=subprocess.PIPE, text=True)
    return Path(out.stdout.strip().splitlines()[-1])


def module_version(go_mod: Path, module: str) -> str:
    for line in go_mod.read_text().splitlines():
        fields = line.split()  # "require m v", "\tm v // indirect", not "tool m"
        if module in fields[:2] and fields[0] != "tool":
            return fields[fields.index(module) + 1]
    raise SystemExit(f"{module} not in {go_mod}")


# --- processes and CPU --------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a live process (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_snapshot() -> dict[int, tuple[str, float]]:
    """Every process: its command line (shortened) and CPU seconds so far."""
    snapshot: dict[int, tuple[str, float]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode().strip()
            snapshot[int(entry.name)] = (cmdline[:100], cpu_seconds(int(entry.name)))
    return snapshot


def busiest(
    before: dict[int, tuple[str, float]],
    after: dict[int, tuple[str, float]],
    wall: float,
    *,
    top: int = 8,
    exclude: frozenset[int] = frozenset(),
) -> list[dict[str, Any]]:
    """The processes that used most CPU between two snapshots (alive at both)."""
    used = sorted(
        (
            (total - before[pid][1], pid, cmd)
            for pid, (cmd, total) in after.items()
            if pid in before and pid not in exclude
        ),
        reverse=True,
    )
    return [
        {
            "pid": pid,
            "cmd": OURS.get(pid, cmd),
            "cpu_s": round(cpu, 1),
            "cores": round(cpu / wall, 2),
        }
        for cpu, pid, cmd in used[:top]
        if cpu / wall >= 0.02
    ]


def machine_busy() -> float:
    """CPU seconds all cores spent not idle since boot (/proc/stat, kernel time included)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:9]]
    return (sum(fields) - fields[3] - fields[4]) / CLK_TCK


class CpuWatch:
    """How busy the machine was over an interval, and which other processes made it so."""

    def __init__(self, *ours: int) -> None:
        self.exclude = frozenset({os.getpid(), *ours})
        self.started = time.perf_counter()
        self.busy = machine_busy()
        self.snapshot = cpu_snapshot()

    def stop(self) -> dict[str, Any]:
        wall = time.perf_counter() - self.started
        return {
            "machine_busy_cores": round((machine_busy() - self.busy) / wall, 2),
            "other_processes": busiest(
                self.snapshot, cpu_snapshot(), wall, top=4, exclude=self.exclude
            ),
        }


def tls_files(workdir: Path) -> Path:
    """A CA and a serving certificate for 127.0.0.1 (as OperatorProcess makes them)."""
    loopback_certificates(
        ca_name="bench-webhook-ca",
        ca_file=workdir / "ca.crt",
        cert_file=workdir / "tls.crt",
        key_file=workdir / "tls.key",
    )
    return workdir / "ca.crt"


@dataclass
class VpaProcess:
    """VPA's admission-controller on a loopback port, its VPA objects in one namespace."""

    binary: Path
    kubeconfig: Path
    workdir: Path
    port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def webhook_name(self) -> str:
        return f"memwarden-bench-vpa-{self.port}"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/"

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        ca = tls_files(self.workdir)
        log = (self.workdir / "vpa.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(self.binary),
                f"--kubeconfig={self.kubeconfig}",
                f"--client-ca-file={ca}",
                f"--tls-cert-file={self.workdir / 'tls.crt'}",
                f"--tls-private-key={self.workdir / 'tls.key'}",
                f"--port={self.port}",  # served on 127.0.0.1 (see hack/vpa/build.sh)
                f"--address=127.0.0.1:{free_port()}",  # its metrics
                "--register-webhook=false",  # registered below, scoped to one namespace
                f"--vpa-object-namespace={NS_VPA}",
                f"--status-lease-namespace={NS_VPA}",
                "--v=1",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )

    def register_webhook(self) -> None:
        """VPA's own registration, minus the VPA-object rule, for ``NS_VPA`` only: with an
        empty --ignored-vpa-object-namespaces its self-registration matches every one."""
        config = {
            "apiVersion": "admissionregistration.k8s.io/v1",
            "kind": "MutatingWebhookConfiguration",
            "metadata": {"name": self.webhook_name},
            "webhooks": [
                {
                    "name": "vpa.k8s.io",
                    "admissionReviewVersions": ["v1"],
                    "sideEffects": "None",
                    "failurePolicy": "Ignore",  # VPA's default
                    "timeoutSeconds": 30,  # VPA's default --webhook-timeout-seconds
                    "reinvocationPolicy": "Never",
                    "matchPolicy": "Equivalent",
                    "clientConfig": {
                        "url": self.url,
                        "caBundle": base64.b64encode(
                            (self.workdir / "ca.crt").read_bytes()
                        ).decode(),
                    },
                    "rules": [
                        {
                            "apiGroups": [""],
                            "apiVersions": ["v1"],
                            "operations": ["CREATE"],
                            "resources": ["pods"],
                            "scope": "Namespaced",
                        }
                    ],
                    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": NS_VPA}},
                }
            ],
        }
        kubectl(self.kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(config))

    def alive(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            tail = (self.workdir / "vpa.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"VPA admission-controller exited:\n{tail}")
        return True

    def stop(self) -> None:
        stop_process_group(self.process)


# --- objects ------------------------------------------------------------------------


def deployment_owner(kube: client.ApiClient, namespace: str) -> dict[str, Any]:
    """A Deployment with no replicas; returns an ownerReference to its ReplicaSet, which
    is what a Deployment's pods carry (VPA finds a pod's VPA through it)."""
    apps = client.AppsV1Api(kube)
    apps.create_namespaced_deployment(
        namespace,
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": OWNER},
            "spec": {
                "replicas": 0,
                "selector": {"matchLabels": LABELS},
                "template": {
                    "metadata": {"labels": LABELS},
                    "spec": {"containers": [make_container()]},
                },
            },
        },
    )
    replica_set = wait_for(
        lambda: next(iter(apps.list_namespaced_replica_set(namespace).items), None),
        timeout=60,
        what=f"the ReplicaSet of Deployment {namespace}/{OWNER}",
    )
    return {
        "apiVersion": "apps/v1",
        "kind": "ReplicaSet",
        "name": replica_set.metadata.name,
        "uid": replica_set.metadata.uid,
        "controller": True,
        "blockOwnerDeletion": True,
    }


def fresh_namespace(
    core: client.CoreV1Api, kubeconfig: Path, name: str, labels: dict[str, str] | None = None
) -> None:
    """``name``, new: what an interrupted earlier run left there is deleted first."""
    delete_namespaces(kubeconfig, name)
    ensure_namespace(core, name, labels=labels)


def install_vpa(kubeconfig: Path, crds: Path) -> None:
    """VPA's CRDs (from its module) and a VPA with a recommendation for OWNER's pods."""
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(crds))
    for crd in VPA_CRDS:
        kubectl(
            kubeconfig,
            "wait",
            "--for=condition=Established",
            f"crd/{crd}.autoscaling.k8s.io",
            "--timeout=60s",
        )
    vpa = {
        "apiVersion": "autoscaling.k8s.io/v1",
        "kind": "VerticalPodAutoscaler",
        "metadata": {"name": OWNER, "namespace": NS_VPA},
        "spec": {
            "targetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": OWNER},
            "updatePolicy": {"updateMode": "Initial"},
        },
    }
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(vpa))
    status = {
        "status": {
            "recommendation": {
                "containerRecommendations": [
                    {
                        "containerName": "app",
                        "target": RECOMMENDATION,
                        "lowerBound": RECOMMENDATION,
                        "upperBound": RECOMMENDATION,
                        "uncappedTarget": RECOMMENDATION,
                    }
                ]
            }
        }
    }
    kubectl(
        kubeconfig,
        "patch",
        "verticalpodautoscaler",
        OWNER,
        f"--namespace={NS_VPA}",
        "--subresource=status",
        "--type=merge",
        f"--patch={json.dumps(status)}",
    )


def make_pod(name: str, namespace: str, owner: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": LABELS,
            "ownerReferences": [owner],
        },
        "spec": {"containers": [make_container(env={"LOG": "info"})]},
    }


def review(pod: dict[str, Any], uid: str | None = None) -> dict[str, Any]:
    """A complete AdmissionReview, as the API server sends one for a pod create (VPA's
    webhook dereferences ``requestKind`` and crashes on a review without it)."""
    gvk = {"group": "", "version": "v1", "kind": "Pod"}
    gvr = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": uid or str(uuid.uuid4()),
            "kind": gvk,
            "resource": gvr,
            "requestKind": gvk,
            "requestResource": gvr,
            "name": pod["metadata"]["name"],
            "namespace": pod["metadata"]["namespace"],
            "operation": "CREATE",
            "userInfo": {"username": "bench", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


# --- checks -------------------------------------------------------------------------


def quantities(values: dict[str, Any] | None) -> dict[str, Any]:
    return {k: parse_quantity(v) for k, v in (values or {}).items()}


def memwarden_mutated(pod: Any) -> bool:
    return bool(pod.spec.containers[0].resources.limits)


def vpa_mutated(pod: Any) -> bool:
    return quantities(pod.spec.containers[0].resources.requests) == quantities(RECOMMENDATION)


def untouched(pod: Any) -> bool:
    container = pod.spec.containers[0]
    annotations = pod.metadata.annotations or {}
    return (
        not container.resources.requests
        and not container.resources.limits
        and [e.name for e in container.env or []] == ["LOG"]
        and not any(key.startswith("vpa") for key in annotations)
    )


def post_review(url: str, ca: Path, body: dict[str, Any]) -> dict[str, Any]:
    request = urllib.request.Request(
        url,
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    context = ssl.create_default_context(cafile=str(ca))
    with urllib.request.urlopen(request, context=context, timeout=10) as response:
        reply: dict[str, Any] = json.loads(response.read())
    return reply


def alpn(port: int, ca: Path) -> str | None:
    """The protocol a client offering h2 and http/1.1 gets (the API server offers both to
    a webhook on a loopback URL, so the pod creates here may use h2 with VPA)."""
    context = ssl.create_default_context(cafile=str(ca))
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.selected_alpn_protocol() or "http/1.1"


def sample_reply(url: str, ca: Path, pod: dict[str, Any]) -> dict[str, Any]:
    """One review and its reply's patch, decoded: the proof that the webhook mutates."""
    sent = review(pod)
    reply = post_review(url, ca, sent)["response"]
    patch = json.loads(base64.b64decode(reply["patch"])) if reply.get("patch") else []
    return {
        "uid_echoed": reply.get("uid") == sent["request"]["uid"],
        "allowed": reply.get("allowed"),
        "patch_type": reply.get("patchType"),
        "patch_ops": len(patch),
        "patch_paths": sorted({op["path"] for op in patch})[:12],
    }


# --- 1. pod creates through the API server ------------------------------------------


def webhook_calls(kubeconfig: Path) -> dict[str, tuple[float, int]]:
    """Seconds and calls of each mutating webhook on pod creates, as the API server
    counts them (``apiserver_admission_webhook_admission_duration_seconds``): the
    webhook's share of a create without the client's or etcd's."""
    calls: dict[str, list[float]] = {}
    metrics = kubectl(kubeconfig, "get", "--raw", "/metrics").stdout
    for line in metrics.splitlines():
        for suffix, at in (("_sum{", 0), ("_count{", 1)):
            head = f"apiserver_admission_webhook_admission_duration_seconds{suffix}"
            if line.startswith(head) and 'type="admit"' in line and "CREATE" in line:
                name = line.split('name="', 1)[1].split('"', 1)[0]
                calls.setdefault(name, [0.0, 0.0])[at] += float(line.rsplit(" ", 1)[1])
    return {name: (total, int(count)) for name, (total, count) in calls.items()}


def webhook_means(
    before: dict[str, tuple[float, int]], after: dict[str, tuple[float, int]]
) -> dict[str, dict[str, float]]:
    """Per webhook: calls between two ``webhook_calls`` and their mean in ms."""
    means = {}
    for name, (total, count) in after.items():
        total_before, count_before = before.get(name, (0.0, 0))
        if count > count_before:
            calls = count - count_before
            means[name] = {"calls": calls, "mean_ms": ms((total - total_before) / calls)}
    return means


def clear_foreign_webhooks(kubeconfig: Path) -> list[str]:
    """No other mutating webhook may see the measured creates: remove the registrations an
    interrupted run left (``memwarden-test-*`` whose port no longer answers: the API server
    still calls them, and each failed call, ignored by ``failurePolicy``, lands on the
    namespace it watched; one such leftover inflated memwarden's ratio by ~0.1), and stop
    on any other. Returns what was removed."""
    listed = json.loads(
        kubectl(kubeconfig, "get", "mutatingwebhookconfigurations", "-o", "json").stdout
    )
    removed = []
    for config in listed["items"]:
        name = config["metadata"]["name"]
        urls = [w["clientConfig"].get("url") or "" for w in config.get("webhooks") or []]
        ports = [int(u.split(":")[2].split("/")[0]) for u in urls if u.count(":") == 2]
        dead = (
            name.startswith("memwarden-test-")
            and ports
            and not any(_listening(port) for port in ports)
        )
        if not dead:
            raise SystemExit(f"another mutating webhook is registered: {name} ({urls}); remove it")
        kubectl(kubeconfig, "delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")
        removed.append(name)
    return removed


def _listening(port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=1):
        return True
    return False


def pod_create_latency(kube: client.ApiClient, owners: dict[str, dict[str, Any]]) -> dict[str, Any]:
    core = client.CoreV1Api(kube)
    checks: dict[str, Callable[[Any], bool]] = {
        NS_MEMWARDEN: memwarden_mutated,
        NS_VPA: vpa_mutated,
        NS_NONE: untouched,
    }
    order = [NS_MEMWARDEN, NS_VPA, NS_NONE]
    times: dict[str, list[float]] = {ns: [] for ns in order}
    by_round: list[dict[str, list[float]]] = []
    passed = dict.fromkeys(order, 0)
    foreign = dict.fromkeys(order, 0)  # the other webhook's mark on the pod
    for i in range(POD_CREATES * len(order) * ROUNDS):
        round_, step = divmod(i, POD_CREATES * len(order))
        if step == 0:
            by_round.append({ns: [] for ns in order})
        namespace = order[(step + round_) % len(order)]
        pod = make_pod(f"p{i}", namespace, owners[namespace])
        del pod["metadata"]["namespace"]
        started = time.perf_counter()
        created = core.create_namespaced_pod(namespace, pod, dry_run="All")
        times[namespace].append(time.perf_counter() - started)
        by_round[-1][namespace].append(times[namespace][-1])
        passed[namespace] += checks[namespace](created)
        if namespace == NS_MEMWARDEN:
            foreign[namespace] += any(
                key.startswith("vpa") for key in created.metadata.annotations or {}
            )
        elif namespace == NS_VPA:
            foreign[namespace] += memwarden_mutated(created) or any(
                e.name != "LOG" for e in created.spec.containers[0].env or []
            )

    def summary(namespace: str) -> dict[str, Any]:
        values = times[namespace]
        return {
            "p50_ms": ms(statistics.median(values)),
            "p90_ms": ms(percentile(values, 0.9)),
            "p99_ms": ms(percentile(values, 0.99)),
            "mean_ms": ms(statistics.fmean(values)),
        }

    rows = {name: summary(ns) for name, ns in (("memwarden", NS_MEMWARDEN), ("vpa", NS_VPA))}
    none = summary(NS_NONE)
    for row in rows.values():
        for q in ("p50", "p90", "p99"):
            row[f"ratio_{q}"] = round(row[f"{q}_ms"] / none[f"{q}_ms"], 2)
    rows["memwarden"]["mutated"] = passed[NS_MEMWARDEN]
    rows["memwarden"]["touched_by_vpa"] = foreign[NS_MEMWARDEN]
    rows["vpa"]["mutated"] = passed[NS_VPA]
    rows["vpa"]["touched_by_memwarden"] = foreign[NS_VPA]
    none["untouched"] = passed[NS_NONE]
    rounds = [
        {
            f"{name}_ratio_p50": round(
                statistics.median(values[ns]) / statistics.median(values[NS_NONE]), 2
            )
            for name, ns in (("memwarden", NS_MEMWARDEN), ("vpa", NS_VPA))
        }
        for values in by_round
    ]
    return {
        "pods_each": POD_CREATES * ROUNDS,
        "rounds": rounds,
        "rounds_memwarden_not_worse": sum(
            r["memwarden_ratio_p50"] <= r["vpa_ratio_p50"] for r in rounds
        ),
        # the keys of earlier runs (memwarden versus the excluded namespace)
        "with_webhook_p50_ms": rows["memwarden"]["p50_ms"],
        "with_webhook_p99_ms": rows["memwarden"]["p99_ms"],
        "without_p50_ms": none["p50_ms"],
        "without_p99_ms": none["p99_ms"],
        "ratio_p50": rows["memwarden"]["ratio_p50"],
        "mutated_with_webhook": passed[NS_MEMWARDEN],
        "memwarden": rows["memwarden"],
        "vpa": rows["vpa"],
        "none": none,
    }


# --- 2. direct throughput, vegeta ---------------------------------------------------


def write_targets(path: Path, url: str, pods: Iterator[dict[str, Any]]) -> set[str]:
    """vegeta's JSON target format, one complete review per line; returns their uids."""
    uids = set()
    with path.open("w") as out:
        for pod in pods:
            body = review(pod)
            uids.add(body["request"]["uid"])
            target = {
                "method": "POST",
                "url": url,
                "body": base64.b64encode(json.dumps(body).encode()).decode(),
                "header": {"Content-Type": ["application/json"]},
            }
            out.write(json.dumps(target) + "\n")
    return uids


def vegeta_step(
    vegeta: Path,
    *,
    targets: Path,
    uids: set[str],
    ca: Path,
    rate: int,
    webhook_pid: int,
    workdir: Path,
) -> dict[str, Any]:
    results = workdir / f"results-{rate}.bin"
    cpu_before = cpu_seconds(webhook_pid)
    watch = CpuWatch(webhook_pid)
    children_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run(
        [
            str(vegeta),
            "attack",
            "-format=json",
            f"-targets={targets}",
            f"-rate={rate}/1s",
            f"-duration={SECONDS_PER_RATE}s",
            f"-timeout={VEGETA_TIMEOUT_S}s",
            f"-root-certs={ca}",
            f"-max-workers={VEGETA_MAX_WORKERS}",
            # HTTP/1.1, as the API server calls a webhook registered by service (k8s.io/
            # apiserver pkg/util/webhook: it forces http/1.1 but for loopback URLs).
            "-http2=false",
            f"-output={results}",
        ],
        check=True,
    )
    wall = time.perf_counter() - started
    children_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    webhook_cpu = cpu_seconds(webhook_pid) - cpu_before
    machine = watch.stop()
    generator_cpu = (children_after.ru_utime - children_before.ru_utime) + (
        children_after.ru_stime - children_before.ru_stime
    )
    report = json.loads(
        subprocess.run(
            [str(vegeta), "report", "-type=json", str(results)],
            check=True,
            stdout=subprocess.PIPE,
        ).stdout
    )
    mutated = 0
    encoded = subprocess.Popen(
        [str(vegeta), "encode", "-to=json", str(results)], stdout=subprocess.PIPE
    )
    assert encoded.stdout is not None
    for line in encoded.stdout:
        result = json.loads(line)
        if result.get("code") != 200 or not result.get("body"):
            continue
        with contextlib.suppress(ValueError, KeyError, TypeError):
            reply = json.loads(base64.b64decode(result["body"]))["response"]
            mutated += bool(reply.get("patch")) and reply.get("uid") in uids
    encoded.wait()
    results.unlink()

    latencies = report["latencies"]
    success = float(report["success"])
    p99_s = latencies["99th"] / 1e9
    throughput = float(report["throughput"])
    if success < BREAK_SUCCESS or p99_s > BREAK_P99_S:
        verdict = "broken"
    elif throughput < SATURATED_FRACTION * rate:
        verdict = "saturated"
    else:
        verdict = "ok"
    codes = report.get("status_codes") or {}
    return {
        "offered_per_s": rate,
        "sent_per_s": round(float(report["rate"]), 1),
        "achieved_per_s": round(throughput, 1),
        "requests": report["requests"],
        "success_ratio": round(success, 4),
        "errors": report["requests"] - int(codes.get("200", 0)),
        "mutated": mutated,
        "status_codes": codes,
        "error_samples": (report.get("errors") or [])[:3],
        "p50_ms": round(latencies["50th"] / 1e6, 2),
        "p90_ms": round(latencies["90th"] / 1e6, 2),
        "p99_ms": round(latencies["99th"] / 1e6, 2),
        "max_ms": round(latencies["max"] / 1e6, 2),
        "webhook_cores": round(webhook_cpu / wall, 2),
        # what a review costs the webhook, whatever the machine's other load
        "webhook_cpu_ms_per_review": round(webhook_cpu * 1000 / max(1, report["requests"]), 3),
        "generator_cores": round(generator_cpu / wall, 2),
        "webhook_rss_mib": rss_mib(webhook_pid),
        **machine,
        "verdict": verdict,
    }


def escalate(
    vegeta: Path,
    *,
    name: str,
    url: str,
    ca: Path,
    pods: Iterator[dict[str, Any]],
    webhook_pid: int,
    alive: Callable[[], bool],
    workdir: Path,
) -> list[dict[str, Any]]:
    """Rates in turn until one step past the first that is not ``ok``."""
    targets = workdir / f"targets-{name}.json"
    uids = write_targets(targets, url, pods)
    rows: list[dict[str, Any]] = []
    for rate in RATES:
        alive()
        row = vegeta_step(
            vegeta,
            targets=targets,
            uids=uids,
            ca=ca,
            rate=rate,
            webhook_pid=webhook_pid,
            workdir=workdir,
        )
        rows.append(row)
        print(
            f"  {name:9} {rate:>6}/s offered: {row['achieved_per_s']:>8}/s ok, "
            f"success {row['success_ratio']:.2%}, p99 {row['p99_ms']} ms, "
            f"webhook {row['webhook_cores']} cores, vegeta {row['generator_cores']}, "
            f"machine {row['machine_busy_cores']} -> {row['verdict']}",
            flush=True,
        )
        time.sleep(2)  # let the last stragglers and the server's backlog drain
        if sum(r["verdict"] != "ok" for r in rows) >= 2:
            break
    return rows


# --- main ---------------------------------------------------------------------------


def git_state() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(REPO), *args], capture_output=True, text=True, check=False
        ).stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "operator_changes_uncommitted": bool(git("status", "--porcelain", "--", "operator")),
    }


def print_tables(out: dict[str, Any]) -> None:
    pods = out["pod_create"]
    print(f"\npod create via the API server (dry run), {pods['pods_each']} each, interleaved")
    print(
        f"{'':10} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} "
        f"{'x p50':>6} {'x p90':>6} {'x p99':>6} {'mutated':>8}"
    )
    for name in ("memwarden", "vpa", "none"):
        row = pods[name]
        ratios = (
            [f"{row[f'ratio_{q}']:>6}" for q in ("p50", "p90", "p99")]
            if name != "none"
            else [f"{'1':>6}"] * 3
        )
        check = row.get("mutated", row.get("untouched"))
        print(
            f"{name:10} {row['p50_ms']:>8} {row['p90_ms']:>8} {row['p99_ms']:>8} "
            f"{' '.join(ratios)} {check:>4}/{pods['pods_each']}"
        )

    for number, row in enumerate(pods.get("rounds", []), 1):
        print(
            f"round {number}: p50 ratio memwarden {row['memwarden_ratio_p50']}x, "
            f"VPA {row['vpa_ratio_p50']}x"
        )
    for name, row in pods.get("apiserver_webhook", {}).items():
        print(f"as the API server timed it: {name} {row['mean_ms']} ms mean over {row['calls']}")
    for name, sample in out["sample_replies"].items():
        print(
            f"sample reply, {name}: {sample['patch_ops']} JSONPatch ops "
            f"({', '.join(sample['patch_paths'][:4])}), uid echoed: {sample['uid_echoed']}"
        )
    machine = pods["machine"]
    print(f"machine busy {machine['machine_busy_cores']} cores; {others(machine)}")

    print(f"\ndirect webhook, vegeta, {SECONDS_PER_RATE} s per offered rate")
    head = (
        f"{'achieved':>8} {'ok %':>5} {'p50':>7} {'p90':>7} {'p99':>8} {'hook/gen/mach':>14} {'':3}"
    )
    width = len(head)
    print(f"{'':>7} | {'memwarden':^{width}} | {'VPA':^{width}}")
    print(f"{'offered':>7} | {head} | {head}")
    by_rate = {
        name: {row["offered_per_s"]: row for row in out[key]}
        for name, key in (("memwarden", "webhook_direct"), ("vpa", "vpa_webhook_direct"))
    }
    for rate in RATES:
        if not any(rate in rows for rows in by_rate.values()):
            continue
        cells = []
        for name in ("memwarden", "vpa"):
            row = by_rate[name].get(rate)
            if row is None:
                cells.append(" " * width)
                continue
            cores = f"{row['webhook_cores']}/{row['generator_cores']}/{row['machine_busy_cores']}"
            mark = {"ok": "", "saturated": "sat", "broken": "BRK"}[row["verdict"]]
            cells.append(
                f"{row['achieved_per_s']:>8} {row['success_ratio'] * 100:>5.1f} "
                f"{row['p50_ms']:>7} {row['p90_ms']:>7} {row['p99_ms']:>8} {cores:>14} {mark:3}"
            )
        print(f"{rate:>7} | {cells[0]} | {cells[1]}")
    print(
        "achieved = 200s per second; latencies in ms; cores used by the webhook / vegeta /"
        " the whole machine;\nsat = under 90 % of the offered rate, BRK = success < 99 % or"
        " p99 > 3 s"
    )
    for name, key in (("memwarden", "webhook_direct"), ("VPA", "vpa_webhook_direct")):
        costs = [f"{row['webhook_cpu_ms_per_review']}" for row in out[key]]
        print(f"{name}: webhook CPU ms per review, by step: {' '.join(costs)}")
    for name, key in (("memwarden", "webhook_direct"), ("VPA", "vpa_webhook_direct")):
        busy = [f"{row['offered_per_s']}/s: {others(row)}" for row in out[key]]
        print(f"{name}: other processes: " + "; ".join(busy))


def short(cmd: str) -> str:
    """``kube-apiserver``, ``python -m pytest``: a command line's first words."""
    if cmd.startswith("[this bench]"):
        return cmd
    words = [w.rsplit("/", 1)[-1] for w in cmd.split()] or ["?"]
    return " ".join(words[:3] if words[0].startswith("python") else words[:1])


def others(measure: dict[str, Any]) -> str:
    rows = measure["other_processes"]
    return ", ".join(f"{short(r['cmd'])} {r['cores']}" for r in rows) or "none"


def main() -> None:
    layout = devcluster.default_layout()
    # As the tests do: a cluster this started is stopped at the end, unless
    # MEMWARDEN_KEEP_CLUSTER=1.
    cluster_was_up = (layout.pki / "done").exists() and devcluster._readyz(layout)
    measured = git_state()  # the code the operator is started from, not what it is later
    vpa_binary = build(VPA_BUILD)
    vegeta = build(VEGETA_BUILD)
    versions = {
        "vpa": module_version(
            VPA_BUILD.parent / "go.mod", "k8s.io/autoscaler/vertical-pod-autoscaler"
        ),
        "vegeta": module_version(VEGETA_BUILD.parent / "go.mod", "github.com/tsenart/vegeta/v12"),
    }
    devcluster.up(layout)
    kubeconfig = layout.kubeconfig
    idle = CpuWatch()
    time.sleep(3)
    before = idle.stop()
    print(f"before the run, machine busy {before['machine_busy_cores']} cores: {others(before)}")
    snapshot_before, started, load_before = cpu_snapshot(), time.monotonic(), os.getloadavg()
    try:
        out = run(kubeconfig, vpa_binary=vpa_binary, vegeta=vegeta)
    finally:
        if not cluster_was_up and os.environ.get("MEMWARDEN_KEEP_CLUSTER") != "1":
            devcluster.down(layout)
    wall = time.monotonic() - started
    out = {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        **measured,
        "versions": versions,
        "generator": {
            "tool": f"vegeta {versions['vegeta']}",
            "seconds_per_rate": SECONDS_PER_RATE,
            "unique_reviews": UNIQUE_REVIEWS,
            "max_workers": VEGETA_MAX_WORKERS,
            "protocol": "http/1.1 (-http2=false), one connection per in-flight request",
            "timeout_s": VEGETA_TIMEOUT_S,
            "break_when": f"success < {BREAK_SUCCESS:.0%} or p99 > {BREAK_P99_S:g} s",
            "saturated_when": f"throughput < {SATURATED_FRACTION:.0%} of offered",
        },
        **out,
        "machine_load": {
            "before_run": before,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
            "busiest_processes": busiest(snapshot_before, cpu_snapshot(), wall),
        },
    }
    print_tables(out)
    print("busiest processes during the run (CPU seconds):")
    for row in out["machine_load"]["busiest_processes"][:5]:
        print(f"  {row['cpu_s']:>7} s  {row['cmd'][:90]}")
    (HERE / "results").mkdir(exist_ok=True)
    (HERE / "results" / "admission.json").write_text(json.dumps(out, indent=2) + "\n")


def run(kubeconfig: Path, *, vpa_binary: Path, vegeta: Path) -> dict[str, Any]:
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    kube = api_client(kubeconfig)
    core = client.CoreV1Api(kube)
    namespaces = (NS_MEMWARDEN, NS_VPA, NS_NONE)
    webhooks: list[str] = []
    removed = clear_foreign_webhooks(kubeconfig)
    if removed:
        print(f"removed webhook registrations an interrupted run left: {removed}", flush=True)
    try:
        ensure_namespace(core, OPERATOR_NAMESPACE)
        fresh_namespace(core, kubeconfig, NS_MEMWARDEN)
        # memwarden's webhook skips both others; VPA's is registered for NS_VPA only.
        fresh_namespace(core, kubeconfig, NS_VPA, labels={OPT_OUT_LABEL: "true"})
        fresh_namespace(core, kubeconfig, NS_NONE, labels={OPT_OUT_LABEL: "true"})
        for namespace in (NS_MEMWARDEN, NS_NONE):
            policy = make_policy(
                namespace=namespace,
                spec=make_policy_spec(
                    memory={"request": "512Mi", "limit": "1Gi"}, go={"memoryLimit": "90%"}
                ),
            )
            kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(policy))
        owners = {namespace: deployment_owner(kube, namespace) for namespace in namespaces}
        install_vpa(kubeconfig, vpa_binary.parent / "vpa-v1-crd-gen.yaml")

        with tempfile.TemporaryDirectory() as tmp:
            workdir = Path(tmp)
            operator = OperatorProcess(kubeconfig=kubeconfig, workdir=workdir / "memwarden")
            operator.workdir.mkdir()
            vpa = VpaProcess(
                binary=vpa_binary, kubeconfig=kubeconfig, workdir=workdir / "vpa", port=free_port()
            )
            try:
                memwarden_ca = workdir / "memwarden" / "ca.crt"
                memwarden_ca.write_bytes(operator.make_certificates())
                operator.start()
                webhooks.append(operator.webhook_name)
                operator.register_webhook(memwarden_ca.read_bytes())
                vpa.start()
                webhooks.append(vpa.webhook_name)
                vpa.register_webhook()

                def creates(namespace: str, check: Callable[[Any], bool]) -> bool:
                    pod = make_pod("probe", namespace, owners[namespace])
                    return check(core.create_namespaced_pod(namespace, pod, dry_run="All"))

                wait_for(
                    lambda: creates(NS_MEMWARDEN, memwarden_mutated),
                    timeout=60,
                    what="memwarden's webhook mutating pods",
                )
                wait_for(
                    lambda: vpa.alive() and creates(NS_VPA, vpa_mutated),
                    timeout=90,
                    what="VPA's webhook setting the recommended requests",
                )
                memwarden_url = f"https://127.0.0.1:{operator.webhook_port}/{POD_HANDLER_ID}"
                samples = {
                    "memwarden": sample_reply(
                        memwarden_url,
                        memwarden_ca,
                        make_pod("sample", NS_MEMWARDEN, owners[NS_MEMWARDEN]),
                    ),
                    "vpa": sample_reply(
                        vpa.url,
                        workdir / "vpa" / "ca.crt",
                        make_pod("sample", NS_VPA, owners[NS_VPA]),
                    ),
                }
                protocols = {
                    "memwarden": alpn(operator.webhook_port, memwarden_ca),
                    "vpa": alpn(vpa.port, workdir / "vpa" / "ca.crt"),
                }
                for name, sample in samples.items():
                    if not sample["patch_ops"]:
                        raise SystemExit(f"{name}'s webhook returned no patch: {sample}")

                assert operator.process is not None and vpa.process is not None
                # The webhook answers from the operator's admission worker when it has one.
                workers = child_pids(operator.process.pid, b"memwarden.webhook.worker")
                memwarden_pid = workers[0] if workers else operator.process.pid
                OURS[operator.process.pid] = "[this bench] memwarden"
                OURS[memwarden_pid] = "[this bench] memwarden (webhook)"
                OURS[vpa.process.pid] = "[this bench] vpa admission-controller"
                print("pod creates through the API server ...", flush=True)
                watch = CpuWatch(operator.process.pid, memwarden_pid, vpa.process.pid)
                calls_before = webhook_calls(kubeconfig)
                through_api = pod_create_latency(kube, owners)
                through_api["apiserver_webhook"] = webhook_means(
                    calls_before, webhook_calls(kubeconfig)
                )
                through_api["machine"] = watch.stop()
                print("direct webhook throughput (vegeta) ...", flush=True)
                direct = escalate(
                    vegeta,
                    name="memwarden",
                    url=memwarden_url,
                    ca=memwarden_ca,
                    pods=(
                        make_pod(f"v{i}", NS_MEMWARDEN, owners[NS_MEMWARDEN])
                        for i in range(UNIQUE_REVIEWS)
                    ),
                    webhook_pid=memwarden_pid,
                    alive=lambda: operator.process is not None and operator.process.poll() is None,
                    workdir=workdir,
                )
                vpa_direct = escalate(
                    vegeta,
                    name="vpa",
                    url=vpa.url,
                    ca=workdir / "vpa" / "ca.crt",
                    pods=(make_pod(f"v{i}", NS_VPA, owners[NS_VPA]) for i in range(UNIQUE_REVIEWS)),
                    webhook_pid=vpa.process.pid,
                    alive=vpa.alive,
                    workdir=workdir,
                )
            finally:
                vpa.stop()
                operator.stop()
    finally:
        for name in webhooks:
            kubectl(
                kubeconfig,
                "delete",
                "mutatingwebhookconfiguration",
                name,
                "--ignore-not-found",
                check=False,
            )
        # Namespaces first (their VPA objects go with them), then VPA's CRDs.
        delete_namespaces(kubeconfig, *namespaces, check=False)
        kubectl(
            kubeconfig,
            "delete",
            "crd",
            *(f"{crd}.autoscaling.k8s.io" for crd in VPA_CRDS),
            "--ignore-not-found",
            "--timeout=60s",
            check=False,
        )
    return {
        "leftover_webhooks_removed": removed,
        "webhook_protocols": protocols,
        "sample_replies": samples,
        "pod_create": through_api,
        "webhook_direct": direct,
        "vpa_webhook_direct": vpa_direct,
    }


if __name__ == "__main__":
    main()
