"""Run the real operator (``memwarden run``) as a process against the local control plane.

The fixture makes the webhook's certificates, starts the operator on a free loopback
port and registers the MutatingWebhookConfiguration that memwarden ships, pointing at it.
The HTTP API (evidence, Alertmanager receiver, /metrics) serves the same certificate over
HTTPS, as it does by default; ``ca_file`` is the CA to trust it with.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import ssl
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memwarden.reach import operator_reach_policy
from memwarden.webhook.manifests import (
    incident_admission_policy,
    mutating_webhook_configuration,
    policy_guard,
    service_account_username,
)
from memwarden_testing.cluster import (
    REPO,
    child_pids,
    kubectl,
    metric_sum,
    stop_process_group,
    wait_for,
)
from memwarden_testing.tls import loopback_certificates

OPERATOR_NAMESPACE = "memwarden-system"
#: The ServiceAccount the test operator runs as (``least_privilege_kubeconfig``).
OPERATOR_ACCOUNT = "memwarden-test-operator"
#: The ValidatingAdmissionPolicy (and binding) memwarden ships, as the test cluster has it.
INCIDENT_POLICY = "memwarden-test-incidents"
#: The ValidatingAdmissionPolicy holding the test operator to removing policies' finalizers.
POLICY_GUARD = "memwarden-test-policies"

#: Operator processes this test session started and has not stopped, by ``id``.
_running: dict[int, OperatorProcess] = {}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class OperatorProcess:
    """One ``memwarden run`` process; restartable, its log kept in ``workdir``."""

    kubeconfig: Path
    workdir: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    #: More ``memwarden run`` arguments (``--namespace=...`` keeps a test's operator to its own).
    extra_args: list[str] = field(default_factory=list)
    webhook_port: int = field(default_factory=free_port)
    health_port: int = field(default_factory=free_port)
    identity: Path | None = None
    """The kubeconfig the operator runs with (default: ``kubeconfig``, the admin's)."""
    http_port: int = field(default_factory=free_port)
    alertmanager_token: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    @property
    def webhook_name(self) -> str:
        """Unique per process, so concurrent test sessions do not repoint each other's."""
        return f"memwarden-test-{self.webhook_port}"

    @property
    def alertmanager_token_file(self) -> Path:
        return self.workdir / "alertmanager-token"

    @property
    def http_url(self) -> str:
        """The operator's HTTP API (HTTPS, the default): ``ca_file`` verifies it."""
        return f"https://127.0.0.1:{self.http_port}"

    @property
    def alertmanager_url(self) -> str:
        """The operator's Alertmanager receiver."""
        return f"{self.http_url}/alertmanager/v4"

    @property
    def evidence_url(self) -> str:
        return f"{self.http_url}/evidence"

    @property
    def ca_file(self) -> Path:
        """The CA of the webhook's and the HTTP API's certificate (``make_certificates``)."""
        return self.workdir / "ca.crt"

    def tls_context(self) -> ssl.SSLContext:
        """A client context trusting ``ca_file`` only."""
        return ssl.create_default_context(cafile=str(self.ca_file))

    @property
    def evidence_authority(self) -> str:
        """host:port of the evidence API in the upload URLs this operator plans."""
        base = self.extra_env.get("MEMWARDEN_EVIDENCE_BASE_URL")
        return urllib.parse.urlsplit(base).netloc if base else f"127.0.0.1:{self.http_port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "operator.log"

    def make_certificates(self) -> bytes:
        return loopback_certificates(
            ca_name="test-webhook-ca",
            ca_file=self.workdir / "ca.crt",
            cert_file=self.workdir / "tls.crt",
            key_file=self.workdir / "tls.key",
        )

    def register_webhook(self, ca_pem: bytes) -> None:
        config = mutating_webhook_configuration(
            ca_bundle=ca_pem,
            url=f"https://127.0.0.1:{self.webhook_port}",
            excluded_namespaces=["kube-system", OPERATOR_NAMESPACE],
            name=self.webhook_name,
        )
        kubectl(self.kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(config))

    @property
    def evidence_key_file(self) -> Path:
        """A stable upload-token key, so tokens survive an operator restart in tests."""
        return self.workdir / "evidence.key"

    def start(self) -> None:
        self.alertmanager_token_file.write_text(self.alertmanager_token)
        if not self.evidence_key_file.exists():
            self.evidence_key_file.write_text(secrets.token_hex(32))
        env = {
            **os.environ,
            "KUBECONFIG": str(self.identity or self.kubeconfig),
            "MEMWARDEN_NAMESPACE": OPERATOR_NAMESPACE,
            "MEMWARDEN_WEBHOOK_HOST": "127.0.0.1",
            "MEMWARDEN_WEBHOOK_PORT": str(self.webhook_port),
            "MEMWARDEN_WEBHOOK_CERT_FILE": str(self.workdir / "tls.crt"),
            "MEMWARDEN_WEBHOOK_KEY_FILE": str(self.workdir / "tls.key"),
            "MEMWARDEN_STATUS_DEBOUNCE_SECONDS": "0.5",
            "MEMWARDEN_HTTP_HOST": "127.0.0.1",
            "MEMWARDEN_HTTP_PORT": str(self.http_port),
            "MEMWARDEN_ALERTMANAGER_TOKEN_FILE": str(self.alertmanager_token_file),
            "MEMWARDEN_EVIDENCE_DIR": str(self.workdir / "evidence"),
            "MEMWARDEN_EVIDENCE_KEY_FILE": str(self.evidence_key_file),
            "MEMWARDEN_EVIDENCE_UPLOAD_CA_FILE": str(self.ca_file),
            # One replica: no other one to hand admission to, so a drain would only make
            # every stop 5 s slower. The rolling-restart tests set it (memwarden_testing.rolling).
            "MEMWARDEN_WEBHOOK_DRAIN_SECONDS": "0",
            **self.extra_env,
        }
        log = self.log_path.open("ab")
        # Under leader election kopf (and its liveness endpoint) runs on the leader only:
        # every replica is probed at the HTTP API's /healthz, as the chart does.
        liveness = (
            [] if self.elected else [f"--liveness=http://127.0.0.1:{self.health_port}/healthz"]
        )
        self.process = subprocess.Popen(
            [
                str(REPO / ".venv" / "bin" / "memwarden"),
                "run",
                *liveness,
                *self.extra_args,
            ],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.starts += 1
        _running[id(self)] = self
        wait_for(self._healthy, timeout=60, what="operator liveness")

    @property
    def elected(self) -> bool:
        """Started with leader election on (``MEMWARDEN_LEADER_ELECTION``)."""
        return self.extra_env.get("MEMWARDEN_LEADER_ELECTION", "").lower() in {"1", "true"}

    def _healthy(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"operator exited: {self.log_tail()}")
        if self.elected:
            url, context = f"{self.http_url}/healthz", self.tls_context()
        else:
            url, context = f"http://127.0.0.1:{self.health_port}/healthz", None
        try:
            with urllib.request.urlopen(url, timeout=1, context=context):
                return True
        except (urllib.error.URLError, OSError):
            return False

    def kill(self) -> None:
        """SIGKILL the operator and its children at once: a node lost, an OOM kill."""
        import signal

        _running.pop(id(self), None)
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, *, grace: float = 30) -> int:
        """SIGTERM the operator's main process only (as the kubelet signals PID 1) and
        wait for it to exit; its exit code."""
        import signal

        _running.pop(id(self), None)
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=grace)
            except subprocess.TimeoutExpired as exc:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
                tail = self.log_tail()
                raise AssertionError(f"operator did not stop on SIGTERM: {tail}") from exc
        return int(self.process.returncode)

    def stop(self) -> None:
        _running.pop(id(self), None)
        if self.process is None or self.process.poll() is not None:
            return
        stop_process_group(self.process)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and _listening(self.webhook_port):
            time.sleep(0.1)

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""

    def metric(self, name: str, **labels: str) -> float:
        """The sum of the operator's ``name`` samples with these labels, from /metrics."""
        url = f"{self.http_url}/metrics"
        with urllib.request.urlopen(url, timeout=10, context=self.tls_context()) as response:
            return metric_sum(response.read().decode(), name, **labels)

    def memory(self) -> dict[str, int]:
        """``VmRSS`` and ``VmHWM`` (peak RSS), in bytes, of the operator process and its
        admission worker together (the webhook answers from the worker)."""
        assert self.process is not None and self.process.poll() is None, "operator not running"
        sizes = {"VmRSS": 0, "VmHWM": 0}
        workers = child_pids(self.process.pid, b"memwarden.webhook.worker")
        for pid in (self.process.pid, *workers):
            with contextlib.suppress(FileNotFoundError):
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    key, _, value = line.partition(":")
                    if key in sizes:
                        sizes[key] += int(value.split()[0]) * 1024
        return sizes

    def healthy(self) -> bool:
        """The liveness endpoint answers (the process is up and its event loop turns)."""
        return self._healthy()


