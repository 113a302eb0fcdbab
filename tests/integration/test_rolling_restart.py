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

import pytest
from kubernetes import client

from memwarden_testing.rolling import describe, run_scenario

CLIENTS = 20
#: The drain under test: the default. The balancer's probe period (0.5 s) and
#: propagation delay (1 s) are what it must cover.
DRAIN_SECONDS = 5.0


@pytest.mark.parametrize("process", ["worker", "inline"])
def test_a_rolling_restart_admits_every_pod_with_its_policy(
    crds: Path, kube: client.ApiClient, namespace: str, tmp_path: Path, process: str
) -> None:
    """``admission.process``: the webhook in its own process (default) drains from there;
    inline, on kopf's event loop, it must keep answering while kopf shuts down."""
    outcome = run_scenario(
        admin=crds,
        kube=kube,
        namespace=namespace,
        workdir=tmp_path,
        clients=CLIENTS,
        drain_seconds=DRAIN_SECONDS,
        extra_env={"MEMWARDEN_ADMISSION_PROCESS": process},
    )
    report = describe(outcome)
    summary, stats = outcome.summary, outcome.stats
    assert summary.phases["during"]["creates"] > 0, report
    # Each replica drained: it stopped only after the Service had stopped sending it
    # new connections, so none found a closed port.
    assert not stats.refused, report
    assert summary.unmutated == 0, report
    assert summary.errors == 0, report
    # Both replicas served during the test (the balancer really balanced).
    assert all(stats.connections[f"replica-{n}"] > 0 for n in range(2)), report
    assert outcome.leader_after in {"replica-0", "replica-1"}, "reconciliation went on"


def test_without_the_drain_pods_are_admitted_unmutated(
    crds: Path, kube: client.ApiClient, namespace: str, tmp_path: Path
) -> None:
    """The control: the same restart with ``drain_seconds: 0`` loses pods, so the test
    above can fail, and the drain is what makes it pass."""
    outcome = run_scenario(
        admin=crds,
        kube=kube,
        namespace=namespace,
        workdir=tmp_path,
        clients=CLIENTS,
        drain_seconds=0,
    )
    report = describe(outcome)
    summary = outcome.summary
    assert summary.errors == 0, report  # failurePolicy Ignore: creates succeed, unmutated
    assert summary.unmutated > 0, report
