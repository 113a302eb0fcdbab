"""A rolling restart of operator replicas under continuous pod creation: the scenario that
``tests/integration/test_rolling_restart.py`` asserts and ``bench/rolling_restart_bench.py``
measures.

Replicas are ``memwarden run`` processes sharing one serving certificate (as a
Deployment's pods share the Secret), behind ``servicelb`` (the Service's stand-in), and
the webhook configuration points at the balancer. Clients create pods with server-side
dry-run (``dryRun=All``): the API server runs the same admission chain, calls the webhook
the same way (the review says ``dryRun: true``; memwarden's webhook declares
``sideEffects: NoneOnDryRun`` and decides the same) and returns the pod as admitted, but
stores nothing. So thousands of creates a minute leave no pods to delete and no etcd
growth on a shared 2-core machine, and the rate the webhook sees is limited by admission
rather than by storage.
"""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import yaml
from kubernetes import client

from memwarden.api import APPLIED_ANNOTATION
from memwarden.webhook.manifests import mutating_webhook_configuration
from memwarden_testing.builders import make_container, make_policy, make_policy_spec
from memwarden_testing.cluster import api_client, ensure_namespace, kubectl, wait_for
from memwarden_testing.operator import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    least_privilege_kubeconfig,
    operators_paused,
)
from memwarden_testing.servicelb import (
    Backend,
    ServiceLoadBalancer,
    Stats,
    service_load_balancer,
)

#: The replicas run as the chart runs them: leader election on, one reconciling (short
#: timings, as tests/integration/test_leader_election.py). Admission, what this scenario
#: measures, is served by every replica either way.
LEASE = "memwarden"  # the name rbac.py's Role grants
ELECTION_ENV = {
    "MEMWARDEN_LEADER_ELECTION": "true",
    "MEMWARDEN_LEADER_LEASE_DURATION_SECONDS": "4",
    "MEMWARDEN_LEADER_RENEW_DEADLINE_SECONDS": "3",
    "MEMWARDEN_LEADER_RETRY_PERIOD_SECONDS": "0.5",
}

#: The labels of the created pods (the policy's selector, ``builders.make_policy_spec``).
POD_LABELS = {"app": "checkout"}


@dataclass(frozen=True)
class Create:
    """One pod create as a client saw it."""

    started: float  # time.monotonic()
    seconds: float
    mutated: bool
    error: str | None = None


class PodCreators:
    """``clients`` threads creating pods (server-side dry-run) back to back until stopped,
    each with a client of its own (its own connections to the API server)."""

    def __init__(self, kubeconfig: Path, namespace: str, *, clients: int) -> None:
        self.kubeconfig = kubeconfig
        self.namespace = namespace
        self.clients = clients
        self.results: list[Create] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def start(self) -> None:
        for n in range(self.clients):
            thread = threading.Thread(target=self._run, args=(n,), daemon=True)
            thread.start()
            self._threads.append(thread)

    def stop(self) -> list[Create]:
        self._stop.set()
        for thread in self._threads:
            thread.join(30)
        with self._lock:
            return list(self.results)

    def count(self) -> int:
        with self._lock:
            return len(self.results)

    def _run(self, n: int) -> None:
        core = client.CoreV1Api(api_client(self.kubeconfig))
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                pod = dry_run_create(core, self.namespace, prefix=f"roll-{n}-")
                result = Create(started, time.monotonic() - started, is_mutated(pod))
            except Exception as exc:  # counted, and the test fails on any
                result = Create(started, time.monotonic() - started, False, repr(exc)[:300])
            with self._lock:
                self.results.append(result)


def dry_run_create(core: client.CoreV1Api, namespace: str, *, prefix: str) -> dict[str, Any]:
    """A pod the policy selects, created with ``dryRun=All``: the pod as admitted."""
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"generateName": prefix, "labels": POD_LABELS},
        "spec": {"containers": [make_container()]},
    }
    response = core.create_namespaced_pod(namespace, body, dry_run="All", _preload_content=False)
    pod: dict[str, Any] = orjson.loads(response.data)
    return pod


def is_mutated(pod: dict[str, Any]) -> bool:
    """The webhook's mark (the applied annotation) and its memory limit are both there."""
    annotations = (pod.get("metadata") or {}).get("annotations") or {}
    limits = (pod["spec"]["containers"][0].get("resources") or {}).get("limits") or {}
    return APPLIED_ANNOTATION in annotations and limits.get("memory") == "1Gi"


