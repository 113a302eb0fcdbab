"""``memwarden recommend`` against a real Prometheus holding a recorded week.

Five workloads' history (known peaks, a leak, OOM kills) is generated as OpenMetrics,
backfilled with ``promtool tsdb create-blocks-from openmetrics`` and served by Debian's
Prometheus; the real command runs against it. Expected numbers are computed here from
the generator's samples, not by the product's code: Prometheus' own quantile rule, VPA's
histogram formula, KRR's max x 1.15. The policies it prints are applied to the real API
server, and a leaking workload's note names its MemoryIncident read from that server.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from kubernetes import client

from memwarden.api import MemoryPolicy
from memwarden_testing.cluster import REPO, ensure_namespace, kubectl
from memwarden_testing.history import (
    DAY,
    MIB,
    Workload,
    backfilled_prometheus,
    constant,
    daily_cycle,
    growing,
    samples,
    with_spike,
)
from memwarden_testing.prometheus import PrometheusServer

WINDOW = 7 * DAY
INTERVAL = 30.0
NAMESPACE = f"rec-{uuid.uuid4().hex[:8]}"
#: The history ends on a whole hour, an hour ago: inside Prometheus' retention, and the
#: test's numbers do not depend on when it runs.
END = (int(time.time()) // 3600 - 1) * 3600

WORKLOADS = {
    "api": Workload(
        kind="Deployment",
        name="api",
        pods=2,
        curve=with_spike(
            daily_cycle(base=300 * MIB, amplitude=100 * MIB),
            pod=1,
            at=3 * DAY,
            seconds=300,
            value=700 * MIB,
        ),
    ),
    "db": Workload(kind="StatefulSet", name="db", curve=constant(1024 * MIB)),
    "agent": Workload(
        kind="DaemonSet", name="agent", pods=3, curve=constant(64 * MIB), owner_metric=False
    ),
    "leaky": Workload(
        kind="Deployment", name="leaky", curve=growing(start=200 * MIB, per_hour=3 * MIB)
    ),
    "batch": Workload(
        kind="Deployment",
        name="batch",
        curve=daily_cycle(base=400 * MIB, amplitude=112 * MIB),
        oom_kills=2,
    ),
}


def prometheus_quantile(q: float, values: list[float]) -> float:
    """``quantile_over_time`` as Prometheus computes it (promql/quantile.go: linear
    interpolation between the closest ranks, rank = q x (n - 1))."""
    ordered = sorted(values)
    rank = q * (len(ordered) - 1)
    lower = math.floor(rank)
    upper = min(lower + 1, len(ordered) - 1)
    return ordered[lower] + (ordered[upper] - ordered[lower]) * (rank - lower)


def vpa_expected(peak: float) -> int:
    """VPA v1.8.1's target for days whose 90th weighted percentile falls in ``peak``'s
    bucket (util/histogram_options.go, util/histogram.go), plus the 15 % margin, at least
    250 MiB (one container)."""
    bucket = 0 if peak < 1e7 else math.floor(math.log(peak * 0.05 / 1e7 + 1) / math.log(1.05))
    end = 1e7 * (1.05 ** (bucket + 1) - 1) / 0.05
    return math.ceil(max(end * 1.15, 250 * MIB))


def ceil_mib(value: float) -> int:
    return math.ceil(value / MIB) * MIB


def pod_samples(name: str) -> list[list[float]]:
    w = WORKLOADS[name]
    return [
        samples(w, pod=i, start=END - WINDOW, end=END, interval=INTERVAL) for i in range(w.pods)
    ]


@pytest.fixture(scope="module")
def history_prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrometheusServer]:
    server = backfilled_prometheus(
        tmp_path_factory.mktemp("history"),
        list(WORKLOADS.values()),
        namespace=NAMESPACE,
        end=END,
        window=WINDOW,
        interval=INTERVAL,
    )
    yield server
    server.stop()


def recommend(prometheus: PrometheusServer, *args: str) -> subprocess.CompletedProcess[str]:
    """The real command, as a user runs it (a process of its own)."""
    env = {**os.environ, "PYTHONPATH": str(REPO / "operator"), "KUBECONFIG": "/nonexistent"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "memwarden.cli",
            "recommend",
            "--prometheus",
            prometheus.url,
            "-n",
            NAMESPACE,
            "--end",
            str(END),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        check=False,
    )


def recommend_json(prometheus: PrometheusServer, *args: str) -> dict[str, Any]:
    result = recommend(prometheus, "-o", "json", *args)
    assert result.returncode == 0, result.stderr
    doc: dict[str, Any] = json.loads(result.stdout)
    return doc


def by_name(doc: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {w["workload"]["name"]: w for w in doc["workloads"]}


def test_numbers_match_the_recorded_history(history_prometheus: PrometheusServer) -> None:
    doc = recommend_json(history_prometheus)
    assert doc["prometheusQueries"] == 4  # per namespace, whatever the workloads
    workloads = by_name(doc)
    assert set(workloads) == set(WORKLOADS)
    kinds = {name: (w["workload"]["kind"], w["ownerFrom"]) for name, w in workloads.items()}
    assert kinds == {
        "api": ("Deployment", "kube_pod_owner"),
        "db": ("StatefulSet", "kube_pod_owner"),
        "agent": ("DaemonSet", "pod name"),  # no kube_pod_owner: from the pod names
        "leaky": ("Deployment", "kube_pod_owner"),
        "batch": ("Deployment", "kube_pod_owner"),
    }
    for name, workload in workloads.items():
        (c,) = workload["containers"]
        per_pod = pod_samples(name)
        peak = max(max(values) for values in per_pod)
        p95 = max(prometheus_quantile(0.95, values) for values in per_pod)
        basis = c["basis"]
        assert basis["peakBytes"] == peak, name
        assert basis["p95Bytes"] == math.ceil(p95), name
        assert basis["samples"] == sum(len(v) for v in per_pod) == 20160 * len(per_pod)
        assert basis["windowCoverage"] == 1.0
        assert basis["confidence"] == "high"
        assert basis["oomKills"] == WORKLOADS[name].oom_kills
        assert c["krrSimpleBytes"] == math.ceil(peak * 1.15), name
        if name == "leaky":
            continue
        base = max(peak * 1.2, peak + 100 * MIB) if WORKLOADS[name].oom_kills else peak
        assert c["memwarden"]["requestBytes"] == ceil_mib(p95), name
        if name != "agent":
            assert c["memwarden"]["limitBytes"] == ceil_mib(base * 1.2), name

    # The known peaks, in MiB: api's one 5-minute spike decides memwarden's and KRR's
    # limits, not VPA's (a 90th percentile of daily peaks: the spike is 1 day of 14).
    api = workloads["api"]["containers"][0]
    assert api["basis"]["peakBytes"] == 700 * MIB
    assert api["memwarden"]["limitBytes"] == 840 * MIB
    assert api["memwarden"]["GOMEMLIMIT"] == "756MiB"
    assert api["vpaTargetBytes"] == vpa_expected(400 * MIB)
    db = workloads["db"]["containers"][0]
    assert db["vpaTargetBytes"] == vpa_expected(1024 * MIB)
    assert db["memwarden"]["limitBytes"] == ceil_mib(1024 * MIB * 1.2)
    # A 64 MiB DaemonSet: VPA's 250 MiB floor; memwarden keeps GOMEMLIMIT 32 MiB under
    # the limit and above the peak.
    agent = workloads["agent"]["containers"][0]
    assert agent["vpaTargetBytes"] == 250 * MIB
    assert agent["memwarden"]["limitBytes"] == 102 * MIB
    assert workloads["agent"]["policy"]["spec"]["runtime"]["go"]["memoryLimit"] == "68%"


DOC = REPO / "docs" / "recommend.md"
TABLE_START = "<!-- comparison-table: tests/integration/test_recommend_prometheus.py -->"
TABLE_END = "<!-- /comparison-table -->"


def _mib(value: int | None) -> str:
    return "-" if value is None else f"{value / MIB:.0f}"


def comparison_table(doc: dict[str, Any]) -> str:
    """The docs' table: memwarden's, KRR's and VPA's recommendations per workload."""
    lines = [
        "| workload | known peak | p95 | memwarden request | memwarden limit | GOMEMLIMIT"
        " | KRR simple (request = limit) | VPA target |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for w in doc["workloads"]:
        (c,) = w["containers"]
        mine = c["memwarden"]
        note = " (leak: no policy)" if w["leaking"] else ""
        note += " (2 OOM kills)" if c["basis"]["oomKills"] else ""
        lines.append(
            f"| {w['workload']['kind']} {w['workload']['name']}{note}"
            f" | {_mib(c['basis']['peakBytes'])} | {_mib(c['basis']['p95Bytes'])}"
            f" | {_mib(mine['requestBytes'])} | {_mib(mine['limitBytes'])}"
            f" | {mine['GOMEMLIMIT'] or '-'} | {_mib(c['krrSimpleBytes'])}"
            f" | {_mib(c['vpaTargetBytes'])} |"
        )
    return "\n".join(lines)


def test_docs_table_matches_a_run(history_prometheus: PrometheusServer) -> None:
    """docs/recommend.md's comparison table is this scenario's output (MiB, rounded)."""
    text = DOC.read_text()
    documented = text.split(TABLE_START)[1].split(TABLE_END)[0].strip()
    assert documented == comparison_table(recommend_json(history_prometheus))


def test_a_leak_gets_no_bigger_limit(history_prometheus: PrometheusServer) -> None:
    leaky = by_name(recommend_json(history_prometheus))["leaky"]
    assert leaky["leaking"] is True
    assert leaky["policy"] is None
    (c,) = leaky["containers"]
    assert c["memwarden"]["limitBytes"] is None
    assert c["leak"]["bytesPerHour"] == pytest.approx(3 * MIB, rel=0.01)
    # The anchors would raise the limit above the leak's current size.
    assert c["krrSimpleBytes"] > 704 * MIB and c["vpaTargetBytes"] > 704 * MIB
    assert any(f"memoryincidents -n {NAMESPACE}" in note for note in c["notes"])


def test_intent_form_when_the_kubelet_writes_memory_high(
    history_prometheus: PrometheusServer,
) -> None:
    doc = recommend_json(
        history_prometheus,
        "--throttling-factor",
        "0.9",
        "--reservation-policy",
        "TieredReservation",
    )
    api = by_name(doc)["api"]
    assert api["policy"]["spec"]["memory"] == {"protect": "399Mi", "high": "840Mi"}
    assert api["containers"][0]["memwarden"]["memoryHighBytes"] == 840 * MIB
    assert api["containers"][0]["memwarden"]["GOMEMLIMIT"] == "756MiB"


def test_selector_and_table(history_prometheus: PrometheusServer) -> None:
    doc = recommend_json(history_prometheus, "--selector", "app=db")
    assert [w["workload"]["name"] for w in doc["workloads"]] == ["db"]
    table = recommend(history_prometheus, "-o", "table")
    assert table.returncode == 0, table.stderr
    header, *rows = table.stdout.splitlines()
    assert header.split()[:3] == ["workload", "container", "pods"]
    assert any(row.startswith("Deployment/leaky") and "LEAK" in row for row in rows)


def test_bad_input_names_the_flag(history_prometheus: PrometheusServer) -> None:
    result = recommend(history_prometheus, "--window", "seven days")
    assert result.returncode == 2
    assert "--window" in result.stderr
    result = recommend(history_prometheus, "--selector", "app in (a,b)")
    assert result.returncode == 2
    assert "--selector" in result.stderr
    result = recommend(history_prometheus, "-n", 'x"} or vector(1) #')
    assert result.returncode == 2
    assert "--namespace" in result.stderr


def test_an_unreachable_prometheus_is_exit_1(history_prometheus: PrometheusServer) -> None:
    unreachable = PrometheusServer(workdir=Path("/nonexistent"), targets=[])  # never started
    result = recommend(unreachable, "--timeout", "5")
    assert result.returncode == 1
    assert unreachable.url in result.stderr
    empty = recommend(history_prometheus, "-n", "nothing-here")
    assert empty.returncode == 1
    assert "no container_memory_working_set_bytes for namespace nothing-here" in empty.stderr


def test_policies_apply_and_the_leak_points_at_its_incident(
    history_prometheus: PrometheusServer, kube: client.ApiClient, crds: Path, devcluster: Path
) -> None:
    ensure_namespace(client.CoreV1Api(kube), NAMESPACE)
    try:
        leaky_pod = WORKLOADS["leaky"].pod_names()[0]
        client.CustomObjectsApi(kube).create_namespaced_custom_object(
            "memwarden.dev",
            "v1alpha1",
            NAMESPACE,
            "memoryincidents",
            {
                "apiVersion": "memwarden.dev/v1alpha1",
                "kind": "MemoryIncident",
                "metadata": {"name": "leaky-heap-1"},
                "spec": {"pod": leaky_pod, "container": "app"},
            },
        )
        result = recommend(history_prometheus, "--kubeconfig", str(devcluster))
        assert result.returncode == 0, result.stderr
        documents = [d for d in yaml.safe_load_all(result.stdout) if d]
        assert {d["metadata"]["name"] for d in documents} == {
            "api",
            "batch",
            "db-statefulset",
            "agent-daemonset",
        }
        for document in documents:
            MemoryPolicy.model_validate(document)
        assert "last incident leaky-heap-1" in result.stdout
        applied = kubectl(devcluster, "apply", "-f", "-", input=result.stdout)
        assert applied.stdout.count("created") == 4, applied.stdout
        stored = client.CustomObjectsApi(kube).get_namespaced_custom_object(
            "memwarden.dev", "v1alpha1", NAMESPACE, "memorypolicies", "api"
        )
        assert stored["spec"]["memory"] == {"request": "399Mi", "limit": "840Mi"}
    finally:
        client.CoreV1Api(kube).delete_namespace(NAMESPACE)
