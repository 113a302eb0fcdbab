"""The closed loop on one machine: node simulator, Prometheus, Alertmanager, the operator.

One stack per session: a node simulator (tainted, so only these tests' pods land on it)
serving cAdvisor metrics; a real Prometheus scraping it (and the pods a test asks it to,
``Loop.scrape``), with the documented alerting rule
scoped to pods named ``alerted-*``; a real Alertmanager routing to the operator; and the
real operator (``memwarden run``) with its webhook, risk loop and evidence store.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from memwarden_testing.alertmanager import AlertmanagerProcess
from memwarden_testing.cluster import api_client
from memwarden_testing.loop import TOOLBOX_IMAGE, LocalLoop, Loop, alert_rule, kind_loop
from memwarden_testing.nodesim import NodeSimulator
from memwarden_testing.operator import OperatorProcess
from memwarden_testing.prometheus import PrometheusServer


@pytest.fixture(scope="session")
def loop(request: pytest.FixtureRequest) -> Iterator[Loop]:
    """The local loop, or with ``MEMWARDEN_E2E_TARGET=kind`` the kind cluster's."""
    if os.environ.get("MEMWARDEN_E2E_TARGET") == "kind":
        kubeconfig = Path(os.environ["KUBECONFIG"])
        yield kind_loop(api_client(kubeconfig), kubeconfig)
    else:
        yield request.getfixturevalue("local_loop")


@pytest.fixture(scope="session")
def local_loop(
    operator: OperatorProcess,
    kube: client.ApiClient,
    tmp_path_factory: pytest.TempPathFactory,
    request: pytest.FixtureRequest,
) -> Iterator[LocalLoop]:
    """The session's operator, restarted with Prometheus and the toolbox image configured,
    plus a node simulator, Prometheus and Alertmanager around it. With
    ``MEMWARDEN_TEST_EVIDENCE_BACKEND=s3`` its evidence goes to the session's S3 server
    (tests/memwarden_testing/s3.py) instead of a directory: the same tests, the other store."""
    evidence_env: dict[str, str] = {}
    if os.environ.get("MEMWARDEN_TEST_EVIDENCE_BACKEND") == "s3":
        evidence_env = request.getfixturevalue("s3_server").env()
    workdir = tmp_path_factory.mktemp("loop")
    sim = NodeSimulator(kubeconfig=operator.kubeconfig, state_dir=workdir / "nodesim", taint=True)
    sim.start()
    rules = workdir / "rules.yml"
    rules.write_text(
        yaml.safe_dump({"groups": [{"name": "memwarden-e2e", "rules": [alert_rule()]}]})
    )
    alertmanager = AlertmanagerProcess(
        workdir=workdir,
        receiver_url=operator.alertmanager_url,
        token_file=operator.alertmanager_token_file,
        ca_file=operator.ca_file,
    )
    prometheus = PrometheusServer(
        workdir=workdir / "prometheus",
        targets=[f"127.0.0.1:{sim.info['metrics_port']}"],
        metrics_path="/metrics/cadvisor",
        rule_files=[rules],
        alertmanagers=[f"127.0.0.1:{alertmanager.port}"],
    )
    saved = dict(operator.extra_env)
    try:
        operator.stop()
        operator.extra_env.update(
            {
                "MEMWARDEN_PROMETHEUS_URL": prometheus.url,
                "MEMWARDEN_RISK_INTERVAL_SECONDS": "2",
                "MEMWARDEN_CAPTURE_TOOLBOX_IMAGE": TOOLBOX_IMAGE,
                "MEMWARDEN_MAX_CONCURRENT_CAPTURES": "10",
                **evidence_env,
            }
        )
        operator.start()
        alertmanager.start()
        prometheus.start()
        yield LocalLoop(
            kubeconfig=operator.kubeconfig,
            kube=kube,
            prometheus_url=prometheus.url,
            evidence_url=operator.evidence_url,
            evidence_ca=operator.ca_file,
            sim=sim,
            prometheus=prometheus,
            alertmanager=alertmanager,
            operator=operator,
        )
    finally:
        prometheus.stop()
        alertmanager.stop()
        operator.stop()
        operator.extra_env = saved
        sim.stop()
