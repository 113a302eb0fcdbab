"""Two real operator processes with leader election, against the real control plane.

Each test starts its own pair (same namespace, same Lease, different ports) as a
ServiceAccount with the chart's RBAC, Lease rules included: exactly one holds the Lease
and reconciles, the other serves admission; a stopped leader hands over at once, a
killed one within the lease time; and a leader killed in the middle of a capture leaves
the incident to the other, which completes it without a second debug container. The
session's own operator (election off) is paused meanwhile: it would reconcile the same
incidents. Short timings (lease 4 s, renew 3 s, retry 0.5 s) keep the waits short.
"""

from __future__ import annotations

import json
import shutil
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from memwarden.api import GROUP, VERSION
from memwarden_testing.alertmanager import make_alert, make_payload
from memwarden_testing.builders import make_container, make_pod, make_policy, make_policy_spec
from memwarden_testing.cluster import ensure_namespace, kubectl, wait_for
from memwarden_testing.evidence import make_incident
from memwarden_testing.loop import LEAKY_IMAGE, TOOLBOX_IMAGE
from memwarden_testing.nodesim import NodeSimulator
from memwarden_testing.operator import (
    OPERATOR_NAMESPACE,
    OperatorProcess,
    least_privilege_kubeconfig,
    operators_paused,
)
from memwarden_testing.s3 import WeedServer
from memwarden_testing.servicelb import Backend, ServiceLoadBalancer

pytestmark = pytest.mark.integration

LEASE = "memwarden"  # the name rbac.py's Role grants (``leader_lease`` default)
LEASE_SECONDS, RENEW_SECONDS, RETRY_SECONDS = 4.0, 3.0, 0.5
#: The API calls of one attempt and the log line: what a takeover may take beyond the
#: timings on a loaded 2-core machine.
SLACK_SECONDS = 1.5
#: How long a leader's kopf takes to stop on SIGTERM (its workers' idle timeout is 5 s).
KOPF_STOP_SECONDS = 8.0
#: Its own ServiceAccount, so that the session operator's reach policy (which pins the
#: evidence URL to that operator's port) does not apply to the pair's debug containers.
ACCOUNT = "memwarden-test-leader"


@dataclass
class Pair:
    a: OperatorProcess
    b: OperatorProcess
    service: ServiceLoadBalancer
    kube: client.ApiClient
    s3: WeedServer

    def holder(self) -> str | None:
        try:
            lease = client.CoordinationV1Api(self.kube).read_namespaced_lease(
                LEASE, OPERATOR_NAMESPACE
            )
        except client.ApiException as exc:
            if exc.status == 404:
                return None
            raise
        return lease.spec.holder_identity or None

    def wait_holder(self, identity: str, *, timeout: float) -> float:
        """Seconds until ``identity`` holds the Lease (polled every 0.1 s)."""
        started = time.monotonic()
        wait_for(
            lambda: self.holder() == identity,
            timeout=timeout,
            interval=0.1,
            what=f"{identity} holding Lease {LEASE} (holder: {self.holder()})",
        )
        return time.monotonic() - started


def identity_of(process: OperatorProcess) -> str:
    return process.extra_env["MEMWARDEN_LEADER_IDENTITY"]


