"""The local Kubernetes control plane for tests and the demo (test infrastructure).

Real etcd, kube-apiserver, kube-controller-manager and kube-scheduler, built from the
pinned Go modules by ``hack/controlplane/build.sh``, run as local processes on loopback.
Certificates, service-account keys and kubeconfigs are made here with ``cryptography``.
Everything lives under ``.devcluster/`` (git-ignored): pids, logs, certs, etcd data.

    python hack/devcluster.py up      # idempotent; returns once /readyz is ok
    python hack/devcluster.py down    # stops what ``up`` started; no listener left
    python hack/devcluster.py status

There is no node here: pods stay Pending until the node simulator registers one.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from memwarden.webhook import certs

REPO = Path(__file__).resolve().parent.parent
BUILD_SCRIPT = REPO / "hack" / "controlplane" / "build.sh"


@dataclass(frozen=True)
class Layout:
    """Where the cluster keeps its state, and which loopback ports it uses."""

    root: Path
    etcd_port: int = int(os.environ.get("MEMWARDEN_ETCD_PORT", "23790"))
    etcd_peer_port: int = int(os.environ.get("MEMWARDEN_ETCD_PEER_PORT", "23800"))
    apiserver_port: int = int(os.environ.get("MEMWARDEN_APISERVER_PORT", "16443"))

    @property
    def pki(self) -> Path:
        return self.root / "pki"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def pids(self) -> Path:
        return self.root / "pids"

    @property
    def kubeconfig(self) -> Path:
        return self.root / "kubeconfig"

    @property
    def server(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    def ports(self) -> list[int]:
        return [self.etcd_port, self.etcd_peer_port, self.apiserver_port]


def default_layout() -> Layout:
    return Layout(root=Path(os.environ.get("MEMWARDEN_DEVCLUSTER", REPO / ".devcluster")))


# --- certificates -------------------------------------------------------------------

CERT_VALIDITY = dt.timedelta(days=365)


def ensure_pki(layout: Layout) -> None:
    """Create the CA, serving and client certificates and the SA key pair once."""
    pki = layout.pki
    if (pki / "done").exists():
        return
    pki.mkdir(parents=True, exist_ok=True)
    pki.chmod(0o700)
    now = dt.datetime.now(dt.UTC)
    ca = certs.make_ca(common_name="memwarden-devcluster-ca", now=now, valid_for=CERT_VALIDITY)
    certs.write_pem(ca, cert_path=pki / "ca.crt", key_path=pki / "ca.key")
    identities: dict[str, dict[str, Any]] = {
        "apiserver": {
            "common_name": "kube-apiserver",
            "server_names": (
                "127.0.0.1",
                "localhost",
                "10.0.0.1",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ),
        },
        "admin": {"common_name": "memwarden-admin", "organization": "system:masters"},
        "controller-manager": {"common_name": "system:kube-controller-manager"},
        "scheduler": {"common_name": "system:kube-scheduler"},
    }
    for file_name, spec in identities.items():
        pair = certs.issue(ca=ca, now=now, valid_for=CERT_VALIDITY, **spec)
        certs.write_pem(pair, cert_path=pki / f"{file_name}.crt", key_path=pki / f"{file_name}.key")

    # Service-account tokens are signed with RSA (the API server's default algorithm).
    sa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    (pki / "sa.key").write_bytes(
        sa_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (pki / "sa.key").chmod(0o600)
    (pki / "sa.pub").write_bytes(
        sa_key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (pki / "done").write_text("ok\n")


def write_kubeconfig(layout: Layout, *, identity: str, path: Path) -> None:
    """A kubeconfig that authenticates with the client certificate of ``identity``."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "memwarden-dev",
                "cluster": {
                    "server": layout.server,
                    "certificate-authority": str(layout.pki / "ca.crt"),
                },
            }
        ],
        "users": [
            {
                "name": identity,
                "user": {
                    "client-certificate": str(layout.pki / f"{identity}.crt"),
                    "client-key": str(layout.pki / f"{identity}.key"),
                },
            }
        ],
        "contexts": [
            {
                "name": "memwarden-dev",
                "context": {
                    "cluster": "memwarden-dev",
                    "user": identity,
                    "namespace": "default",
                },
            }
        ],
        "current-context": "memwarden-dev",
    }
    path.write_text(json.dumps(config, indent=2) + "\n")
    path.chmod(0o600)


