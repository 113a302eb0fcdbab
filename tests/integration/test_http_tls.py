"""The operator's HTTP API (evidence, Alertmanager receiver, /metrics) on the real operator:
HTTPS by default, its certificate reloaded in place, readers' tokens for memwarden only.

The Alertmanager receiver over HTTPS is exercised by a real Alertmanager trusting the
operator's CA in test_alertmanager_receiver.py, the capture path (toolbox uploads to the
evidence API) by the e2e scenarios.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
from pathlib import Path

import pytest
import requests
from kubernetes import client

from memwarden_testing.cluster import kubectl, wait_for
from memwarden_testing.evidence import grant_evidence_reader
from memwarden_testing.operator import OperatorProcess, operators_paused

pytestmark = pytest.mark.integration


def served_certificate(port: int, *, ca_file: Path) -> str | None:
    """The sha256 of the certificate served on ``port`` if ``ca_file`` verifies it."""
    context = ssl.create_default_context(cafile=str(ca_file))
    try:
        with (
            socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
            context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
        ):
            der = tls.getpeercert(binary_form=True)
    except ssl.SSLCertVerificationError:
        return None
    assert der is not None
    return hashlib.sha256(der).hexdigest()


def test_plain_http_is_refused_by_default(memwarden: OperatorProcess) -> None:
    with pytest.raises(requests.ConnectionError):
        requests.get(f"http://127.0.0.1:{memwarden.http_port}/healthz", timeout=5)

    answer = requests.get(f"{memwarden.http_url}/healthz", verify=str(memwarden.ca_file), timeout=5)
    assert answer.status_code == 200, answer.text
    evidence = requests.get(
        f"{memwarden.evidence_url}/v1/namespaces/default/incidents",
        verify=str(memwarden.ca_file),
        timeout=5,
    )
    assert evidence.status_code == 401, "the evidence API is served on the same HTTPS port"


def test_a_rotated_certificate_is_served_without_restart(
    crds: Path, kube: client.ApiClient, tmp_path: Path
) -> None:
    """New files (a new CA and serving certificate, as the rotation or cert-manager writes
    them) are served on the same port by the same process: no restart, no closed port."""
    with operators_paused():
        process = OperatorProcess(
            kubeconfig=crds,
            workdir=tmp_path,
            extra_env={"MEMWARDEN_WEBHOOK_FILE_CHECK_SECONDS": "0.5"},
        )
        process.make_certificates()
        process.start()
        try:
            assert process.process is not None
            pid = process.process.pid
            old_ca = tmp_path / "old-ca.crt"
            old_ca.write_bytes(process.ca_file.read_bytes())
            first = served_certificate(process.http_port, ca_file=old_ca)
            assert first is not None

            process.make_certificates()  # a new CA, a new pair in the same files

            second = wait_for(
                lambda: served_certificate(process.http_port, ca_file=process.ca_file),
                timeout=30,
                what="the new certificate on the HTTP API",
            )
            assert second != first
            assert served_certificate(process.http_port, ca_file=old_ca) is None
            assert process.process.pid == pid and process.process.poll() is None
            assert "HTTP API serving certificate reloaded in place" in process.log_tail(20000)
            healthz = requests.get(
                f"{process.http_url}/healthz", verify=str(process.ca_file), timeout=5
            )
            assert healthz.status_code == 200
        finally:
            process.stop()


def test_a_token_for_another_audience_is_refused(
    memwarden: OperatorProcess, devcluster: Path, kube: client.ApiClient, namespace: str
) -> None:
    """Readers send a token made for memwarden (``--audience memwarden``): one for another
    audience, the API server's own included, does not authenticate, though RBAC allows
    its ServiceAccount."""
    kubectl(devcluster, "create", "serviceaccount", "sre", "-n", namespace)
    grant_evidence_reader(kube, namespace, "sre")
    url = f"{memwarden.evidence_url}/v1/namespaces/{namespace}/incidents"

    def token(*audience: str) -> str:
        args = ["create", "token", "sre", "-n", namespace, *audience]
        return kubectl(devcluster, *args).stdout.strip()

    def get(bearer: str) -> int:
        headers = {"Authorization": f"Bearer {bearer}"}
        response = requests.get(url, headers=headers, verify=str(memwarden.ca_file), timeout=10)
        return response.status_code

    ours = token("--audience", "memwarden")
    assert wait_for(lambda: get(ours) == 200, what="the reader's grant")
    assert get(token("--audience", "other")) == 401
    assert get(token()) == 401, "the API server's audience is not memwarden's"
