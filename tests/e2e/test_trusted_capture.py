"""The capture path under attack and mishap (issue 12), on the closed loop.

A tenant's own process serving a hostile heap profile, a flood of junk bearer tokens, an
upload token copied from the pod spec, an incident deleted and applied again, and the
operator down while the toolbox uploads. Each scenario runs the real operator, toolbox,
control plane and node simulator; the ones that measure or restart the operator's
process run on the local loop only. docs/security.md names them.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from kubernetes import client

from memwarden.capture.plan import ENV_UPLOAD_TOKEN
from memwarden.capture.profile import DEFAULT_MAX_BYTES
from memwarden_testing.builders import make_container, make_pod
from memwarden_testing.cluster import apiserver_requests, wait_for
from memwarden_testing.evidence import evidence_reader_token, make_bundle, make_incident
from memwarden_testing.flood import Flood, connect
from memwarden_testing.loop import (
    LocalLoop,
    Loop,
    apply,
    deployment,
    incidents,
    policy,
    running_pod,
)
from memwarden_testing.operator import OperatorProcess
from memwarden_testing.profiles import gzip_bomb, sample_flood

MI = 2**20
GROUP, VERSION, PLURAL = "memwarden.dev", "v1alpha1", "memoryincidents"


def local_operator(loop: Loop) -> tuple[LocalLoop, OperatorProcess]:
    if not isinstance(loop, LocalLoop) or loop.operator is None or loop.sim is None:
        pytest.skip("measures or restarts the operator process: local loop only")
    return loop, loop.operator


def incident(loop: Loop, namespace: str, name: str) -> dict[str, Any]:
    obj: dict[str, Any] = client.CustomObjectsApi(loop.kube).get_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name
    )
    return obj


def settled(loop: Loop, namespace: str, name: str, *, timeout: float) -> dict[str, Any]:
    """The incident once its capture is over (Collected, Failed or Skipped)."""

    def done() -> dict[str, Any] | None:
        obj = incident(loop, namespace, name)
        phase = (obj.get("status") or {}).get("phase")
        return obj if phase in ("Collected", "Failed", "Skipped") else None

    return wait_for(done, timeout=timeout, interval=0.5, what=f"incident {name} settled")


def capturing(loop: Loop, namespace: str, name: str) -> dict[str, Any]:
    return wait_for(
        lambda: (
            o
            if (o := incident(loop, namespace, name)).get("status", {}).get("phase") == "Capturing"
            else None
        ),
        timeout=60,
        what=f"incident {name} Capturing",
    )


def capture(loop: Loop, namespace: str, name: str, *, pod: str, artifacts: list[str]) -> None:
    """Ask for a capture by hand, as ``kubectl apply`` of a MemoryIncident."""
    apply(loop, make_incident(name, namespace=namespace, pod=pod, artifacts=artifacts))


def steady_pod(loop: Loop, namespace: str, *, trace_seconds: int = 1) -> str:
    """A policy with capture settings and one running leaky pod that does not leak."""
    apply(loop, policy(namespace, oom_risk=False, artifacts=["heap"], trace_seconds=trace_seconds))
    client.AppsV1Api(loop.kube).create_namespaced_deployment(
        namespace, deployment(loop, "steady", pattern="none")
    )
    return str(running_pod(loop, namespace, "steady")["metadata"]["name"])


# --- item 8: hostile evidence is analysed out of process -------------------------------


def hostile_pod(loop: Loop, namespace: str, *, heap: bytes, workdir: Path) -> str:
    """A pod whose own process serves ``heap`` at /debug/pprof/heap, as any tenant's
    process may: the toolbox fetches it, the operator must survive analysing it."""
    root = workdir / "www"
    (root / "debug" / "pprof").mkdir(parents=True)
    (root / "debug" / "pprof" / "heap").write_bytes(heap)
    server = make_container(image="registry.example.com/hostile-pprof:dev")
    server["command"] = [
        "python3",
        "-m",
        "http.server",
        "6060",
        "--bind",
        "$(POD_IP)",
        "--directory",
        str(root),
    ]
    server["env"] = [{"name": "POD_IP", "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}]
    pod = make_pod(
        "hostile", namespace=namespace, labels={"app": "hostile", "tier": "go"}, containers=[server]
    )
    pod["spec"] = loop.pin(pod["spec"])
    client.CoreV1Api(loop.kube).create_namespaced_pod(namespace, pod)
    return str(running_pod(loop, namespace, "hostile")["metadata"]["name"])


def webhook_answers(loop: Loop, namespace: str) -> bool:
    """A pod created now is shaped by the policy: the admission webhook answered."""
    created = client.CoreV1Api(loop.kube).create_namespaced_pod(
        namespace,
        make_pod("probe", namespace=namespace, labels={"tier": "go"}),
    )
    env = {e.name for e in created.spec.containers[0].env or []}
    return "GOMEMLIMIT" in env


@pytest.mark.parametrize(
    ("heap", "refused"),
    [
        pytest.param(
            lambda: gzip_bomb(DEFAULT_MAX_BYTES + MI),
            f"heap.pb.gz: profile larger than {DEFAULT_MAX_BYTES} bytes once decompressed",
            id="gzip-bomb",
        ),
        pytest.param(
            lambda: sample_flood(2_000_000),
            "heap.pb.gz: more than 500000 samples",
            id="two-million-samples",
        ),
    ],
)
def test_a_hostile_heap_profile_is_refused_and_the_operator_stays_flat(
    loop: Loop,
    namespace: str,
    tmp_path: Path,
    heap: Callable[[], bytes],
    refused: str,
) -> None:
    loop, operator = local_operator(loop)
    apply(loop, policy(namespace, oom_risk=False, artifacts=["heap"]))
    payload = heap()
    pod = hostile_pod(loop, namespace, heap=payload, workdir=tmp_path)
    before = operator.memory()

    capture(loop, namespace, "hostile", pod=pod, artifacts=["heap"])
    status = settled(loop, namespace, "hostile", timeout=120)["status"]

    after = operator.memory()
    print(
        f"hostile heap.pb.gz of {len(payload)} bytes: operator VmHWM "
        f"{before['VmHWM'] // MI} -> {after['VmHWM'] // MI} MiB, VmRSS "
        f"{before['VmRSS'] // MI} -> {after['VmRSS'] // MI} MiB"
    )
    assert status["phase"] == "Collected", status
    assert f"analysis refused: {refused}" in status["message"]
    assert "analysis" not in status
    assert status["analysisAttempts"] == 1, "the attempt was recorded before it started"
    assert after["VmHWM"] - before["VmHWM"] < 32 * MI, "the operator's peak RSS stayed flat"
    assert operator.process is not None and operator.process.poll() is None
    assert operator.healthy()
    assert webhook_answers(loop, namespace)


# --- item 9: junk bearer tokens cost few TokenReviews -----------------------------------


def reviews_made(operator: OperatorProcess) -> float:
    return operator.metric("memwarden_evidence_token_reviews_total")


def test_junk_tokens_cost_few_token_reviews_and_captures_and_the_risk_loop_go_on(
    loop: Loop, namespace: str
) -> None:
    loop, operator = local_operator(loop)
    apply(loop, policy(namespace, oom_risk=True, artifacts=["heap"]))  # the risk loop's work
    client.AppsV1Api(loop.kube).create_namespaced_deployment(
        namespace, deployment(loop, "steady", pattern="none")
    )
    pod = str(running_pod(loop, namespace, "steady")["metadata"]["name"])
    listing = f"{loop.evidence_url}/v1/namespaces/{namespace}/incidents"
    reviews, api_reviews = (
        reviews_made(operator),
        apiserver_requests(loop.kube, resource="tokenreviews", verb="POST"),
    )
    risk_queries = operator.metric("memwarden_risk_queries_total")

    flood = Flood(url=listing, source="127.0.0.77", ca_file=loop.evidence_ca).start()
    try:
        wait_for(lambda: flood.sent >= 200, timeout=30, what="the flood under way")
        capture(loop, namespace, "during-flood", pod=pod, artifacts=["heap"])
        status = settled(loop, namespace, "during-flood", timeout=120)["status"]
        risk_during = operator.metric("memwarden_risk_queries_total")
        wait_for(lambda: flood.sent >= 2000, timeout=120, what="2,000 junk requests")
    finally:
        flood.stop()

    made = reviews_made(operator) - reviews
    made_per_apiserver = apiserver_requests(loop.kube, resource="tokenreviews", verb="POST") - (
        api_reviews
    )
    print(
        f"{flood.sent} junk requests in {flood.seconds:.1f}s ({dict(flood.statuses)}): "
        f"{made:.0f} TokenReviews (the API server counted {made_per_apiserver:.0f})"
    )
    assert status["phase"] == "Collected", status
    assert status["analysis"]["top"], "the upload landed and was analysed during the flood"
    assert risk_during > risk_queries, "the risk loop kept querying Prometheus"
    assert set(flood.statuses) <= {401, 429, 503}, flood.statuses
    # A burst of 20 for the address, then 2 a second; at most 4 in flight besides.
    assert made <= 20 + 2 * flood.seconds + 4
    assert made_per_apiserver >= made > 0

    # The same junk token over and over costs one review: refusals are remembered.
    reviews = reviews_made(operator)
    again = Flood(
        url=listing,
        source="127.0.0.88",
        senders=1,
        limit=50,
        token=lambda _: "junk",
        ca_file=loop.evidence_ca,
    )
    assert again.run().statuses == {401: 50}
    assert reviews_made(operator) - reviews == 1

    # A reader with a real token, from another address, is served at once.
    token = evidence_reader_token(loop.kube, namespace)
    reader = Flood(
        url=listing,
        source="127.0.0.1",
        senders=1,
        limit=1,
        token=lambda _: token,
        ca_file=loop.evidence_ca,
    )
    assert reader.run().statuses == {200: 1}


# --- item 4: an upload token copied from the pod spec is worthless ----------------------


def upload_from(
    url: str, *, source: str, token: str, body: bytes, ca_file: Path | None
) -> tuple[int, str]:
    """A PUT of ``body`` whose connection leaves from ``source`` (any 127/8 address)."""
    parts = urlsplit(url)
    connection = connect(url, source=source, ca_file=ca_file)
    try:
        connection.request(
            "PUT", parts.path, body=body, headers={"Authorization": f"Bearer {token}"}
        )
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


def test_a_copied_upload_token_is_refused_and_the_real_bundle_lands(
    loop: Loop, namespace: str
) -> None:
    loop, _ = local_operator(loop)
    pod = steady_pod(loop, namespace, trace_seconds=8)
    capture(loop, namespace, "copied", pod=pod, artifacts=["heap", "trace"])
    capturing(loop, namespace, "copied")

    # What a namespace viewer sees: the debug container's environment in the pod spec.
    spec = client.CoreV1Api(loop.kube).read_namespaced_pod(pod, namespace).spec
    (debug,) = spec.ephemeral_containers
    env = {e.name: e.value for e in debug.env}
    url, token = env["MEMWARDEN_UPLOAD_URL"], env[ENV_UPLOAD_TOKEN]
    forged = make_bundle({"heap.pb.gz": b"\x1f\x8b forged"})
    status, body = upload_from(
        url, source="127.0.0.1", token=token, body=forged, ca_file=loop.evidence_ca
    )
    assert status == 403, body
    assert "accepted only from pod" in json.loads(body)["message"]

    collected = settled(loop, namespace, "copied", timeout=120)["status"]
    assert collected["phase"] == "Collected", collected
    assert collected["analysis"]["top"], "the toolbox's real bundle was stored and analysed"

    status, body = upload_from(
        url, source="127.0.0.1", token=token, body=forged, ca_file=loop.evidence_ca
    )
    assert status == 409, "after the capture: refused, the stored bundle kept"
    assert json.loads(body)["details"]["sha256"] == collected["bundleSha256"]


# --- item 5: an incident applied again under its name captures again -------------------


def test_an_incident_deleted_and_applied_again_captures_again(loop: Loop, namespace: str) -> None:
    loop, _ = local_operator(loop)
    pod = steady_pod(loop, namespace)
    custom = client.CustomObjectsApi(loop.kube)

    capture(loop, namespace, "again", pod=pod, artifacts=["heap"])
    first = settled(loop, namespace, "again", timeout=120)
    assert first["status"]["phase"] == "Collected", first["status"]
    custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "again")
    wait_for(
        lambda: "again" not in {i["metadata"]["name"] for i in incidents(loop, namespace)},
        timeout=30,
        what="the first incident gone (its finalizer ran)",
    )

    capture(loop, namespace, "again", pod=pod, artifacts=["heap"])
    second = settled(loop, namespace, "again", timeout=120)

    assert second["metadata"]["uid"] != first["metadata"]["uid"]
    assert second["status"]["phase"] == "Collected", second["status"]
    debug = (
        client.CoreV1Api(loop.kube).read_namespaced_pod(pod, namespace).spec.ephemeral_containers
    )
    names = [c.name for c in debug]
    assert names == [first["status"]["ephemeralContainer"], second["status"]["ephemeralContainer"]]
    assert second["status"]["bundleSha256"] != first["status"]["bundleSha256"]


# --- item 6: the operator down while the toolbox uploads ---------------------------------


def test_an_operator_down_while_the_toolbox_uploads_still_ends_collected(
    loop: Loop, namespace: str
) -> None:
    loop, operator = local_operator(loop)
    assert loop.sim is not None
    pod = steady_pod(loop, namespace, trace_seconds=4)
    capture(loop, namespace, "restart", pod=pod, artifacts=["heap", "trace"])
    debug = capturing(loop, namespace, "restart")["status"]["ephemeralContainer"]
    operator.stop()
    try:
        # The toolbox finishes its trace, finds the evidence API gone and keeps trying
        # (it gave up after 3 tries in 3 s before).
        sim = loop.sim
        wait_for(
            lambda: "upload attempt 3 failed" in sim.container_log(namespace, pod, debug),
            timeout=60,
            what="the toolbox retrying its upload",
        )
    finally:
        operator.start()

    status = settled(loop, namespace, "restart", timeout=120)["status"]
    assert status["phase"] == "Collected", status
    assert status["analysis"]["top"][0]["function"]