@pytest.fixture
def pair(
    crds: Path, kube: client.ApiClient, tmp_path: Path, namespace: str, s3_server: WeedServer
) -> Iterator[Pair]:
    """Two operators sharing the Lease, the certificate, the upload key and the evidence
    store (a bucket of the real S3 server: what replicas > 1 need, docs/ha.md), behind one
    "Service" (``servicelb``) in front of their HTTP APIs, probed on ``/readyz``: the
    toolbox's uploads go through it, keeping the pod's source address."""
    ensure_namespace(client.CoreV1Api(kube), OPERATOR_NAMESPACE)
    client.CoordinationV1Api(kube).delete_collection_namespaced_lease(
        OPERATOR_NAMESPACE, field_selector=f"metadata.name={LEASE}"
    )
    identity = least_privilege_kubeconfig(
        kube, admin_kubeconfig=crds, workdir=tmp_path, name=ACCOUNT
    )
    shared = tmp_path / "shared"
    shared.mkdir()
    (shared / "evidence.key").write_text("0" * 64)
    processes = []
    for name in ("a", "b"):
        workdir = tmp_path / name
        workdir.mkdir()
        processes.append(
            OperatorProcess(
                kubeconfig=crds,
                workdir=workdir,
                identity=identity,
                extra_args=[f"--namespace={namespace}"],
                extra_env={
                    "MEMWARDEN_LEADER_ELECTION": "true",
                    "MEMWARDEN_LEADER_IDENTITY": f"replica-{name}",
                    "MEMWARDEN_LEADER_LEASE_DURATION_SECONDS": str(LEASE_SECONDS),
                    "MEMWARDEN_LEADER_RENEW_DEADLINE_SECONDS": str(RENEW_SECONDS),
                    "MEMWARDEN_LEADER_RETRY_PERIOD_SECONDS": str(RETRY_SECONDS),
                    "MEMWARDEN_CAPTURE_TOOLBOX_IMAGE": TOOLBOX_IMAGE,
                    **s3_server.env(),
                    "MEMWARDEN_EVIDENCE_KEY_FILE": str(shared / "evidence.key"),
                },
            )
        )
    a, b = processes
    service = ServiceLoadBalancer(
        [
            Backend(
                name=identity_of(p),
                port=p.http_port,
                readyz_port=p.http_port,
                readyz_ca_file=str(p.ca_file),
            )
            for p in processes
        ]
    )
    service.start()
    for process in processes:
        process.extra_env["MEMWARDEN_EVIDENCE_BASE_URL"] = (
            f"https://127.0.0.1:{service.port}/evidence"
        )
    a.make_certificates()
    for file in ("ca.crt", "tls.crt", "tls.key"):  # one Secret mounted by every replica
        shutil.copy(a.workdir / file, b.workdir / file)
    with operators_paused():
        try:
            yield Pair(a=a, b=b, service=service, kube=kube, s3=s3_server)
        finally:
            for process in processes:
                process.stop()
            service.stop()
            kubectl(
                crds,
                "delete",
                "mutatingwebhookconfiguration",
                a.webhook_name,
                b.webhook_name,
                "--ignore-not-found",
            )


def start_leader_then_follower(pair: Pair) -> None:
    pair.a.start()
    pair.wait_holder("replica-a", timeout=LEASE_SECONDS + 10)
    pair.b.start()
    wait_for(
        lambda: "leader: following" in pair.b.log_tail(20000),
        timeout=10,
        what="replica-b following",
    )
    wait_for(  # a follower is ready too: both in the Service
        lambda: pair.service.ready() == {"replica-a", "replica-b"},
        timeout=10,
        what="both replicas ready in the Service",
    )


def mutated(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any] | None:
    """A server-side dry-run create of a pod through admission; its resources if mutated."""
    pod = make_pod(name, namespace=namespace, labels={"app": "checkout"})
    created = client.CoreV1Api(kube).create_namespaced_pod(namespace, pod, dry_run="All")
    resources = created.spec.containers[0].resources
    return resources.limits if resources and resources.limits else None