@contextmanager
def operators_paused() -> Iterator[None]:
    """No memwarden operator runs inside: for tests where another component (a test's own
    evidence server) plays the operator's part on the same objects, as only one controller
    would in a cluster. Operators that were running are started again afterwards."""
    paused = list(_running.values())
    for process in paused:
        process.stop()
    try:
        yield
    finally:
        for process in paused:
            process.start()


def running_operator_logs(size: int = 6000) -> list[tuple[str, str]]:
    """(title, log tail) of every operator process running now: what a failed test's
    report carries, since CI shows nothing else of the operator."""
    return [
        (f"operator log (tail), {process.workdir.name}", process.log_tail(size))
        for process in list(_running.values())
    ]


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


#: The test cluster's copy of the chart's operator-reach policy.
REACH_POLICY = "memwarden-test-operator-reach"


def install_reach_policy(
    kubeconfig: Path, *, toolbox_image: str, evidence_authority: str
) -> list[dict[str, Any]]:
    """memwarden's operator-reach ValidatingAdmissionPolicy (``memwarden.reach``, as the
    chart installs it) for the test operator's ServiceAccount; returns the manifests."""
    docs = operator_reach_policy(
        service_account=OPERATOR_ACCOUNT,
        namespace=OPERATOR_NAMESPACE,
        toolbox_image=toolbox_image,
        evidence_authority=evidence_authority,
        name=REACH_POLICY,
    )
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump_all(docs))
    return docs


