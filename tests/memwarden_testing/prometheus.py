"""A real Prometheus (Debian's ``/usr/bin/prometheus``) scraping a test exporter. Test
infrastructure, not product code.

``SeriesExporter`` serves cAdvisor-style series whose values the test sets: the working
set as a curve over time, fault and PSI counters as rates, OOM events as a count. The
Prometheus fixture scrapes any ``ScrapeTarget`` (anything with a ``target`` ``host:port``
serving ``/metrics``), so the node simulator can take the exporter's place later
without touching the Prometheus side.

The session's Prometheus evaluates memwarden's recording rules (``TEST_RULES``, over the
short windows the tests use), so integration tests exercise them; the raw queries are
exercised by the tests that build them without ``recorded``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Protocol

import pytest
import yaml

from memwarden.risk.promql import Windows
from memwarden.risk.rules import RuleSet
from memwarden_testing.cluster import stop_process_group, wait_for
from memwarden_testing.operator import free_port

PROMETHEUS = Path(os.environ.get("MEMWARDEN_TEST_PROMETHEUS", "/usr/bin/prometheus"))

#: Windows for a Prometheus scraping every second (the tests' operator uses the same).
FAST_WINDOWS = Windows(regression="10s", rate="5s", oom="1m")
#: The recording rules of the session's Prometheus: the tests' windows, the default horizon.
TEST_RULES = RuleSet(windows=FAST_WINDOWS, horizons=("10m",))

#: Working set in bytes, as a function of seconds since the series was set.
Curve = Callable[[float], float]


def flat(value: float) -> Curve:
    return lambda _t: value


def rising(start: float, per_second: float, *, until: float | None = None) -> Curve:
    """A leak: ``start`` growing by ``per_second``, capped at ``until`` (the limit)."""

    def curve(t: float) -> float:
        value = start + per_second * t
        return value if until is None else min(value, until)

    return curve


class ScrapeTarget(Protocol):
    """What the Prometheus fixture scrapes: ``host:port`` serving ``/metrics``."""

    @property
    def target(self) -> str: ...


@dataclass(frozen=True)
class GoRuntime:
    """A Go program's own runtime series, as client_golang names them: the GC takes
    ``gc_cpu_share`` of ``procs`` cores; ``gomemlimit`` ``2**63 - 1`` is "not set"."""

    gc_cpu_share: float
    heap_goal: float
    gomemlimit: float = 2**63 - 1
    procs: int = 2

    def render(self, labels: str, t: float) -> list[str]:
        total = self.procs * t
        return [
            f"go_cpu_classes_gc_total_cpu_seconds_total{{{labels}}} {self.gc_cpu_share * total}",
            f"go_cpu_classes_total_cpu_seconds_total{{{labels}}} {total}",
            f"go_gc_heap_goal_bytes{{{labels}}} {self.heap_goal:.0f}",
            f"go_gc_gomemlimit_bytes{{{labels}}} {self.gomemlimit:.0f}",
        ]


@dataclass
class ContainerSeries:
    """One container's cAdvisor-style series. Counters grow at the given rates."""

    namespace: str
    pod: str
    container: str
    working_set: Curve = field(default_factory=lambda: flat(0.0))
    major_faults_per_second: float = 0.0
    psi_waiting_per_second: float = 0.0
    oom_events: int = 0
    limit_bytes: float = 0.0  # container_spec_memory_limit_bytes: 0 = no limit (cAdvisor)
    go: GoRuntime | None = None
    """The program's own Go runtime series (scraped from the pod, not the kubelet)."""
    since: float = field(default_factory=time.monotonic)

    def render(self, now: float) -> list[str]:
        t = max(0.0, now - self.since)
        labels = f'namespace="{self.namespace}",pod="{self.pod}",container="{self.container}"'
        return [
            f"container_memory_working_set_bytes{{{labels}}} {self.working_set(t):.0f}",
            f'container_memory_failures_total{{{labels},failure_type="pgmajfault",'
            f'scope="container"}} {self.major_faults_per_second * t:.0f}',
            f"container_oom_events_total{{{labels}}} {self.oom_events}",
            f"container_spec_memory_limit_bytes{{{labels}}} {self.limit_bytes:.0f}",
            f"container_pressure_memory_waiting_seconds_total{{{labels}}} "
            f"{self.psi_waiting_per_second * t:.6f}",
            *(self.go.render(labels, t) if self.go else []),
        ]