def post_alert(process: OperatorProcess, namespace: str) -> tuple[int, dict[str, str]]:
    body = json.dumps(make_payload([make_alert(pod="checkout-1", namespace=namespace)]))
    request = urllib.request.Request(
        process.alertmanager_url,
        data=body.encode(),
        headers={
            "Authorization": f"Bearer {process.alertmanager_token}",
            "Content-Type": "application/json",
        },
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10, context=process.tls_context()) as r:
            return r.status, dict(r.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def test_one_leader_the_follower_admits_and_leadership_moves_on_sigterm_and_sigkill(
    pair: Pair, kube: client.ApiClient, namespace: str, crds: Path
) -> None:
    start_leader_then_follower(pair)
    a, b = pair.a, pair.b
    # Exactly one leader: the Lease names a, and each replica says what it is.
    assert pair.holder() == "replica-a"
    assert a.metric("memwarden_leader") == 1 and b.metric("memwarden_leader") == 0
    lease = client.CoordinationV1Api(kube).read_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
    assert lease.spec.lease_duration_seconds == LEASE_SECONDS

    # The follower serves admission: a webhook pointing at b only mutates pods.
    kubectl(crds, "apply", "-f", "-", input=json.dumps(make_policy(namespace=namespace)))
    b.register_webhook((b.workdir / "ca.crt").read_bytes())
    counter = iter(range(1000))
    limits = wait_for(
        lambda: mutated(kube, namespace, f"probe-{next(counter)}"),
        timeout=30,
        what="a pod admitted with its policy through the follower's webhook",
    )
    assert limits == {"memory": "1Gi"}
    wait_for(  # the admission worker reports its tally once a second
        lambda: b.metric("memwarden_webhook_requests_total", outcome="mutated") >= 1,
        timeout=10,
        what="the follower counting the reviews it mutated",
    )

    # The follower is ready (it serves admission) though it does not reconcile.
    ready = f"{b.http_url}/readyz"
    with urllib.request.urlopen(ready, timeout=5, context=b.tls_context()) as response:
        assert response.status == 200

    # The follower's Alertmanager receiver asks Alertmanager to send again (to the leader).
    status, headers = post_alert(b, namespace)
    assert status == 503 and headers.get("Retry-After"), (status, headers)
    assert post_alert(a, namespace)[0] == 200

    # SIGTERM: a releases the Lease and b takes it at its next retry, not after expiry.
    started = time.monotonic()
    assert a.terminate() == 0
    stopped = time.monotonic() - started
    handover = pair.wait_holder("replica-b", timeout=LEASE_SECONDS + 10)
    total = stopped + handover
    print(f"SIGTERM: leader stopped in {stopped:.2f}s, follower led {handover:.2f}s later")
    assert handover < LEASE_SECONDS / 2, f"waited {handover:.2f}s: the Lease was not released"
    assert "released Lease" in a.log_tail(20000)
    assert b.metric("memwarden_leader") == 1
    assert b.metric("memwarden_leader_transitions_total", transition="acquired") == 1
    # kopf's own stop (its per-object workers' idle timeout, 5 s) dominates; the Lease is
    # released only once nothing of kopf runs any more (docs/ha.md).
    assert stopped < KOPF_STOP_SECONDS, f"the leader took {stopped:.2f}s to stop"
    assert total < KOPF_STOP_SECONDS + RETRY_SECONDS + SLACK_SECONDS

    # SIGKILL: b cannot release; a (restarted, a follower now) takes over once it expires.
    a.start()
    wait_for(lambda: "leader: following" in a.log_tail(20000), timeout=10, what="a following")
    b.kill()
    takeover = pair.wait_holder("replica-a", timeout=LEASE_SECONDS + 10)
    print(f"SIGKILL: follower led {takeover:.2f}s after the leader was killed")
    assert takeover < LEASE_SECONDS + RETRY_SECONDS + SLACK_SECONDS
    assert a.metric("memwarden_leader") == 1


def capture_policy(namespace: str) -> dict[str, Any]:
    """Captures of heap, goroutines and an 8 s trace: long enough to kill the leader
    while the toolbox runs."""
    spec = make_policy_spec(
        match_labels={"tier": "go"},
        memory={"request": "64Mi", "limit": "200Mi"},
        capture={"artifacts": ["heap", "goroutine", "trace"], "traceSeconds": 8},
    )
    return make_policy("go-services", namespace=namespace, spec=spec)


@pytest.fixture
def sim(crds: Path, tmp_path: Path) -> Iterator[NodeSimulator]:
    with NodeSimulator(kubeconfig=crds, state_dir=tmp_path / "nodesim", taint=True) as node:
        yield node


def incident(kube: client.ApiClient, namespace: str, name: str) -> dict[str, Any]:
    return dict(
        client.CustomObjectsApi(kube).get_namespaced_custom_object(
            GROUP, VERSION, namespace, "memoryincidents", name
        )
    )


def run_leaky(kube: client.ApiClient, sim: NodeSimulator, namespace: str, crds: Path) -> None:
    """The capture policy, and a leaky Go pod it governs, running on the simulator."""
    kubectl(crds, "apply", "-f", "-", input=json.dumps(capture_policy(namespace)))
    container = make_container("app", image=LEAKY_IMAGE)
    container["ports"] = [{"containerPort": 6060, "name": "pprof"}]
    container["env"] = [{"name": "LEAKY_PATTERN", "value": "none"}]
    pod = make_pod("leaky-1", namespace=namespace, labels={"tier": "go"}, containers=[container])
    pod["spec"] = sim.pin(pod["spec"])
    core = client.CoreV1Api(kube)
    core.create_namespaced_pod(namespace, pod)
    wait_for(
        lambda: core.read_namespaced_pod("leaky-1", namespace).status.phase == "Running",
        timeout=60,
        what="leaky-1 running",
    )


def test_killing_the_leader_mid_capture_hands_the_incident_over_without_a_second_container(
    pair: Pair, sim: NodeSimulator, kube: client.ApiClient, namespace: str, crds: Path
) -> None:
    start_leader_then_follower(pair)
    run_leaky(kube, sim, namespace, crds)
    core = client.CoreV1Api(kube)
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "memoryincidents", make_incident("mid-capture", pod="leaky-1")
    )
    capturing = wait_for(
        lambda: (
            (i := incident(kube, namespace, "mid-capture")).get("status", {}).get("phase")
            == "Capturing"
            and i
        ),
        timeout=60,
        interval=0.1,
        what="the incident Capturing on the leader",
    )
    debug_name = capturing["status"]["ephemeralContainer"]

    pair.a.kill()  # SIGKILL while the toolbox captures: no release, no clean-up
    takeover = pair.wait_holder("replica-b", timeout=LEASE_SECONDS + 10)
    print(f"mid-capture: replica-b led {takeover:.2f}s after replica-a was killed")
    assert takeover < LEASE_SECONDS + RETRY_SECONDS + SLACK_SECONDS

    done = wait_for(
        lambda: (
            (i := incident(kube, namespace, "mid-capture")).get("status", {}).get("phase")
            in {"Collected", "Failed", "Skipped"}
            and i
        ),
        timeout=90,
        interval=0.5,
        what="the incident completed by the new leader",
    )
    assert done["status"]["phase"] == "Collected", done["status"]
    assert done["status"]["ephemeralContainer"] == debug_name
    ephemeral = core.read_namespaced_pod("leaky-1", namespace).spec.ephemeral_containers or []
    assert [c.name for c in ephemeral] == [debug_name], "a second debug container was added"
    # The new leader resumed the incident from its status: it added nothing itself.
    assert "added to pod leaky-1" in pair.a.log_tail(200000)
    assert "added to pod leaky-1" not in pair.b.log_tail(200000)
    assert pair.service.stats.connections["replica-b"], "the upload never reached replica-b"
    stored = pair.s3.keys(f"memwarden/{namespace}/mid-capture/")
    names = {key.rsplit("/", 1)[1] for key in stored}
    assert "meta.json" in names and any(n.startswith("bundle") for n in names), stored


