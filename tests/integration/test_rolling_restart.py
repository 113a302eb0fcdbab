"""A rolling restart of two operator replicas while 20 clients create pods continuously:
every pod is admitted with its policy (issue #16), because a stopping replica drains
(``webhook.drain_seconds``: not ready at once, answers on, each connection closed after
its answer, then stops listening and finishes what is in flight).

The replicas are real ``memwarden run`` processes on the real control plane; the Service
between the API server and them is ``servicelb`` (no kube-proxy here: its docstring says
what it reproduces). A control run without the drain shows the test can fail: pods are
admitted unmutated when a replica simply stops.
"""

from __future__ import annotations

from pathlib import Path

import yaml
from kubernetes import client

from memwarden_testing.builders import make_policy, make_policy_spec
from memwarden_testing.cluster import ensure_namespace, kubectl, wait_for
from memwarden_testing.operator import (
    OPERATOR_NAMESPACE,
    least_privilege_kubeconfig,
    operators_paused,
)
from memwarden_testing.rolling import (
    PodCreators,
    Restart,
    Summary,
    backends,
    dry_run_create,
    is_mutated,
    make_replicas,
    rolling_restart,
    summarize,
    wait_ready_in_service,
    webhook_through,
)
from memwarden_testing.servicelb import Stats, service_load_balancer

CLIENTS = 20
#: Creates before the first restart and after the last (the steady state either side).
STEADY_CREATES = 200
#: The drain under test: the default. The balancer's probe period (0.5 s) and
#: propagation delay (1 s) are what it must cover.
DRAIN_SECONDS = 5.0


def run_scenario(
    *, admin: Path, kube: client.ApiClient, namespace: str, workdir: Path, drain_seconds: float
) -> tuple[Summary, Stats, list[Restart]]:
    """Two replicas behind the balancer, clients creating pods before, during and after a
    rolling restart of both; what the clients saw."""
    ensure_namespace(client.CoreV1Api(kube), OPERATOR_NAMESPACE)
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
    )
    creators = PodCreators(admin, namespace, clients=CLIENTS)
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
            wait_for(lambda: creators.count() >= STEADY_CREATES, timeout=60, what="steady load")
            restarts = rolling_restart(replicas, balancer)
            after = creators.count() + STEADY_CREATES
            wait_for(lambda: creators.count() >= after, timeout=60, what="load after restarts")
        finally:
            results = creators.stop()
            for replica in replicas:
                replica.stop()
    summary = summarize(results, during=(restarts[0].sigterm, restarts[-1].ready))
    return summary, balancer.stats, restarts


def describe(summary: Summary, stats: Stats, restarts: list[Restart]) -> str:
    timings = [
        (r.replica, round(r.exited - r.sigterm, 1), round(r.ready - r.sigterm, 1)) for r in restarts
    ]
    return (
        f"{summary.created} creates, {summary.unmutated} unmutated, {summary.errors} errors "
        f"{summary.first_errors}; phases {summary.phases}; balancer: connections "
        f"{dict(stats.connections)}, refused {dict(stats.refused)}, no backend "
        f"{stats.no_backend}; restarts (replica, exited s, ready s) {timings}"
    )


def test_a_rolling_restart_admits_every_pod_with_its_policy(
    crds: Path, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    summary, stats, restarts = run_scenario(
        admin=crds, kube=kube, namespace=namespace, workdir=tmp_path, drain_seconds=DRAIN_SECONDS
    )
    report = describe(summary, stats, restarts)
    assert summary.phases["during"]["creates"] > 0, report
    # Each replica drained: it stopped only after the Service had stopped sending it
    # new connections, so none found a closed port.
    assert not stats.refused, report
    assert summary.unmutated == 0, report
    assert summary.errors == 0, report
    # Both replicas served during the test (the balancer really balanced).
    assert all(stats.connections[f"replica-{n}"] > 0 for n in range(2)), report


def test_without_the_drain_pods_are_admitted_unmutated(
    crds: Path, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """The control: the same restart with ``drain_seconds: 0`` loses pods, so the test
    above can fail, and the drain is what makes it pass."""
    summary, stats, restarts = run_scenario(
        admin=crds, kube=kube, namespace=namespace, workdir=tmp_path, drain_seconds=0
    )
    report = describe(summary, stats, restarts)
    assert summary.errors == 0, report  # failurePolicy Ignore: creates succeed, unmutated
    assert summary.unmutated > 0, report