_HEADER = [
    "# TYPE container_memory_working_set_bytes gauge",
    "# TYPE container_memory_failures_total counter",
    "# TYPE container_oom_events_total counter",
    "# TYPE container_spec_memory_limit_bytes gauge",
    "# TYPE container_pressure_memory_waiting_seconds_total counter",
]


class SeriesExporter:
    """A loopback HTTP server whose ``/metrics`` the test controls; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._series: dict[tuple[str, str, str], ContainerSeries] = {}
        self.scrapes = 0
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?")[0] != "/metrics":
                    self.send_error(404)
                    return
                body = exporter.render().encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def target(self) -> str:
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    def start(self) -> SeriesExporter:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=10)

    def set(self, series: ContainerSeries) -> None:
        """Serve ``series`` (replacing the same container's, its clock restarted)."""
        with self._lock:
            self._series[(series.namespace, series.pod, series.container)] = series

    def set_many(self, series: Sequence[ContainerSeries]) -> None:
        with self._lock:
            for item in series:
                self._series[(item.namespace, item.pod, item.container)] = item

    def oom_kill(self, *, namespace: str, pod: str, container: str) -> None:
        """One more OOM event for a container already served."""
        with self._lock:
            self._series[(namespace, pod, container)].oom_events += 1

    def remove_namespace(self, namespace: str) -> None:
        with self._lock:
            for key in [k for k in self._series if k[0] == namespace]:
                del self._series[key]

    def render(self) -> str:
        now = time.monotonic()
        with self._lock:
            self.scrapes += 1
            series = list(self._series.values())
        lines = list(_HEADER)
        for item in series:
            lines += item.render(now)
        return "\n".join(lines) + "\n"


@dataclass
class PrometheusServer:
    """One Prometheus process on a free loopback port, with its own data directory.

    Restartable on the same port and data, so a client configured with ``url`` sees an
    outage and a recovery, as with a real Prometheus being redeployed.
    """

    workdir: Path
    targets: Sequence[str]
    scrape_interval: str = "1s"
    metrics_path: str = "/metrics"
    """``/metrics/cadvisor`` for the node simulator."""
    rule_files: Sequence[Path] = ()
    recording: RuleSet | None = None
    """memwarden's recording rules to evaluate (written beside the configuration)."""
    alertmanagers: Sequence[str] = ()
    """``host:port`` of Alertmanagers that alerts from ``rule_files`` go to."""
    retention: str = "2h"
    """``--storage.tsdb.retention.time``: longer for backfilled history (``history.py``)."""
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def write_config(self) -> Path:
        config = {
            "global": {
                "scrape_interval": self.scrape_interval,
                "evaluation_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
            },
            "scrape_configs": [
                {
                    "job_name": "cadvisor-test",
                    "honor_labels": True,
                    "metrics_path": self.metrics_path,
                    "static_configs": [{"targets": list(self.targets)}],
                },
                {
                    # Pods' own /metrics (``scrape_pod``): file discovery, as Debian's
                    # Prometheus has no Kubernetes discovery.
                    "job_name": "pods",
                    "file_sd_configs": [
                        {"files": [str(self.pod_targets_file)], "refresh_interval": "1s"}
                    ],
                },
            ],
        }
        rule_files = [str(path) for path in self.rule_files]
        if self.recording is not None:
            recording = self.workdir / "memwarden-recording-rules.yml"
            recording.write_text(yaml.safe_dump(self.recording.document(), sort_keys=False))
            rule_files.append(str(recording))
        if rule_files:
            config["rule_files"] = rule_files
        if self.alertmanagers:
            config["alerting"] = {
                "alertmanagers": [{"static_configs": [{"targets": list(self.alertmanagers)}]}]
            }
        path = self.workdir / "prometheus.yml"
        path.write_text(yaml.safe_dump(config))
        return path

    @property
    def pod_targets_file(self) -> Path:
        return self.workdir / "pod-targets.json"

    def scrape_pod(self, address: str, *, namespace: str, pod: str, container: str) -> None:
        """Scrape ``address`` (``ip:port``) with the labels Kubernetes discovery and the pod
        scrape job of docs/risk.md give a pod's series: ``namespace``, ``pod``, ``container``."""
        labels = {"namespace": namespace, "pod": pod, "container": container}
        targets = json.loads(self.pod_targets_file.read_text())
        targets.append({"targets": [address], "labels": labels})
        partial = self.pod_targets_file.with_suffix(".tmp")
        partial.write_text(json.dumps(targets))
        partial.replace(self.pod_targets_file)  # Prometheus never reads half a file

    def start(self, *, timeout: float = 60) -> None:
        if self.running:
            return
        if not PROMETHEUS.exists():
            pytest.fail(f"{PROMETHEUS} is not installed: run hack/bootstrap.sh")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if not self.pod_targets_file.exists():
            self.pod_targets_file.write_text("[]")
        config = self.write_config()
        log = (self.workdir / "prometheus.log").open("ab")
        self.process = subprocess.Popen(
            [
                str(PROMETHEUS),
                f"--config.file={config}",
                f"--storage.tsdb.path={self.workdir / 'data'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                f"--storage.tsdb.retention.time={self.retention}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._ready, timeout=timeout, what=f"prometheus ready on {self.url}")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"prometheus exited: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> None:
        """SIGTERM, then wait (SIGKILL after 20 s): the port is free when this returns."""
        stop_process_group(self.process)

    def query(self, expr: str) -> list[dict[str, Any]]:
        """An instant query, for assertions in tests (the product uses its own adapter)."""
        url = f"{self.url}/api/v1/query?{urllib.parse.urlencode({'query': expr})}"
        with urllib.request.urlopen(url, timeout=10) as response:
            payload = json.load(response)
        result: list[dict[str, Any]] = payload["data"]["result"]
        return result

    def wait_for_series(self, expr: str, *, count: int = 1, timeout: float = 60) -> None:
        """Until ``expr`` returns at least ``count`` series."""
        wait_for(
            lambda: len(self.query(expr)) >= count,
            timeout=timeout,
            interval=0.5,
            what=f"{count} series for {expr}",
        )

    def log_tail(self, size: int = 3000) -> str:
        try:
            return (self.workdir / "prometheus.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""


# --- fixtures (registered through ``pytest_plugins`` in tests/conftest.py) ------------


@pytest.fixture(scope="session")
def series_exporter() -> Iterator[SeriesExporter]:
    """The session's test exporter (namespaces keep tests apart)."""
    exporter = SeriesExporter().start()
    yield exporter
    exporter.stop()


@pytest.fixture(scope="session")
def prometheus_server(
    series_exporter: SeriesExporter, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[PrometheusServer]:
    """A real Prometheus scraping the exporter every second and evaluating memwarden's
    recording rules (``TEST_RULES``); stopped and waited for."""
    if shutil.which(str(PROMETHEUS)) is None:
        pytest.fail(f"{PROMETHEUS} is not installed: run hack/bootstrap.sh")
    server = PrometheusServer(
        workdir=tmp_path_factory.mktemp("prometheus"),
        targets=[series_exporter.target],
        recording=TEST_RULES,
    )
    server.start()
    yield server
    server.stop()


@pytest.fixture
def prometheus(prometheus_server: PrometheusServer) -> PrometheusServer:
    """The session's Prometheus, restarted if an earlier test stopped it."""
    prometheus_server.start()
    return prometheus_server