def uninstall_reach_policy(kubeconfig: Path) -> None:
    for kind in ("validatingadmissionpolicybinding", "validatingadmissionpolicy"):
        kubectl(kubeconfig, "delete", kind, REACH_POLICY, "--ignore-not-found")


def install_incident_policy(kubeconfig: Path) -> None:
    """memwarden's ValidatingAdmissionPolicies: for MemoryIncidents (excepting the test
    operator's ServiceAccount as the chart excepts the release's), and the guard on that
    account's MemoryPolicy patches; idempotent (every session of the cluster applies the
    same)."""
    operator = service_account_username(namespace=OPERATOR_NAMESPACE, name=OPERATOR_ACCOUNT)
    docs = [
        *incident_admission_policy(operator_username=operator, name=INCIDENT_POLICY),
        # The chart's guard on the operator's policy patches (finalizer removal only).
        *policy_guard(operator_username=operator, name=POLICY_GUARD),
    ]
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump_all(docs))


def least_privilege_kubeconfig(
    kube: Any, *, admin_kubeconfig: Path, workdir: Path, name: str = OPERATOR_ACCOUNT
) -> Path:
    """A kubeconfig for a ServiceAccount holding exactly ``memwarden.rbac``'s rules (the
    chart's), so the operator under test runs as it would in a cluster, not as admin."""
    from kubernetes import client
    from kubernetes.client.rest import ApiException

    from memwarden import rbac

    core, authz = client.CoreV1Api(kube), client.RbacAuthorizationV1Api(kube)
    subject = {"kind": "ServiceAccount", "name": name, "namespace": OPERATOR_NAMESPACE}
    objects: list[tuple[Any, dict[str, Any]]] = [
        (
            lambda b: core.create_namespaced_service_account(OPERATOR_NAMESPACE, b),
            {"metadata": {"name": name}},
        ),
        (
            authz.create_cluster_role,
            {
                "metadata": {"name": name},
                "rules": rbac.policy_rules(scope="cluster", self_signed=False),
            },
        ),
        (
            authz.create_cluster_role_binding,
            {
                "metadata": {"name": name},
                "subjects": [subject],
                "roleRef": {
                    "apiGroup": "rbac.authorization.k8s.io",
                    "kind": "ClusterRole",
                    "name": name,
                },
            },
        ),
    ]
    namespaced = rbac.policy_rules(scope="namespace", self_signed=False)
    if namespaced:
        objects += [
            (
                lambda b: authz.create_namespaced_role(OPERATOR_NAMESPACE, b),
                {"metadata": {"name": name}, "rules": namespaced},
            ),
            (
                lambda b: authz.create_namespaced_role_binding(OPERATOR_NAMESPACE, b),
                {
                    "metadata": {"name": name},
                    "subjects": [subject],
                    "roleRef": {
                        "apiGroup": "rbac.authorization.k8s.io",
                        "kind": "Role",
                        "name": name,
                    },
                },
            ),
        ]
    for create, body in objects:
        try:
            create(body)
        except ApiException as exc:
            if exc.status != 409:
                raise
    if namespaced:  # the rules may have changed since an earlier session created the Role
        authz.replace_namespaced_role(name, OPERATOR_NAMESPACE, objects[3][1])
    authz.replace_cluster_role(name, objects[1][1])
    token = core.create_namespaced_service_account_token(
        name, OPERATOR_NAMESPACE, {"spec": {"expirationSeconds": 6 * 3600}}
    ).status.token
    admin = yaml.safe_load(admin_kubeconfig.read_text())
    cluster = admin["clusters"][0]
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [cluster],
        "users": [{"name": name, "user": {"token": token}}],
        "contexts": [{"name": "operator", "context": {"cluster": cluster["name"], "user": name}}],
        "current-context": "operator",
    }
    path = workdir / "operator.kubeconfig"
    path.write_text(yaml.safe_dump(config))
    path.chmod(0o600)
    return path
