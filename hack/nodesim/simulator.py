"""Wiring: the simulator's parts started in order and stopped in reverse. No logic here.

Test infrastructure. Start: reap leftovers of a crashed run, start the sampler and the
HTTP server, register the Node (retrying), start the Lease loop and the pod watch, write
the state file. Stop (on ``stop``): every pod worker stops its processes, the Node is
deleted or marked NotReady, the state file is removed.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import sys
import threading
from pathlib import Path
from typing import Any

from memwarden.quantity import parse_bytes, parse_millicores
from memwarden.webhook import certs
from nodesim.allocation import AllocationBook
from nodesim.ipam import AddressPool
from nodesim.kubeapi import ApiError, Kube
from nodesim.metrics import Endpoints, MetricsServer
from nodesim.node import NodeAgent
from nodesim.pods import PodManager, Runtime
from nodesim.procs import Supervisor, reap_registry
from nodesim.resize import PodRequest
from nodesim.settings import REPO, Settings

log = logging.getLogger("nodesim")

#: The kubelet endpoint's certificate lives as long as a simulator run, at most this.
CERT_VALIDITY = dt.timedelta(days=30)


def state_file(settings: Settings) -> Path:
    """Where a running simulator says who it is: ``<state-dir>/<node>.json``."""
    return settings.state_dir / f"{settings.node_name}.json"


def pid_registry(settings: Settings) -> Path:
    """The directory of pid files of the processes the simulator started."""
    return settings.state_dir / f"{settings.node_name}.pids"


def base_env(settings: Settings) -> dict[str, str]:
    """The environment every container starts from (the pod's own env comes on top).

    Not the simulator's environment: containers do not inherit their runtime's. PATH
    holds the mapped programs' directories first, so ``command: [memwarden, ...]`` works.
    """
    dirs = [str(Path(rule.entrypoint[0]).parent) for rule in settings.images]
    dirs += [str(REPO / ".venv" / "bin"), os.environ.get("PATH", os.defpath)]
    seen: list[str] = []
    for directory in ":".join(dirs).split(":"):
        if directory and directory not in seen:
            seen.append(directory)
    env = {"PATH": ":".join(seen)}
    # PYTHONPATH: the toolbox "image" is the code under test (a worktree's, not the
    # editable install's), as a real toolbox image is built from the operator's version.
    for name in ("HOME", "LANG", "LC_ALL", "TZ", "PYTHONPATH"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def serving_certificate(settings: Settings) -> tuple[Path, Path]:
    """A throwaway self-signed serving certificate for the kubelet endpoint."""
    directory = settings.state_dir / f"{settings.node_name}.tls"
    directory.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC)
    ca = certs.make_ca(common_name=f"{settings.node_name}-ca", now=now, valid_for=CERT_VALIDITY)
    leaf = certs.issue(
        ca=ca,
        common_name=settings.node_name,
        now=now,
        valid_for=CERT_VALIDITY,
        server_names=(settings.host_ip, "localhost", settings.node_name),
    )
    cert, key = directory / "kubelet.crt", directory / "kubelet.key"
    certs.write_pem(leaf, cert_path=cert, key_path=key)
    return cert, key


class Simulator:
    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def run(self, stop: threading.Event) -> int:
        settings = self.settings
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        leftovers = reap_registry(pid_registry(settings))
        if leftovers:
            log.warning("killed %d process sessions left by a previous run", len(leftovers))
        kube = Kube.from_kubeconfig(settings.kubeconfig)
        supervisor = Supervisor(registry=pid_registry(settings), interval=settings.sample_seconds)
        supervisor.start_sampling()
        rt = Runtime(
            kube=kube,
            settings=settings,
            supervisor=supervisor,
            addresses=AddressPool(settings.pod_cidr),
            allocations=AllocationBook(
                allocatable=PodRequest(
                    cpu=parse_millicores(settings.resources.cpu),
                    memory=parse_bytes(settings.resources.memory),
                )
            ),
            python=sys.executable,
            base_env=base_env(settings),
        )
        pods = PodManager(rt)
        server = MetricsServer(
            host=settings.metrics_host,
            port=settings.metrics_port,
            endpoints=Endpoints(
                samples=pods.samples,
                machine_memory_bytes=parse_bytes(settings.resources.memory),
                log_range=pods.log_range,
                debug_pods=pods.debug,
            ),
        )
        server.start()
        kubelet = MetricsServer(
            host=settings.host_ip,
            port=0,
            endpoints=server.endpoints,
            tls=serving_certificate(settings),
        )
        kubelet.start()
        node = NodeAgent(kube=kube, settings=settings, kubelet_port=kubelet.port)
        try:
            while True:
                try:
                    node.register()
                    break
                except ApiError as exc:
                    log.warning("registering node %s failed (retrying): %s", node.name, exc)
                    if stop.wait(2.0):
                        return 1
            node.start()
            pods.start()
            url = f"http://{settings.metrics_host}:{server.port}"
            info: dict[str, Any] = {
                "node": settings.node_name,
                "pid": os.getpid(),
                "metrics_port": server.port,
                "metrics_url": f"{url}/metrics/cadvisor",
                "debug_url": f"{url}/debug/pods",
                "kubelet_port": kubelet.port,
                "state_dir": str(settings.state_dir),
                "pid_registry": str(pid_registry(settings)),
            }
            path = state_file(settings)
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            tmp.replace(path)
            print(
                f"nodesim: node {settings.node_name} registered; "
                f"metrics {url}/metrics/cadvisor; state {path}",
                flush=True,
            )
            stop.wait()
            log.info("stopping: pods first, then the node")
        finally:
            pods.shutdown(timeout=settings.shutdown_grace_seconds + 15)
            supervisor.stop_sampling()
            reap_registry(pid_registry(settings), grace=0.5)
            node.shut_down(delete=settings.delete_node_on_exit)
            server.stop()
            kubelet.stop()
            state_file(settings).unlink(missing_ok=True)
            kube.close()
        return 0
