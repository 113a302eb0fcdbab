"""Run the node simulator (``hack/nodesim``, test infrastructure) as a process in tests.

``NodeSimulator`` starts ``python -m nodesim`` in its own session on a free metrics port,
waits until its Node is Ready and schedulable, and at ``stop`` terminates it and kills
every process it started (by session, from its pid registry), so a test run leaves no
orphans even if the simulator crashed.

The control plane is shared (by tests and by people): ``taint=True`` registers the node
with a NoSchedule taint, and ``pin(spec)`` adds the matching toleration and node selector
to a pod spec, so only the test's own pods land on it.

    with NodeSimulator(kubeconfig=devcluster, state_dir=tmp_path) as sim:
        ...
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from memwarden_testing.cluster import REPO, unique_name, wait_for

PYTHON = REPO / ".venv" / "bin" / "python"
TAINT_KEY = "memwarden.dev/nodesim-test"


def _pod_cidr() -> str:
    """A loopback /24 of its own for each simulator, away from nodesim's default
    127.100.0.0/16 (a simulator run by hand): simulators of concurrent sessions (other
    worktrees, other clusters, the demo) then do not hand out the same pod address, on
    which workloads bind their ports."""
    return f"127.{random.randint(101, 199)}.{random.randint(0, 255)}.0/24"


@dataclass
class NodeSimulator:
    """One simulator process and its Node; a context manager."""

    kubeconfig: Path
    state_dir: Path
    node_name: str = field(default_factory=lambda: unique_name("memwarden-sim"))
    taint: bool = False
    pod_cidr: str = field(default_factory=_pod_cidr)
    #: Stop when the starting process goes away (tests); False for the demo, which
    #: leaves the simulator running and stops it later with ``stop_detached``.
    exit_with_parent: bool = True
    delete_node_on_exit: bool = True
    extra_args: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    info: dict[str, Any] = field(default_factory=dict)
    #: Session ids of processes the simulator left running (killed at ``stop``).
    leftovers: list[int] = field(default_factory=list)

    @property
    def log_path(self) -> Path:
        return self.state_dir / f"nodesim-{self.node_name}.out"

    @property
    def state_file(self) -> Path:
        return self.state_dir / f"{self.node_name}.json"

    @property
    def pid_registry(self) -> Path:
        return self.state_dir / f"{self.node_name}.pids"

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.info['metrics_port']}"

    @property
    def metrics_url(self) -> str:
        return f"{self.base_url}/metrics/cadvisor"

    def command(self) -> list[str]:
        args = [
            str(PYTHON),
            "-m",
            "nodesim",
            f"--kubeconfig={self.kubeconfig}",
            f"--node-name={self.node_name}",
            f"--state-dir={self.state_dir}",
            "--metrics-port=0",
            f"--pod-cidr={self.pod_cidr}",
        ]
        if self.delete_node_on_exit:
            args.append("--delete-node-on-exit")
        if self.exit_with_parent:
            args.append("--exit-with-parent")  # a killed pytest leaves no node behind
        if self.taint:
            args.append(f"--taint={TAINT_KEY}={self.node_name}:NoSchedule")
        return [*args, *self.extra_args]

    def start(self, *, timeout: float = 60) -> NodeSimulator:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self.state_file.unlink(missing_ok=True)
        pythonpath = os.pathsep.join(
            p for p in (str(REPO / "hack"), os.environ.get("PYTHONPATH", "")) if p
        )
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            self.command(),
            env={**os.environ, "PYTHONPATH": pythonpath},
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
            cwd=REPO,
        )
        log.close()
        wait_for(self._state_written, timeout=timeout, what="node simulator state file")
        self.info = json.loads(self.state_file.read_text())
        wait_for(self._node_schedulable, timeout=timeout, what=f"node {self.node_name} Ready")
        return self

    def _state_written(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"node simulator exited: {self.log_tail()}")
        return self.state_file.exists()

    def _node_schedulable(self) -> bool:
        from nodesim.kubeapi import Kube, NotFound, node_path  # hack/ is on pythonpath

        kube = Kube.from_kubeconfig(self.kubeconfig)
        try:
            node = kube.get(node_path(self.node_name))
        except NotFound:
            return False
        finally:
            kube.close()
        ready = any(
            c.get("type") == "Ready" and c.get("status") == "True"
            for c in (node.get("status") or {}).get("conditions") or []
        )
        blocking = [
            t["key"]
            for t in (node.get("spec") or {}).get("taints") or []
            if t["key"].startswith("node.kubernetes.io/")
            and t.get("effect") in ("NoSchedule", "NoExecute")
        ]
        return ready and not blocking

    def stop(self, *, timeout: float = 40) -> None:
        """SIGTERM the simulator, SIGKILL it if it hangs, then kill anything it left."""
        from nodesim.procs import pids_alive, reap_registry  # hack/ is on pythonpath

        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        # Normally empty: the simulator stops what it started. Whatever a crash left is
        # killed here, by session, so no test run leaves processes behind.
        self.leftovers = reap_registry(self.pid_registry, grace=1.0)
        wait_for(
            lambda: not pids_alive(self.leftovers),
            timeout=10,
            what=f"leftover processes {self.leftovers} of the node simulator to die",
        )

    @staticmethod
    def stop_detached(*, state_dir: Path, node_name: str, timeout: float = 40) -> bool:
        """Stop a simulator started by another process (the demo's ``down``).

        Finds it by its state file; False when none was running.
        """
        from nodesim.procs import pids_alive, reap_registry  # hack/ is on pythonpath

        state = state_dir / f"{node_name}.json"
        try:
            pid = int(json.loads(state.read_text())["pid"])
        except (OSError, ValueError, KeyError):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pids_alive([pid]), timeout=timeout, what=f"nodesim pid {pid}")
        leftovers = reap_registry(state_dir / f"{node_name}.pids", grace=1.0)
        wait_for(lambda: not pids_alive(leftovers), timeout=10, what="nodesim leftovers")
        state.unlink(missing_ok=True)
        return True

    def __enter__(self) -> NodeSimulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- helpers for tests -----------------------------------------------------------

    def pin(self, spec: dict[str, Any]) -> dict[str, Any]:
        """``spec`` (a pod spec dict) scheduled onto this node only."""
        pinned = dict(spec)
        pinned["nodeSelector"] = {
            **(spec.get("nodeSelector") or {}),
            "kubernetes.io/hostname": self.node_name,
        }
        if self.taint:
            toleration = {
                "key": TAINT_KEY,
                "operator": "Equal",
                "value": self.node_name,
                "effect": "NoSchedule",
            }
            pinned["tolerations"] = [*(spec.get("tolerations") or []), toleration]
        return pinned

    def get(self, path: str) -> bytes:
        with urllib.request.urlopen(self.base_url + path, timeout=10) as response:
            body: bytes = response.read()
            return body

    def cadvisor(self) -> str:
        return self.get("/metrics/cadvisor").decode()

    def debug_pods(self) -> list[dict[str, Any]]:
        pods: list[dict[str, Any]] = json.loads(self.get("/debug/pods"))
        return pods

    def pod_pids(self, namespace: str, name: str) -> dict[str, list[int]]:
        """Container name -> pids (leader first) of a pod the simulator runs."""
        for pod in self.debug_pods():
            if pod["namespace"] == namespace and pod["name"] == name:
                return {
                    c["name"]: ([c["pid"]] if c["pid"] else [])
                    + [p for p in c["pids"] if p != c["pid"]]
                    for c in pod["containers"]
                }
        return {}

    def container_log(
        self, namespace: str, pod: str, container: str, *, previous: bool = False
    ) -> str:
        """The output of the container's current (or previous) instance."""
        query = "?previous=true" if previous else ""
        path = f"/containerLogs/{namespace}/{pod}/{container}{query}"
        return self.get(path).decode(errors="replace")

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


@pytest.fixture(scope="session")
def node_simulator(
    devcluster: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[NodeSimulator]:
    """A node simulator for the session (untainted: any pod may land on it).

    Register it with ``pytest_plugins = ["memwarden_testing.nodesim"]`` in the root
    conftest, or import it into a test module.
    """
    with NodeSimulator(kubeconfig=devcluster, state_dir=tmp_path_factory.mktemp("nodesim")) as sim:
        yield sim


def read_pod(core: client.CoreV1Api, namespace: str, name: str) -> dict[str, Any]:
    """The pod as the API server holds it, as plain JSON-shaped dicts."""
    pod = core.read_namespaced_pod(name, namespace)
    return dict(core.api_client.sanitize_for_serialization(pod))


def running_pod(
    core: client.CoreV1Api, namespace: str, name: str, *, timeout: float = 30
) -> dict[str, Any]:
    """Wait until the pod is Running and Ready with an address; the pod."""

    def ready() -> dict[str, Any] | None:
        pod = read_pod(core, namespace, name)
        status = pod.get("status") or {}
        ok = status.get("phase") == "Running" and any(
            c["type"] == "Ready" and c["status"] == "True" for c in status.get("conditions", [])
        )
        return pod if ok and status.get("podIP") else None

    return wait_for(ready, timeout=timeout, what=f"pod {name} Running and Ready")
