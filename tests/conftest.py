"""Shared fixtures: the session's real control plane and a fresh namespace per test."""

from __future__ import annotations

import os
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from memwarden_testing.cluster import REPO, api_client, ensure_namespace, kubectl, unique_name
from memwarden_testing.leaky import build_leaky, find_go
from memwarden_testing.loop import TOOLBOX_IMAGE
from memwarden_testing.operator import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    install_incident_policy,
    install_reach_policy,
    least_privilege_kubeconfig,
    running_operator_logs,
    uninstall_reach_policy,
)

#: Fixtures that live in the shared testing package: a real Prometheus and a test exporter,
#: a real S3 server (SeaweedFS).
pytest_plugins = ["memwarden_testing.prometheus", "memwarden_testing.s3"]


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Generator[None, pytest.TestReport, pytest.TestReport]:
    """A failed test's report carries the log tails of the operators running then."""
    report = yield
    if report.when == "call" and report.failed:
        report.sections.extend(running_operator_logs())
    return report


@pytest.fixture(scope="session")
def devcluster() -> Iterator[Path]:
    """The local control plane's admin kubeconfig; started if not already up.

    A cluster this fixture started is stopped at the end of the session, unless
    ``MEMWARDEN_KEEP_CLUSTER=1`` (handy while iterating on integration tests).
    """
    import devcluster as dc  # hack/devcluster.py

    layout = dc.default_layout()
    already_up = (layout.pki / "done").exists() and dc._readyz(layout)
    if not already_up:
        dc.up(layout)
    yield layout.kubeconfig
    if not already_up and os.environ.get("MEMWARDEN_KEEP_CLUSTER") != "1":
        dc.down(layout)


@pytest.fixture(scope="session")
def kube(devcluster: Path) -> client.ApiClient:
    """An admin ApiClient on the local control plane."""
    return api_client(devcluster)


@pytest.fixture
def namespace(kube: client.ApiClient, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace (with its default ServiceAccount ready), deleted after the test."""
    core = client.CoreV1Api(kube)
    base = request.node.name.lower().replace("_", "-")
    name = unique_name("t-" + "".join(c for c in base if c.isalnum() or c == "-")[:40].strip("-"))
    ensure_namespace(core, name)
    yield name
    try:
        core.delete_namespace(name)
    except ApiException as exc:
        if exc.status != 404:
            raise


#: Seconds a test of each tier may take (pytest-timeout), unless it says otherwise: a
#: hung unit test fails in two minutes, not in the integration tier's ten.
TIER_TIMEOUTS = {"unit": 120, "local": 180, "integration": 600, "e2e": 600}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Tests under tests/unit are unit tests, tests/integration integration, tests/e2e e2e;
    each gets its tier's timeout (a unit test marked ``local`` starts a server or a
    process on this machine, and gets that one)."""
    for item in items:
        path = Path(str(item.fspath)).relative_to(REPO / "tests")
        tier = path.parts[0]
        if tier in {"unit", "integration", "e2e"} and not item.get_closest_marker(tier):
            item.add_marker(getattr(pytest.mark, tier))
        if tier in TIER_TIMEOUTS and not item.get_closest_marker("timeout"):
            own = "local" if item.get_closest_marker("local") else tier
            item.add_marker(pytest.mark.timeout(TIER_TIMEOUTS[own]))


@pytest.fixture(scope="session")
def crds(devcluster: Path) -> Path:
    """memwarden's CRDs, applied from crds/ and established, and the admission policy
    memwarden ships for MemoryIncidents (who may ask for a capture)."""
    kubectl(devcluster, "apply", "-f", str(REPO / "crds"))
    kubectl(
        devcluster,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/memorypolicies.memwarden.dev",
        "crd/memoryincidents.memwarden.dev",
    )
    install_incident_policy(devcluster)
    return devcluster


@pytest.fixture(scope="session")
def operator(
    crds: Path, kube: client.ApiClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OperatorProcess]:
    """The operator as a process, with its webhook registered; stopped at the end.

    It runs as a ServiceAccount with the chart's RBAC, and under the chart's operator-reach
    policy: the debug containers it adds must be toolbox-shaped, as in a cluster."""
    ensure_namespace(client.CoreV1Api(kube), OPERATOR_NAMESPACE)
    workdir = tmp_path_factory.mktemp("operator")
    identity = least_privilege_kubeconfig(kube, admin_kubeconfig=crds, workdir=workdir)
    process = OperatorProcess(
        kubeconfig=crds,
        workdir=workdir,
        identity=identity,
        extra_env={"MEMWARDEN_CAPTURE_TOOLBOX_IMAGE": TOOLBOX_IMAGE},
    )
    install_reach_policy(
        crds, toolbox_image=TOOLBOX_IMAGE, evidence_authority=process.evidence_authority
    )
    ca_pem = process.make_certificates()
    process.start()
    process.register_webhook(ca_pem)
    yield process
    process.stop()
    kubectl(
        crds, "delete", "mutatingwebhookconfiguration", process.webhook_name, "--ignore-not-found"
    )
    uninstall_reach_policy(crds)


@pytest.fixture
def memwarden(operator: OperatorProcess) -> OperatorProcess:
    """The session's operator, (re)started if an earlier test stopped it."""
    if operator.process is None or operator.process.poll() is not None:
        operator.start()
    return operator


@pytest.fixture(scope="session")
def go() -> str:
    """The machine's Go toolchain (a README prerequisite), for builds and `go tool`."""
    found = find_go()
    if found is None:
        pytest.fail("the Go toolchain is required: put `go` on PATH")
    return found


@pytest.fixture(scope="session")
def leaky_binary(go: str) -> Path:
    """The leaky Go workload, built (or taken from the cache) once per session."""
    return build_leaky(go)