def test_an_upload_reaching_a_follower_is_stored_there_and_completed_by_the_leader(
    pair: Pair, sim: NodeSimulator, kube: client.ApiClient, namespace: str, crds: Path
) -> None:
    """The Service may send the toolbox's upload to any replica: a follower checks and
    stores it, and leaves the incident to the leader (whose follow-up timer finds it)."""
    start_leader_then_follower(pair)
    pair.service.prefer(["replica-b"])  # the Service picks the follower
    run_leaky(kube, sim, namespace, crds)
    client.CustomObjectsApi(kube).create_namespaced_custom_object(
        GROUP, VERSION, namespace, "memoryincidents", make_incident("via-follower", pod="leaky-1")
    )
    done = wait_for(
        lambda: (
            (i := incident(kube, namespace, "via-follower")).get("status", {}).get("phase")
            in {"Collected", "Failed", "Skipped"}
            and i
        ),
        timeout=90,
        interval=0.5,
        what="the incident completed",
    )
    assert done["status"]["phase"] == "Collected", done["status"]
    connections = pair.service.stats.connections
    assert connections["replica-b"] and not connections["replica-a"], connections
    b_log = pair.b.log_tail(200000)
    assert f"{namespace}/via-follower: bundle stored; the leader completes the incident" in b_log
    assert f"incident {namespace}/via-follower collected" not in b_log
    assert pair.holder() == "replica-a"


