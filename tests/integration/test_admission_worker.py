"""The admission webhook's own process (``webhook/worker.py``), on the real control plane:
it answers for the operator, follows policy changes, and comes back when killed."""

from __future__ import annotations

import os
import signal
import socket
import time
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client

from memwarden_testing.builders import make_policy, make_policy_spec
from memwarden_testing.cluster import (
    child_pids,
    create_pod,
    kubectl,
    wait_for,
    wait_policy_indexed,
)
from memwarden_testing.operator import OperatorProcess

GO = {"memoryLimit": "90%", "gogc": "100"}


def apply(kubeconfig: Path, obj: dict[str, Any]) -> None:
    kubectl(kubeconfig, "apply", "-f", "-", input=yaml.safe_dump(obj))


def workers(operator: OperatorProcess) -> list[int]:
    """The operator's children running the admission worker."""
    assert operator.process is not None
    return child_pids(operator.process.pid, b"memwarden.webhook.worker")


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


def limit_of(pod: dict[str, object]) -> str | None:
    containers = pod["spec"]["containers"]  # type: ignore[index]
    return containers[0]["resources"].get("limits", {}).get("memory")  # type: ignore[no-any-return]


def test_a_killed_worker_is_replaced_and_gets_the_whole_index(
    memwarden: OperatorProcess, kube: client.ApiClient, namespace: str
) -> None:
    (worker,) = wait_for(lambda: workers(memwarden), timeout=30, what="the admission worker")
    policy = make_policy(
        namespace=namespace,
        spec=make_policy_spec(memory={"request": "512Mi", "limit": "1Gi"}, go=GO),
    )
    apply(memwarden.kubeconfig, policy)
    wait_policy_indexed(kube, namespace, "checkout")
    mutated = memwarden.metric("memwarden_webhook_requests_total", outcome="mutated")
    assert limit_of(create_pod(kube, namespace, "before", labels={"app": "checkout"})) == "1Gi"
    # The worker's answers reach the operator's metrics (its reports, once a second).
    wait_for(
        lambda: memwarden.metric("memwarden_webhook_requests_total", outcome="mutated") > mutated,
        timeout=15,
        what="the worker's answer counted in the operator's metrics",
    )

    os.kill(worker, signal.SIGKILL)
    (replacement,) = wait_for(
        lambda: (
            [pid for pid in workers(memwarden) if pid != worker]
            if listening(memwarden.webhook_port)
            else []
        ),
        timeout=30,
        what="a new admission worker listening",
    )
    assert replacement != worker
    # It started from the whole index, and follows a change made after it started.
    assert limit_of(create_pod(kube, namespace, "after", labels={"app": "checkout"})) == "1Gi"
    policy["spec"]["memory"]["limit"] = "2Gi"
    apply(memwarden.kubeconfig, policy)

    def changed_limit() -> str | None:
        name = f"changed-{os.urandom(3).hex()}"
        limit = limit_of(create_pod(kube, namespace, name, labels={"app": "checkout"}))
        return limit if limit == "2Gi" else None

    assert wait_for(changed_limit, timeout=30, what="the changed policy applied") == "2Gi"
    assert memwarden.healthy()


def test_a_sigterm_to_the_process_group_leaves_shutdown_to_the_operator(
    memwarden: OperatorProcess,
) -> None:
    """Tests and shells signal the whole group: the worker must not die first (admission
    gone while the operator still runs) nor be restarted as if it had crashed."""
    (worker,) = wait_for(lambda: workers(memwarden), timeout=30, what="the admission worker")
    os.kill(worker, signal.SIGTERM)
    # Still the same process, still answering, for a second after (polled to a deadline).
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert workers(memwarden) == [worker]
        assert listening(memwarden.webhook_port)
        time.sleep(0.05)
    memwarden.stop()  # the operator closes the worker's stdin: it stops serving and exits
    wait_for(lambda: not Path(f"/proc/{worker}").exists(), timeout=15, what="the worker gone")