def make_replicas(
    *,
    admin_kubeconfig: Path,
    identity: Path,
    workdir: Path,
    namespace: str,
    count: int,
    drain_seconds: float,
    extra_env: dict[str, str] | None = None,
) -> tuple[list[OperatorProcess], bytes]:
    """``count`` operator processes (not started) watching ``namespace``, one serving
    certificate for all; returns them and the CA's PEM."""
    env = {
        "MEMWARDEN_WEBHOOK_DRAIN_SECONDS": str(drain_seconds),
        **ELECTION_ENV,
        **(extra_env or {}),
    }
    replicas = []
    for n in range(count):
        home = workdir / f"replica-{n}"
        home.mkdir(parents=True, exist_ok=True)
        replicas.append(
            OperatorProcess(
                kubeconfig=admin_kubeconfig,
                workdir=home,
                identity=identity,
                extra_env={**env, "MEMWARDEN_LEADER_IDENTITY": f"replica-{n}"},
                extra_args=[f"--namespace={namespace}"],
            )
        )
    ca_pem = replicas[0].make_certificates()
    for other in replicas[1:]:
        for name in ("ca.crt", "tls.crt", "tls.key"):
            shutil.copy2(replicas[0].workdir / name, other.workdir / name)
    return replicas, ca_pem


def backends(replicas: list[OperatorProcess]) -> list[Backend]:
    return [
        Backend(
            name=f"replica-{n}",
            port=r.webhook_port,
            readyz_port=r.http_port,
            readyz_ca_file=str(r.ca_file),
        )
        for n, r in enumerate(replicas)
    ]


@contextmanager
def webhook_through(
    kubeconfig: Path, balancer: ServiceLoadBalancer, *, ca_pem: bytes, namespace: str
) -> Iterator[str]:
    """memwarden's webhook configuration, addressed to the balancer and limited to
    ``namespace`` (other tests' pods never reach these replicas); removed on exit."""
    name = f"memwarden-test-rolling-{balancer.port}"
    config = mutating_webhook_configuration(
        ca_bundle=ca_pem, url=balancer.url, excluded_namespaces=[OPERATOR_NAMESPACE], name=name
    )
    config["webhooks"][0]["namespaceSelector"] = {
        "matchLabels": {"kubernetes.io/metadata.name": namespace}
    }
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(config))
    try:
        yield name
    finally:
        kubectl(kubeconfig, "delete", "mutatingwebhookconfiguration", name, "--ignore-not-found")


@dataclass
class Restart:
    """One replica's restart: SIGTERM sent, process gone, new process ready in the Service."""

    replica: str
    sigterm: float
    exited: float
    ready: float


def wait_ready_in_service(balancer: ServiceLoadBalancer, name: str, timeout: float = 60) -> None:
    wait_for(lambda: name in balancer.ready(), timeout=timeout, what=f"{name} ready in the Service")


def rolling_restart(
    replicas: list[OperatorProcess], balancer: ServiceLoadBalancer, *, kill: bool = False
) -> list[Restart]:
    """Restart the replicas one after the other, as a Deployment's RollingUpdate with
    maxUnavailable 1 / maxSurge 0 does: the next only once the previous is ready again.

    Even replicas get SIGTERM on the operator's PID only, as a kubelet sends it to a
    container's PID 1; odd ones on the whole process group, admission worker included,
    as tests and shells do: both must drain. ``kill``: SIGKILL to the group instead (a
    crash, not a rollout)."""
    done = []
    for n, replica in enumerate(replicas):
        name = f"replica-{n}"
        sigterm = time.monotonic()
        assert replica.process is not None
        if kill:
            os.killpg(replica.process.pid, signal.SIGKILL)
            replica.process.wait(10)
        elif n % 2 == 0:
            replica.process.send_signal(signal.SIGTERM)
            replica.process.wait(30)
        replica.stop()  # the process group (odd replicas), and the port closed
        exited = time.monotonic()
        replica.start()
        wait_ready_in_service(balancer, name)
        done.append(Restart(name, sigterm, exited, time.monotonic()))
    return done


