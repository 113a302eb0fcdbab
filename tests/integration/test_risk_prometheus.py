"""The risk queries and the Prometheus adapter against a real Prometheus and test exporter."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from memwarden.api import OomRiskSpec
from memwarden.risk.adapters.prometheus import PrometheusClient, PrometheusUnavailable
from memwarden.risk.promql import Recorded, policy_queries
from memwarden.risk.signals import Governed, evaluate
from memwarden_testing.cluster import wait_for
from memwarden_testing.prometheus import (
    FAST_WINDOWS,
    TEST_RULES,
    ContainerSeries,
    GoRuntime,
    PrometheusServer,
    SeriesExporter,
    flat,
    rising,
)

GI = 2**30
MI = 2**20
#: Short windows for a Prometheus scraping every second; no recording rules given to the
#: builders: these tests cover the raw queries (test_risk_recording_rules the recorded ones).
FAST = FAST_WINDOWS


@pytest.fixture
def ns() -> str:
    return f"risk-{uuid.uuid4().hex[:8]}"


def governed(ns: str, *pods: str) -> dict[tuple[str, str, str], Governed]:
    return {
        (ns, p, "app"): Governed(namespace=ns, pod=p, container="app", limit_bytes=GI) for p in pods
    }


def test_every_builder_raw_and_recorded_is_valid_promql(
    prometheus: PrometheusServer, ns: str
) -> None:
    risk = OomRiskSpec.model_validate(
        {"majorFaultsPerSecond": 1, "pressureRatio": 0.1, "gcCPURatio": 0.5, "for": "5s"}
    )
    client = PrometheusClient(prometheus.url, timeout=5)
    recorded = Recorded(windows=FAST, horizons=TEST_RULES.horizons)
    for rules in (None, recorded):
        for query in policy_queries(
            risk, namespace=ns, containers=["app", "side-car"], windows=FAST, recorded=rules
        ):
            # This Recorded is a rule set from before gcCPURatio: raw series for it.
            assert query.recorded == (rules is not None and query.signal != "gcCPURatio")
            assert client.query(query.expr) == [], query.signal
    assert client.queries == 12


def test_rising_series_holds_and_flat_one_does_not(
    prometheus: PrometheusServer, series_exporter: SeriesExporter, ns: str
) -> None:
    series_exporter.set_many(
        [
            ContainerSeries(ns, "leaky", "app", working_set=rising(0.95 * GI, 2 * MI, until=GI)),
            ContainerSeries(ns, "steady", "app", working_set=flat(0.5 * GI)),
            ContainerSeries(ns, "faulty", "app", major_faults_per_second=200, oom_events=0),
        ]
    )
    risk = OomRiskSpec.model_validate(
        {"usageRatio": 0.9, "timeToLimit": "10m", "majorFaultsPerSecond": 100, "for": "5s"}
    )
    queries = policy_queries(risk, namespace=ns, containers=None, windows=FAST)
    client = PrometheusClient(prometheus.url, timeout=5)

    def holding() -> set[tuple[str, str]]:
        results = [(q, client.query(q.expr)) for q in queries]
        findings = evaluate(results, governed=governed(ns, "leaky", "steady", "faulty"), policy="p")
        return {(f.pod, f.signal) for f in findings}

    expected = {
        ("leaky", "usageRatio"),
        ("leaky", "timeToLimit"),
        ("faulty", "majorFaultsPerSecond"),
    }

    def all_expected() -> set[tuple[str, str]] | None:
        found = holding()
        return found if found >= expected else None

    found = wait_for(all_expected, timeout=40, interval=1, what="signals")
    assert "steady" not in {pod for pod, _ in found}

    series_exporter.oom_kill(namespace=ns, pod="steady", container="app")
    wait_for(lambda: ("steady", "oomKilled") in holding(), timeout=20, interval=1, what="oom")
    series_exporter.remove_namespace(ns)


def test_gc_cpu_ratio_holds_only_near_gomemlimit(
    prometheus: PrometheusServer, series_exporter: SeriesExporter, ns: str
) -> None:
    """The GC's share holds only while the heap goal is near GOMEMLIMIT: a busy GC far
    from it, a calm GC near it, or no GOMEMLIMIT at all, is no spiral."""
    limit = 140 * MI
    series_exporter.set_many(
        [
            ContainerSeries(ns, "spiral", "app", go=GoRuntime(0.9, 0.93 * limit, limit)),
            ContainerSeries(ns, "far", "app", go=GoRuntime(0.9, 0.58 * limit, limit)),
            ContainerSeries(ns, "calm", "app", go=GoRuntime(0.05, 0.93 * limit, limit)),
            ContainerSeries(ns, "unlimited", "app", go=GoRuntime(0.9, 0.93 * limit)),
        ]
    )
    risk = OomRiskSpec.model_validate(
        {"usageRatio": None, "timeToLimit": None, "gcCPURatio": 0.5, "for": "5s"}
    )
    (gc, _oom) = policy_queries(risk, namespace=ns, containers=None, windows=FAST)
    client = PrometheusClient(prometheus.url, timeout=5)
    pods = governed(ns, "spiral", "far", "calm", "unlimited")

    def holding() -> list[tuple[str, float]] | None:
        found = evaluate([(gc, client.query(gc.expr))], governed=pods, policy="p")
        return [(f.pod, f.value or 0.0) for f in found] or None

    found = wait_for(holding, timeout=40, interval=1, what="gcCPURatio")
    assert [pod for pod, _ in found] == ["spiral"]
    assert found[0][1] == pytest.approx(0.9, abs=0.02)
    # Held for ``for`` and existing ``for`` ago: the others had as long to hold.
    assert [pod for pod, _ in holding() or []] == ["spiral"]
    series_exporter.remove_namespace(ns)


def test_time_to_limit_value_is_seconds_left(
    prometheus: PrometheusServer, series_exporter: SeriesExporter, ns: str
) -> None:
    # 1 MiB/s with 300 MiB to go: about 300 s left.
    series_exporter.set(ContainerSeries(ns, "leaky", "app", working_set=rising(GI - 310 * MI, MI)))
    risk = OomRiskSpec.model_validate({"usageRatio": None, "timeToLimit": "10m", "for": "5s"})
    (ttl, _oom) = policy_queries(risk, namespace=ns, containers=None, windows=FAST)
    client = PrometheusClient(prometheus.url, timeout=5)

    def finding() -> float | None:
        found = evaluate(
            [(ttl, client.query(ttl.expr))], governed=governed(ns, "leaky"), policy="p"
        )
        return found[0].value if found else None

    seconds = wait_for(finding, timeout=40, interval=1, what="timeToLimit")
    assert 250 < seconds < 320
    series_exporter.remove_namespace(ns)


def test_unreachable_prometheus_is_unavailable_fast() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    client = PrometheusClient(f"http://127.0.0.1:{port}", timeout=2)
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match=r"127\.0\.0\.1") as caught:
        client.query("up")
    assert time.monotonic() - started < 2
    assert caught.value.__cause__ is not None


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a Prometheus stuck in a heavy query."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    sock.close()


def test_slow_prometheus_times_out(silent_server: str) -> None:
    client = PrometheusClient(silent_server, timeout=0.5)
    started = time.monotonic()
    with pytest.raises(PrometheusUnavailable, match=r"no answer within 0\.5s"):
        asyncio.run(client.aquery("up"))
    assert time.monotonic() - started < 3


def test_queries_go_one_at_a_time_off_the_event_loop(prometheus: PrometheusServer) -> None:
    """A cycle's queries share one thread: a burst of them in several threads held the
    GIL away from the event loop that serves admission."""
    client = PrometheusClient(prometheus.url, timeout=5)
    threads: set[str] = set()
    query = client.query

    def recording(expr: str, **kwargs: Any) -> Any:
        threads.add(threading.current_thread().name)
        return query(expr, **kwargs)

    client.query = recording  # type: ignore[method-assign]

    async def burst() -> list[Any]:
        return await asyncio.gather(*(client.aquery("up") for _ in range(12)))

    assert len(asyncio.run(burst())) == 12
    assert len(threads) == 1 and threading.main_thread().name not in threads, threads
    client.close()


def test_refused_query_is_reported_short(prometheus: PrometheusServer) -> None:
    client = PrometheusClient(prometheus.url, timeout=5)
    with pytest.raises(PrometheusUnavailable, match="400") as caught:
        client.query("sum(" * 500)
    assert len(str(caught.value)) <= 300
