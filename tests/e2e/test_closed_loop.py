"""The closed loop: a policy shapes a Go workload, it leaks, memwarden captures evidence
before the OOM kill, and the analysis names the leaking function.

Every part is real except the kubelet (the node simulator runs containers as processes):
the control plane, the operator and its webhook, Prometheus, Alertmanager, the leaky Go
workload, the toolbox in an ephemeral container, the evidence store, `go tool pprof`.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import tarfile
import time
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

from memwarden.capture.plan import POD_SECURITY_ENFORCE_LABEL
from memwarden_testing.cluster import events_on, wait_for
from memwarden_testing.evidence import evidence_reader_token
from memwarden_testing.loop import (
    ALERTED_PREFIX,
    LIMIT_MI,
    POLICY_RATIO,
    LocalLoop,
    Loop,
    apply,
    collected,
    deployment,
    incidents,
    policy,
    running_pod,
)

LEAKING_FUNCTION = "main.retainSessionBuffers"


def gomemlimit_of(loop: Loop, pod: dict[str, Any]) -> float:
    """The Go runtime's own GOMEMLIMIT, read from the workload's /metrics."""
    text = loop.workload_metrics(pod)
    match = re.search(r"^go_gc_gomemlimit_bytes (\S+)$", text, re.MULTILINE)
    assert match, text[:500]
    return float(match.group(1))


def working_set_ratio(loop: Loop, namespace: str, pod: str) -> float:
    return loop.working_set(namespace=namespace, pod=pod) / (LIMIT_MI * 2**20)


def when(text: str | None) -> dt.datetime:
    assert text, "timestamp missing"
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def download_bundle(loop: Loop, namespace: str, name: str, tmp_path: Path) -> Path:
    """The bundle through the evidence API, as a user granted `get` on it would."""
    token = evidence_reader_token(loop.kube, namespace)
    out = tmp_path / f"{name}.tar.gz"
    result = subprocess.run(
        [
            str(Path(".venv/bin/memwarden").resolve()),
            "incidents",
            "download",
            name,
            "-n",
            namespace,
            f"--kubeconfig={loop.kubeconfig}",
            f"--evidence-token={token}",
            "--output-file",
            str(out),
            f"--evidence-url={loop.evidence_url}",
            *([f"--evidence-ca={loop.evidence_ca}"] if loop.evidence_ca else []),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return out


def test_a_leak_is_captured_before_the_oom_kill_and_a_flat_workload_is_left_alone(
    loop: Loop, namespace: str, tmp_path: Path
) -> None:
    apply(
        loop,
        policy(
            namespace,
            oom_risk=True,
            artifacts=["heap", "allocs", "goroutine", "trace", "smaps", "cgroup"],
        ),
    )
    apps = client.AppsV1Api(loop.kube)
    apps.create_namespaced_deployment(namespace, deployment(loop, "leaky", pattern="steady"))
    apps.create_namespaced_deployment(namespace, deployment(loop, "flat", pattern="none"))
    leaky, flat = running_pod(loop, namespace, "leaky"), running_pod(loop, namespace, "flat")

    # Admission shaped the pod, and the injected GOMEMLIMIT reached the Go runtime.
    app = leaky["spec"]["containers"][0]
    assert app["resources"]["limits"]["memory"] == f"{LIMIT_MI}Mi"
    env = {e["name"]: e.get("value") for e in app["env"]}
    assert env["GOMEMLIMIT"] == "180MiB" and env["GOGC"] == "100"
    assert gomemlimit_of(loop, leaky) == 180 * 2**20

    name = leaky["metadata"]["name"]
    crossed = wait_for(
        lambda: time.time() if working_set_ratio(loop, namespace, name) >= POLICY_RATIO else None,
        timeout=120,
        interval=0.25,
        what="the working set crossing 50%",
    )
    incident = collected(loop, namespace, name, timeout=120)
    status = incident["status"]

    # Before the OOM kill: the container never restarted while evidence was collected...
    pod_now = client.CoreV1Api(loop.kube).read_namespaced_pod(name, namespace)
    killed_before = [s for s in pod_now.status.container_statuses or [] if s.restart_count]
    assert (
        not killed_before
        or when(status["completedAt"]) < killed_before[0].last_state.terminated.finished_at
    )

    trigger = incident["spec"]["trigger"]
    assert trigger["source"] == "prometheus" and trigger["signal"] == "usageRatio"
    assert trigger["value"] >= POLICY_RATIO
    assert status["analysis"]["top"][0]["function"] == LEAKING_FUNCTION
    assert {a["name"] for a in status["artifacts"] if not a.get("error")} >= {
        "heap",
        "allocs",
        "goroutine",
        "trace",
    }

    # The stored bundle is what the status says, and the real pprof reads its heap profile.
    bundle = download_bundle(loop, namespace, incident["metadata"]["name"], tmp_path)
    with tarfile.open(bundle) as archive:
        names = {Path(m.name).name for m in archive.getmembers()}
        assert {"manifest.json", "heap.pb.gz", "trace.out"} <= names
        heap = next(m for m in archive.getmembers() if Path(m.name).name == "heap.pb.gz")
        (tmp_path / "heap.pb.gz").write_bytes(archive.extractfile(heap).read())  # type: ignore[union-attr]
    top = subprocess.run(
        ["go", "tool", "pprof", "-top", "-sample_index=inuse_space", str(tmp_path / "heap.pb.gz")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert LEAKING_FUNCTION in top.stdout

    # ... and the OOM kill does come, after the evidence was stored.
    def oom_killed() -> Any:
        pod = client.CoreV1Api(loop.kube).read_namespaced_pod(name, namespace)
        for s in pod.status.container_statuses or []:
            terminated = s.last_state.terminated if s.last_state else None
            if terminated and terminated.reason == "OOMKilled":
                return terminated
        return None

    terminated = wait_for(oom_killed, timeout=120, what="the simulated OOM kill")
    assert terminated.exit_code == 137
    assert when(status["completedAt"]) <= terminated.finished_at

    # The flat workload, under the same policy for the same time, opened nothing.
    assert [
        i for i in incidents(loop, namespace) if i["spec"]["pod"] == flat["metadata"]["name"]
    ] == []

    latency = {
        "threshold_crossed_to_incident_s": round(
            when(incident["metadata"]["creationTimestamp"]).timestamp() - crossed, 1
        ),
        "incident_to_debug_container_s": round(
            (
                when(status["captureStartedAt"]) - when(incident["metadata"]["creationTimestamp"])
            ).total_seconds(),
            1,
        ),
        "debug_container_to_bundle_stored_s": round(
            (when(status["completedAt"]) - when(status["captureStartedAt"])).total_seconds(), 1
        ),
    }
    print("detection-to-capture latency:", json.dumps(latency))


def test_an_alert_routed_by_alertmanager_opens_a_capture(loop: Loop, namespace: str) -> None:
    apply(loop, policy(namespace, oom_risk=False, artifacts=["heap", "goroutine"], alerts=True))
    client.AppsV1Api(loop.kube).create_namespaced_deployment(
        namespace, deployment(loop, f"{ALERTED_PREFIX}checkout", pattern="steady")
    )
    pod = running_pod(loop, namespace, f"{ALERTED_PREFIX}checkout")
    incident = collected(loop, namespace, pod["metadata"]["name"], timeout=150)
    trigger = incident["spec"]["trigger"]
    assert trigger["source"] == "alertmanager"
    assert trigger["alertName"] == "MemwardenNearMemoryLimit"
    assert incident["status"]["analysis"]["top"][0]["function"] == LEAKING_FUNCTION


def test_an_on_demand_incident_applied_with_kubectl_collects_a_core(
    loop: Loop, namespace: str
) -> None:
    apply(loop, policy(namespace, oom_risk=False, artifacts=["heap"]))
    client.AppsV1Api(loop.kube).create_namespaced_deployment(
        namespace, deployment(loop, "steady", pattern="none")
    )
    pod = running_pod(loop, namespace, "steady")
    apply(
        loop,
        {
            "apiVersion": "memwarden.dev/v1alpha1",
            "kind": "MemoryIncident",
            "metadata": {"name": "on-demand", "namespace": namespace},
            "spec": {
                "pod": pod["metadata"]["name"],
                "container": "app",
                "artifacts": ["heap", "goroutine", "trace", "smaps", "gcore"],
            },
        },
    )
    incident = collected(loop, namespace, pod["metadata"]["name"], timeout=150)
    assert incident["metadata"]["name"] == "on-demand"
    # No trigger given: a hand-made request (the API's default source is "manual").
    assert incident["spec"].get("trigger", {}).get("source", "manual") == "manual"
    records = {a["name"]: a for a in incident["status"]["artifacts"]}
    assert records["gcore"].get("error") is None and records["gcore"]["bytes"] > 0
    # The workload runs as 65532; the toolbox, as root with only SYS_PTRACE (a non-root
    # toolbox would have no effective capability), read its /proc and dumped its core.
    for artifact in ("heap", "trace", "proc/smaps_rollup"):
        assert records[artifact].get("error") is None and records[artifact]["bytes"] > 0
    identity = incident["status"]["debugIdentity"]
    assert identity["runAsUser"] == 0 and identity["capabilities"] == ["SYS_PTRACE"]

    story = {"CaptureStarted", "EvidenceCollected"}

    def told() -> list[Any]:
        events = events_on(loop.kube, namespace, "on-demand")
        return events if {e.reason for e in events} >= story else []

    events = wait_for(told, timeout=30, what=f"Events {sorted(story)} on the incident")
    assert "Failed" not in {e.reason for e in events}
    assert {e.source.component for e in events} == {"memwarden"}, "one From, kopf's or ours"
    assert incident["status"]["analysis"]["goroutines"] >= 1


def test_an_operator_restart_mid_capture_neither_duplicates_nor_loses_it(
    loop: Loop, namespace: str
) -> None:
    if not isinstance(loop, LocalLoop) or loop.operator is None:
        pytest.skip("restarts the operator process: local loop only")
    apply(loop, policy(namespace, oom_risk=False, artifacts=["heap", "trace"], trace_seconds=8))
    client.AppsV1Api(loop.kube).create_namespaced_deployment(
        namespace, deployment(loop, "steady", pattern="none")
    )
    pod = running_pod(loop, namespace, "steady")
    name = pod["metadata"]["name"]
    apply(
        loop,
        {
            "apiVersion": "memwarden.dev/v1alpha1",
            "kind": "MemoryIncident",
            "metadata": {"name": "restarted", "namespace": namespace},
            "spec": {"pod": name},
        },
    )
    custom = client.CustomObjectsApi(loop.kube)

    def phase() -> str | None:
        obj = custom.get_namespaced_custom_object(
            "memwarden.dev", "v1alpha1", namespace, "memoryincidents", "restarted"
        )
        return (obj.get("status") or {}).get("phase")

    wait_for(lambda: phase() == "Capturing", timeout=60, what="the capture under way")
    loop.operator.stop()  # the 8 s trace is still being recorded in the debug container
    loop.operator.start()
    incident = collected(loop, namespace, name, timeout=120)
    debug = (
        client.CoreV1Api(loop.kube).read_namespaced_pod(name, namespace).spec.ephemeral_containers
    )
    assert [c.name for c in debug or []] == [incident["status"]["ephemeralContainer"]]

    # Deleting the incident deletes its evidence (the finalizer).
    evidence = loop.operator.workdir / "evidence" / namespace / "restarted"
    assert evidence.exists()
    custom.delete_namespaced_custom_object(
        "memwarden.dev", "v1alpha1", namespace, "memoryincidents", "restarted"
    )
    wait_for(lambda: not evidence.exists(), timeout=30, what="the evidence deleted with it")


def test_a_core_that_would_pass_the_pods_ephemeral_storage_limit_is_skipped(
    loop: Loop, namespace: str
) -> None:
    """gcore writes into the pod's writable layer: past the pod's ephemeral-storage limit the
    kubelet would evict the pod, so the core is skipped (saying why) and the rest collected."""
    apply(loop, policy(namespace, oom_risk=False, artifacts=["heap"]))
    body = deployment(loop, "small-disk", pattern="none")
    app = body["spec"]["template"]["spec"]["containers"][0]
    # The request is the owner's estimate of the container's own use (without one, the API
    # server copies the limit, leaving the capture no room at all).
    app["resources"] = {
        "requests": {"ephemeral-storage": "64Mi"},
        "limits": {"ephemeral-storage": "256Mi"},
    }
    client.AppsV1Api(loop.kube).create_namespaced_deployment(namespace, body)
    pod = running_pod(loop, namespace, "small-disk")
    apply(
        loop,
        {
            "apiVersion": "memwarden.dev/v1alpha1",
            "kind": "MemoryIncident",
            "metadata": {"name": "small-disk", "namespace": namespace},
            "spec": {"pod": pod["metadata"]["name"], "artifacts": ["heap", "gcore"]},
        },
    )

    incident = collected(loop, namespace, pod["metadata"]["name"], timeout=150)

    records = {a["name"]: a for a in incident["status"]["artifacts"]}
    assert records["heap"].get("error") is None and records["heap"]["bytes"] > 0
    assert "ephemeral-storage allowance is 201326592 bytes" in records["gcore"]["error"]
    assert "evicted" in records["gcore"]["error"]


def test_where_pod_security_forbids_sys_ptrace_the_toolbox_reads_proc_as_the_targets_user(
    loop: Loop, namespace: str
) -> None:
    """``baseline`` forbids SYS_PTRACE: the toolbox runs as the workload's own uid and gid
    (here 1000, not the toolbox image's 65532), so the kernel lets it read the workload's
    ``smaps_rollup``; gcore is not planned, and ``debugIdentity`` says why."""
    client.CoreV1Api(loop.kube).patch_namespace(
        namespace, {"metadata": {"labels": {POD_SECURITY_ENFORCE_LABEL: "baseline"}}}
    )
    apply(loop, policy(namespace, oom_risk=False, artifacts=["heap"]))
    body = deployment(loop, "baseline", pattern="none")
    app = body["spec"]["template"]["spec"]["containers"][0]
    app["securityContext"] = {**app["securityContext"], "runAsUser": 1000, "runAsGroup": 1000}
    client.AppsV1Api(loop.kube).create_namespaced_deployment(namespace, body)
    pod = running_pod(loop, namespace, "baseline")
    apply(
        loop,
        {
            "apiVersion": "memwarden.dev/v1alpha1",
            "kind": "MemoryIncident",
            "metadata": {"name": "baseline", "namespace": namespace},
            "spec": {"pod": pod["metadata"]["name"], "artifacts": ["heap", "smaps", "gcore"]},
        },
    )

    incident = collected(loop, namespace, pod["metadata"]["name"], timeout=150)

    identity = incident["status"]["debugIdentity"]
    assert (identity["runAsUser"], identity["runAsGroup"]) == (1000, 1000)
    assert identity["capabilities"] == []
    assert "baseline" in identity["reason"]
    records = {a["name"]: a for a in incident["status"]["artifacts"]}
    smaps = records["proc/smaps_rollup"]
    assert smaps.get("error") is None and smaps["bytes"] > 0, smaps
    assert "gcore" not in records  # not planned without SYS_PTRACE