# --- processes ----------------------------------------------------------------------


def build_binaries() -> Path:
    """Run the cached build; returns the bin directory."""
    result = subprocess.run(
        ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
    )
    return Path(result.stdout.strip().splitlines()[-1])


def component_commands(layout: Layout, bin_dir: Path) -> dict[str, list[str]]:
    """The command line of each component, in start order."""
    pki = layout.pki
    etcd_url = f"http://127.0.0.1:{layout.etcd_port}"
    peer_url = f"http://127.0.0.1:{layout.etcd_peer_port}"
    return {
        "etcd": [
            str(bin_dir / "etcd"),
            "--name=devcluster",
            f"--data-dir={layout.root / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=devcluster={peer_url}",
            "--listen-metrics-urls=",
            # A throwaway test store: fsync buys nothing here and costs seconds per test.
            "--unsafe-no-fsync",
            "--log-level=warn",
        ],
        "kube-apiserver": [
            str(bin_dir / "kube-apiserver"),
            f"--etcd-servers={etcd_url}",
            f"--cert-dir={pki}",
            f"--tls-cert-file={pki / 'apiserver.crt'}",
            f"--tls-private-key-file={pki / 'apiserver.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={layout.apiserver_port}",
            "--service-cluster-ip-range=10.0.0.0/24",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={pki / 'sa.pub'}",
            f"--service-account-signing-key-file={pki / 'sa.key'}",
            "--authorization-mode=Node,RBAC",
            "--allow-privileged=true",
            "--endpoint-reconciler-type=none",
            "--v=1",
        ],
        "kube-controller-manager": [
            str(bin_dir / "kube-controller-manager"),
            f"--kubeconfig={layout.root / 'controller-manager.kubeconfig'}",
            f"--authentication-kubeconfig={layout.root / 'controller-manager.kubeconfig'}",
            f"--authorization-kubeconfig={layout.root / 'controller-manager.kubeconfig'}",
            f"--service-account-private-key-file={pki / 'sa.key'}",
            f"--root-ca-file={pki / 'ca.crt'}",
            "--use-service-account-credentials=true",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--v=1",
        ],
        "kube-scheduler": [
            str(bin_dir / "kube-scheduler"),
            f"--kubeconfig={layout.root / 'scheduler.kubeconfig'}",
            f"--authentication-kubeconfig={layout.root / 'scheduler.kubeconfig'}",
            f"--authorization-kubeconfig={layout.root / 'scheduler.kubeconfig'}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
            "--secure-port=0",
            "--v=1",
        ],
    }


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of ours is dead for our purposes.
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def running_pids(layout: Layout) -> dict[str, int]:
    """Components whose pid file names a live process."""
    alive: dict[str, int] = {}
    if not layout.pids.exists():
        return alive
    for pid_file in layout.pids.glob("*.pid"):
        try:
            pid = int(pid_file.read_text().strip())
        except ValueError:
            continue
        if _pid_alive(pid):
            alive[pid_file.stem] = pid
    return alive


def _start(layout: Layout, name: str, command: list[str]) -> int:
    log = (layout.logs / f"{name}.log").open("ab")
    process = subprocess.Popen(
        command,
        stdout=log,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        start_new_session=True,
        cwd=layout.root,
    )
    (layout.pids / f"{name}.pid").write_text(f"{process.pid}\n")
    return process.pid