def can_i(crds: Path, verb: str, resource: str, *, namespace: str, name: str = "") -> bool:
    """What RBAC lets the pair's ServiceAccount do (a SubjectAccessReview, by kubectl)."""
    target = f"{resource}/{name}" if name else resource
    answer = kubectl(
        crds,
        "auth",
        "can-i",
        verb,
        target,
        "-n",
        namespace,
        f"--as=system:serviceaccount:{OPERATOR_NAMESPACE}:{ACCOUNT}",
        check=False,
    )
    return answer.stdout.strip() == "yes"


def test_a_forged_holder_stops_the_leader_and_nobody_leads_before_it_expires(
    pair: Pair, kube: client.ApiClient, crds: Path
) -> None:
    """Whoever can write the Lease can stop reconciliation, but not make two replicas
    lead at once: the leader steps down (and exits) on the next renewal, and no replica
    takes over before the forged holder's Lease expires (docs/security.md)."""
    start_leader_then_follower(pair)
    leases = client.CoordinationV1Api(kube)
    lease = leases.read_namespaced_lease(LEASE, OPERATOR_NAMESPACE)
    lease.spec.holder_identity = "intruder"
    leases.replace_namespaced_lease(LEASE, OPERATOR_NAMESPACE, lease)
    forged = time.monotonic()
    assert pair.a.process is not None
    code = pair.a.process.wait(timeout=LEASE_SECONDS + 10)
    assert code == 3, pair.a.log_tail()  # LOST_LEADERSHIP_EXIT: the kubelet restarts it
    assert "lost Lease" in pair.a.log_tail()
    stepped_down = time.monotonic() - forged
    taken = pair.wait_holder("replica-b", timeout=LEASE_SECONDS + 10) + stepped_down
    print(f"forged holder: leader exited after {stepped_down:.2f}s, follower led at {taken:.2f}s")
    assert stepped_down < RETRY_SECONDS + SLACK_SECONDS
    assert taken >= LEASE_SECONDS - RETRY_SECONDS  # waited for the forged Lease to expire


def test_the_operator_may_write_its_own_lease_only(pair: Pair, crds: Path) -> None:
    """A leaked operator token reaches one Lease by name: not the control plane's leader
    elections (kube-system), not another Lease of its own namespace."""
    assert can_i(crds, "update", "leases", namespace=OPERATOR_NAMESPACE, name=LEASE)
    assert can_i(crds, "create", "leases", namespace=OPERATOR_NAMESPACE)
    assert not can_i(crds, "update", "leases", namespace=OPERATOR_NAMESPACE, name="other")
    assert not can_i(crds, "delete", "leases", namespace=OPERATOR_NAMESPACE, name=LEASE)
    for name in ("kube-scheduler", "kube-controller-manager"):
        assert not can_i(crds, "update", "leases", namespace="kube-system", name=name)
        assert not can_i(crds, "get", "leases", namespace="kube-system", name=name)
    assert not can_i(crds, "create", "leases", namespace="kube-system")