def percentile(values: list[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


@dataclass
class Summary:
    """What the clients saw, before the restarts and during them."""

    created: int
    unmutated: int
    errors: int
    phases: dict[str, dict[str, float]] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)


def summarize(results: list[Create], *, during: tuple[float, float]) -> Summary:
    """``during``: (first SIGTERM, last replica ready) in ``time.monotonic()``."""
    begin, end = during
    phases: dict[str, dict[str, float]] = {}
    for phase, selected in (
        ("before", [r for r in results if r.started < begin]),
        ("during", [r for r in results if begin <= r.started <= end]),
        ("after", [r for r in results if r.started > end]),
    ):
        seconds = [r.seconds for r in selected]
        phases[phase] = {
            "creates": len(selected),
            "unmutated": sum(not r.mutated for r in selected),
            "p50_ms": round(percentile(seconds, 0.5) * 1000, 1),
            "p99_ms": round(percentile(seconds, 0.99) * 1000, 1),
            "max_ms": round(max(seconds, default=0.0) * 1000, 1),
        }
    return Summary(
        created=len(results),
        unmutated=sum(not r.mutated for r in results),
        errors=sum(r.error is not None for r in results),
        phases=phases,
        first_errors=[r.error for r in results if r.error][:5],
    )


#: Creates before the first restart and after the last (the steady state either side).
STEADY_CREATES = 200


@dataclass
class Outcome:
    """One scenario run: what the clients saw, what the balancer did, the restarts."""

    summary: Summary
    stats: Stats
    restarts: list[Restart]
    #: Who held the Lease once the restarts were over (someone must: reconciliation goes on).
    leader_after: str | None = None


def run_scenario(
    *,
    admin: Path,
    kube: client.ApiClient,
    namespace: str,
    workdir: Path,
    clients: int,
    drain_seconds: float,
    rounds: int = 1,
    kill: bool = False,
    steady_creates: int = STEADY_CREATES,
    extra_env: dict[str, str] | None = None,
) -> Outcome:
    """Two replicas behind the balancer; ``clients`` threads creating pods before, during
    and after ``rounds`` rolling restarts of both."""
    ensure_namespace(client.CoreV1Api(kube), OPERATOR_NAMESPACE)
    coordination = client.CoordinationV1Api(kube)
    coordination.delete_collection_namespaced_lease(  # one left by an earlier test
        OPERATOR_NAMESPACE, field_selector=f"metadata.name={LEASE}"
    )

    def holder() -> str | None:
        lease = coordination.read_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
        return lease.spec.holder_identity or None

    leader_after: str | None = None
    identity = least_privilege_kubeconfig(kube, admin_kubeconfig=admin, workdir=workdir)
    policy = make_policy(
        namespace=namespace, spec=make_policy_spec(memory={"request": "512Mi", "limit": "1Gi"})
    )
    kubectl(admin, "apply", "-f", "-", input=yaml.safe_dump(policy))
    replicas, ca_pem = make_replicas(
        admin_kubeconfig=admin,
        identity=identity,
        workdir=workdir,
        namespace=namespace,
        count=2,
        drain_seconds=drain_seconds,
        extra_env=extra_env,
    )
    creators = PodCreators(admin, namespace, clients=clients)
    restarts: list[Restart] = []
    # The session's operator (if a test started it) registers a webhook for every
    # namespace: paused, it cannot mutate these pods and hide a failure here.
    with (
        operators_paused(),
        service_load_balancer(backends(replicas)) as balancer,
        webhook_through(admin, balancer, ca_pem=ca_pem, namespace=namespace),
    ):
        try:
            for n, replica in enumerate(replicas):
                replica.start()
                wait_ready_in_service(balancer, f"replica-{n}")
            core = client.CoreV1Api(kube)
            wait_for(
                lambda: is_mutated(dry_run_create(core, namespace, prefix="probe-")),
                timeout=30,
                what="the webhook configuration in effect (a dry-run create mutated)",
            )
            creators.start()
            wait_for(lambda: creators.count() >= steady_creates, timeout=60, what="steady load")
            for _ in range(rounds):
                restarts += rolling_restart(replicas, balancer, kill=kill)
            after = creators.count() + steady_creates
            wait_for(lambda: creators.count() >= after, timeout=60, what="load after restarts")
            leader_after = wait_for(holder, timeout=10, what="a replica leading after the restarts")
        finally:
            results = creators.stop()
            for replica in replicas:
                replica.stop()
    summary = summarize(results, during=(restarts[0].sigterm, restarts[-1].ready))
    return Outcome(summary, balancer.stats, restarts, leader_after)


def describe(outcome: Outcome) -> str:
    """One paragraph for an assertion message."""
    summary, stats = outcome.summary, outcome.stats
    timings = [
        (r.replica, round(r.exited - r.sigterm, 1), round(r.ready - r.sigterm, 1))
        for r in outcome.restarts
    ]
    return (
        f"{summary.created} creates, {summary.unmutated} unmutated, {summary.errors} errors "
        f"{summary.first_errors}; phases {summary.phases}; balancer: connections "
        f"{dict(stats.connections)}, refused {dict(stats.refused)}, no backend "
        f"{stats.no_backend}; restarts (replica, exited s, ready s) {timings}"
    )


__all__ = [
    "ELECTION_ENV",
    "LEASE",
    "POD_LABELS",
    "STEADY_CREATES",
    "Create",
    "Outcome",
    "PodCreators",
    "Restart",
    "Summary",
    "backends",
    "describe",
    "dry_run_create",
    "is_mutated",
    "make_replicas",
    "rolling_restart",
    "run_scenario",
    "summarize",
    "wait_ready_in_service",
    "webhook_through",
]