def _port_open(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def _wait(what: str, predicate: object, *, timeout: float, layout: Layout, log: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    tail = (layout.logs / f"{log}.log").read_text(errors="replace")[-3000:]
    raise SystemExit(
        f"devcluster: {what} not ready after {timeout:.0f}s; tail of {log}.log:\n{tail}"
    )


def _readyz(layout: Layout) -> bool:
    context = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
    context.load_cert_chain(str(layout.pki / "admin.crt"), str(layout.pki / "admin.key"))
    try:
        with urllib.request.urlopen(f"{layout.server}/readyz", context=context, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def _default_service_account_exists(layout: Layout) -> bool:
    context = ssl.create_default_context(cafile=str(layout.pki / "ca.crt"))
    context.load_cert_chain(str(layout.pki / "admin.crt"), str(layout.pki / "admin.key"))
    url = f"{layout.server}/api/v1/namespaces/default/serviceaccounts/default"
    try:
        with urllib.request.urlopen(url, context=context, timeout=2) as r:
            return bool(r.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def up(layout: Layout) -> None:
    """Start whatever is not running; return once the API is ready and controllers work."""
    started = time.monotonic()
    bin_dir = build_binaries()
    for directory in (layout.root, layout.logs, layout.pids):
        directory.mkdir(parents=True, exist_ok=True)
    ensure_pki(layout)
    write_kubeconfig(layout, identity="admin", path=layout.kubeconfig)
    write_kubeconfig(
        layout, identity="controller-manager", path=layout.root / "controller-manager.kubeconfig"
    )
    write_kubeconfig(layout, identity="scheduler", path=layout.root / "scheduler.kubeconfig")

    alive = running_pids(layout)
    commands = component_commands(layout, bin_dir)
    for name, command in commands.items():
        if name in alive:
            continue
        if name == "etcd" and _port_open(layout.etcd_port):
            raise SystemExit(f"devcluster: port {layout.etcd_port} is taken by another process")
        if name == "kube-apiserver" and _port_open(layout.apiserver_port):
            raise SystemExit(
                f"devcluster: port {layout.apiserver_port} is taken by another process"
            )
        _start(layout, name, command)
        if name == "etcd":
            _wait("etcd", lambda: _port_open(layout.etcd_port), timeout=30, layout=layout, log=name)
        if name == "kube-apiserver":
            _wait(
                "kube-apiserver /readyz",
                lambda: _readyz(layout),
                timeout=120,
                layout=layout,
                log=name,
            )
    _wait(
        "kube-apiserver /readyz",
        lambda: _readyz(layout),
        timeout=120,
        layout=layout,
        log="kube-apiserver",
    )
    # The ServiceAccount admission plugin refuses pods until the controller-manager has
    # made the namespace's default ServiceAccount: wait for it so callers can create pods.
    _wait(
        "default ServiceAccount",
        lambda: _default_service_account_exists(layout),
        timeout=60,
        layout=layout,
        log="kube-controller-manager",
    )
    print(
        f"devcluster: up in {time.monotonic() - started:.1f}s; "
        f"kubeconfig {layout.kubeconfig}; server {layout.server}"
    )


def down(layout: Layout) -> None:
    """Stop every process ``up`` started (newest first) and wait until its ports are free."""
    alive = running_pids(layout)
    for name in reversed(list(component_commands(layout, Path("/")).keys())):
        pid = alive.get(name)
        if pid is None:
            continue
        _signal_group(pid, signal.SIGTERM)
        deadline = time.monotonic() + 20
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.1)
        if _pid_alive(pid):
            _signal_group(pid, signal.SIGKILL)
    for pid_file in layout.pids.glob("*.pid") if layout.pids.exists() else []:
        pid_file.unlink()
    deadline = time.monotonic() + 20
    while any(_port_open(p) for p in layout.ports()) and time.monotonic() < deadline:
        time.sleep(0.1)
    busy = [p for p in layout.ports() if _port_open(p)]
    if busy:
        raise SystemExit(f"devcluster: ports still in use after down: {busy}")
    print("devcluster: down")


def _signal_group(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, sig)


def status(layout: Layout) -> int:
    alive = running_pids(layout)
    for name in component_commands(layout, Path("/")):
        print(f"{name:25} {'running pid ' + str(alive[name]) if name in alive else 'stopped'}")
    ready = (layout.pki / "done").exists() and _readyz(layout)
    print(f"{'api /readyz':25} {'ok' if ready else 'not ready'}")
    return 0 if ready else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("action", choices=["up", "down", "status", "build"])
    args = parser.parse_args(argv)
    layout = default_layout()
    if args.action == "up":
        up(layout)
    elif args.action == "down":
        down(layout)
    elif args.action == "build":
        print(build_binaries())
    else:
        return status(layout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
