"""Integration fixtures: CRDs installed, the real operator running."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from memwarden_testing.cluster import kubectl
from memwarden_testing.operator import OPERATOR_NAMESPACE, OperatorProcess


@pytest.fixture(scope="session")
def operator(
    crds: Path, kube: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator as a process, with its webhook registered; stopped at the end."""
    try:
        client.CoreV1Api(kube).create_namespace(
            client.V1Namespace(metadata=client.V1ObjectMeta(name=OPERATOR_NAMESPACE))
        )
    except ApiException as exc:
        if exc.status != 409:
            raise
    process = OperatorProcess(kubeconfig=crds, workdir=tmp_path_factory.mktemp("operator"))
    ca_pem = process.make_certificates()
    process.start()
    process.register_webhook(ca_pem)
    yield process
    process.stop()
    kubectl(
        crds, "delete", "mutatingwebhookconfiguration", process.webhook_name, "--ignore-not-found"
    )


@pytest.fixture
def memwarden(operator: OperatorProcess) -> OperatorProcess:
    """The session's operator, (re)started if an earlier test stopped it."""
    if operator.process is None or operator.process.poll() is not None:
        operator.start()
    return operator
