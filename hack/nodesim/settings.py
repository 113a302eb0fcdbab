"""The node simulator's settings: one frozen object, built once from the command line.

Test infrastructure. Each default says why it has that value.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class ImageRule:
    """How to run a container whose image reference contains ``pattern``.

    ``entrypoint`` plays the image's ENTRYPOINT (a container's ``command`` replaces it,
    its ``args`` follow it, as Kubernetes does). When ``listen_env`` is set, the
    simulator sets that variable to ``<podIP>:<port>`` unless the pod sets it, so two
    pods of the same program never fight over a port.
    """

    pattern: str
    entrypoint: tuple[str, ...]
    listen_env: str | None = None
    #: The port used in ``listen_env`` when the container declares no ``containerPort``:
    #: 6060 is memwarden's default ``capture.pprofPort``.
    default_port: int = 6060
    #: The image's default user (uid, gid), its ``USER``: what the container runs as when
    #: neither it nor its pod sets ``runAsUser``. Images no rule matches run as root.
    user: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class NodeResources:
    """The Node's capacity (= allocatable: the simulator reserves nothing)."""

    #: Enough for a handful of test pods with CPU requests; nothing is enforced.
    cpu: str = "4"
    #: Scheduling room only; memory is enforced per container from its own limit.
    memory: str = "8Gi"
    #: The kubelet's default ``maxPods``.
    pods: int = 110
    #: Some workloads request ephemeral storage; nothing is enforced.
    ephemeral_storage: str = "50Gi"


@dataclass(frozen=True)
class Settings:
    kubeconfig: Path
    #: The name in the brief and the demo; tests use unique names.
    node_name: str = "memwarden-sim-0"
    resources: NodeResources = field(default_factory=NodeResources)
    #: Logs, pid registry, runtime files. Under .devcluster/ so ``git status`` stays clean.
    state_dir: Path = REPO / ".devcluster" / "nodesim"
    metrics_host: str = "127.0.0.1"
    #: 0 picks a free port; the chosen one is printed and written to the state file.
    metrics_port: int = 0
    #: Pod addresses: loopback, which Linux routes to ``lo`` for all of 127.0.0.0/8, so
    #: every pod can bind its own ports without clashing. A /16 away from 127.0.0.1.
    pod_cidr: str = "127.100.0.0/16"
    #: What the Node reports as its InternalIP, and pods as their hostIP.
    host_ip: str = "127.0.0.1"
    images: tuple[ImageRule, ...] = ()
    #: The kubelet renews its Lease every 10 s (a quarter of the 40 s lease duration).
    lease_renew_seconds: float = 10.0
    lease_duration_seconds: int = 40
    #: Node status heartbeats; the Lease already proves liveness, this keeps
    #: ``lastHeartbeatTime`` fresh for humans and tools that read conditions.
    status_heartbeat_seconds: float = 20.0
    #: RSS sampling (and OOM enforcement) period: a leak of 64 MiB/s overshoots a limit
    #: by at most ~13 MiB before the kill.
    sample_seconds: float = 0.2
    #: Pod workers' housekeeping period: restart latency and status freshness.
    tick_seconds: float = 0.2
    #: Restart back-off: base × 2^(n-1), capped. The kubelet uses 10 s / 300 s; tests need
    #: restarts within seconds.
    backoff_base_seconds: float = 1.0
    backoff_max_seconds: float = 20.0
    #: A run longer than this resets the back-off (the kubelet uses 10 minutes).
    backoff_reset_seconds: float = 60.0
    #: Grace given to processes when the simulator itself stops.
    shutdown_grace_seconds: float = 5.0
    delete_node_on_exit: bool = False
    #: Extra labels on the Node.
    labels: tuple[tuple[str, str], ...] = ()
    #: Taints on the Node, (key, value, effect): tests on a shared control plane taint
    #: their node so nobody else's pods land on it.
    taints: tuple[tuple[str, str, str], ...] = ()

    def describe(self) -> str:
        """One line per setting, for the start-up log."""
        lines = [f"{name}={getattr(self, name)!r}" for name in self.__dataclass_fields__]
        return "\n".join(lines)


def find_memwarden() -> str:
    """The project's ``memwarden`` CLI (the toolbox entrypoint)."""
    candidate = REPO / ".venv" / "bin" / "memwarden"
    if candidate.exists():
        return str(candidate)
    return shutil.which("memwarden") or str(candidate)


def find_leaky() -> str:
    """The leaky binary: ``$MEMWARDEN_LEAKY_BIN``, else built (cached) by hack/build-leaky.sh."""
    explicit = os.environ.get("MEMWARDEN_LEAKY_BIN")
    if explicit:
        return explicit
    result = subprocess.run(
        ["bash", str(REPO / "hack" / "build-leaky.sh")],
        check=True,
        stdout=subprocess.PIPE,
        text=True,
        timeout=600,
    )
    return result.stdout.strip().splitlines()[-1]


def default_images(*, leaky: str, memwarden: str) -> tuple[ImageRule, ...]:
    """The built-in image mapping; anything unmatched runs a placeholder process."""
    # Users as in e2e/kind: leaky's image is distroless/static (root by default), memwarden's
    # (operator and toolbox) says USER 65532:65532.
    nonroot = (65532, 65532)
    return (
        ImageRule(pattern="memwarden/leaky", entrypoint=(leaky,), listen_env="LEAKY_LISTEN"),
        ImageRule(pattern="memwarden/toolbox", entrypoint=(memwarden,), user=nonroot),
        ImageRule(pattern="memwarden/memwarden", entrypoint=(memwarden,), user=nonroot),
    )
