"""cAdvisor-style metrics of the simulated containers, and the simulator's HTTP server.

Test infrastructure. ``render_cadvisor`` is pure: samples in, Prometheus text out, with
cAdvisor's metric names and labels (``namespace``, ``pod``, ``container``, ``image``,
``name``) so the PromQL memwarden ships works unchanged. Values come from the real
processes (see ``procs``): the working set is the RSS (no page cache accounting without
cgroups). Memory gauges exist for running containers only; ``container_oom_events_total``
exists for every container of a live pod and survives restarts, as a cgroup's would.

The server (loopback) answers ``/metrics/cadvisor``, ``/healthz``, ``/debug/pods`` (JSON:
pods, containers, pids) and ``/containerLogs/<ns>/<pod>/<container>`` (the current container
instance's log, or the previous one's with ``previous=true``; ``tailLines`` and
``limitBytes`` as the kubelet has them). A second instance over TLS is the Node's
kubelet endpoint, so ``kubectl logs`` works through the API server (which does not verify
kubelet certificates unless ``--kubelet-certificate-authority`` is set).
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

log = logging.getLogger("nodesim.metrics")

#: The most of a log file ``/containerLogs`` returns (its tail).
MAX_LOG_BYTES = 1 << 20


@dataclass(frozen=True)
class ContainerSample:
    namespace: str
    pod: str
    container: str
    image: str
    #: cAdvisor's runtime container name; stable per pod container here, so counters
    #: continue across restarts on one series.
    name: str
    running: bool
    working_set_bytes: int = 0
    rss_bytes: int = 0
    limit_bytes: int = 0
    pgfault: int = 0
    pgmajfault: int = 0
    oom_events: int = 0
    start_time_seconds: float = 0.0


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _labels(sample: ContainerSample, **extra: str) -> str:
    pairs = {
        "container": sample.container,
        "image": sample.image,
        "name": sample.name,
        "namespace": sample.namespace,
        "pod": sample.pod,
        **extra,
    }
    return "{" + ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(pairs.items())) + "}"


_FAMILIES: tuple[tuple[str, str, str], ...] = (
    ("container_memory_working_set_bytes", "gauge", "Current working set in bytes."),
    ("container_memory_rss", "gauge", "Size of RSS in bytes."),
    ("container_memory_usage_bytes", "gauge", "Current memory usage in bytes."),
    ("container_spec_memory_limit_bytes", "gauge", "Memory limit for the container."),
    ("container_start_time_seconds", "gauge", "Start time of the container since unix epoch."),
    ("container_memory_failures_total", "counter", "Cumulative count of memory faults."),
    ("container_oom_events_total", "counter", "Count of out of memory events."),
)


def render_cadvisor(samples: Sequence[ContainerSample], *, machine_memory_bytes: int) -> str:
    """The Prometheus text exposition of ``samples``."""
    lines: list[str] = []
    running = [s for s in samples if s.running]
    for family, kind, help_text in _FAMILIES:
        lines.append(f"# HELP {family} {help_text}")
        lines.append(f"# TYPE {family} {kind}")
        if family == "container_oom_events_total":
            lines += [f"{family}{_labels(s)} {s.oom_events}" for s in samples]
            continue
        for s in running:
            if family == "container_memory_failures_total":
                for failure_type, count in (("pgfault", s.pgfault), ("pgmajfault", s.pgmajfault)):
                    labels = _labels(s, failure_type=failure_type, scope="container")
                    lines.append(f"{family}{labels} {count}")
                continue
            value: int | float = {
                "container_memory_working_set_bytes": s.working_set_bytes,
                "container_memory_rss": s.rss_bytes,
                "container_memory_usage_bytes": s.rss_bytes,
                "container_spec_memory_limit_bytes": s.limit_bytes,
                "container_start_time_seconds": s.start_time_seconds,
            }[family]
            lines.append(f"{family}{_labels(s)} {value!r}")
    lines.append("# HELP machine_memory_bytes Amount of memory installed on the machine.")
    lines.append("# TYPE machine_memory_bytes gauge")
    lines.append(f"machine_memory_bytes {machine_memory_bytes}")
    return "\n".join(lines) + "\n"


def select_log(data: bytes, query: dict[str, list[str]]) -> bytes:
    """The kubelet's ``tailLines`` and ``limitBytes`` applied to a log (others ignored)."""
    tail = (query.get("tailLines") or [""])[0]
    if tail.isdigit():
        lines = data.splitlines(keepends=True)
        data = b"".join(lines[-int(tail) :]) if int(tail) else b""
    limit = (query.get("limitBytes") or [""])[0]
    if limit.isdigit():
        data = data[: int(limit)]
    return data


@dataclass(frozen=True)
class LogRange:
    path: Path
    start: int = 0
    end: int | None = None


@dataclass(frozen=True)
class Endpoints:
    """What the server serves, as callables into the running simulator."""

    samples: Callable[[], Sequence[ContainerSample]]
    machine_memory_bytes: int
    #: (namespace, pod, container, previous) -> the log file and the byte range of the
    #: current (or previous) container instance, ``None`` for "to the end".
    log_range: Callable[[str, str, str, bool], LogRange | None]
    debug_pods: Callable[[], Any]


class MetricsServer:
    """A small threaded HTTP server on loopback; ``port`` 0 picks a free one."""

    def __init__(
        self,
        *,
        host: str,
        port: int,
        endpoints: Endpoints,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.endpoints = endpoints
        handler = _handler_for(endpoints)
        if tls is None:
            self._server = ThreadingHTTPServer((host, port), handler)
        else:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(certfile=str(tls[0]), keyfile=str(tls[1]))
            self._server = _TLSServer((host, port), handler, context=context)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="metrics", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()


class _TLSServer(ThreadingHTTPServer):
    """HTTPS; the handshake happens in the handler's thread, never in the accept loop."""

    def __init__(
        self,
        address: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        *,
        context: ssl.SSLContext,
    ) -> None:
        super().__init__(address, handler)
        self._context = context

    def get_request(self) -> tuple[Any, Any]:
        sock, address = super().get_request()
        wrapped = self._context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False)
        return wrapped, address


def _handler_for(endpoints: Endpoints) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        server_version = "nodesim"

        def do_GET(self) -> None:
            url = urlsplit(self.path)
            path = url.path
            try:
                if path == "/metrics/cadvisor":
                    text = render_cadvisor(
                        endpoints.samples(), machine_memory_bytes=endpoints.machine_memory_bytes
                    )
                    self._send(HTTPStatus.OK, text.encode(), "text/plain; version=0.0.4")
                elif path == "/healthz":
                    self._send(HTTPStatus.OK, b"ok", "text/plain")
                elif path == "/debug/pods":
                    body = json.dumps(endpoints.debug_pods(), indent=2, default=str)
                    self._send(HTTPStatus.OK, body.encode(), "application/json")
                elif path.startswith("/containerLogs/"):
                    self._logs(path, parse_qs(url.query))
                else:
                    self._send(HTTPStatus.NOT_FOUND, b"not found\n", "text/plain")
            except BrokenPipeError:
                pass

        def _logs(self, path: str, query: dict[str, list[str]]) -> None:
            parts = [unquote(p) for p in path.split("/")[2:]]
            if len(parts) != 3:
                self._send(HTTPStatus.BAD_REQUEST, b"want /containerLogs/<ns>/<pod>/<c>\n", "")
                return
            previous = (query.get("previous") or [""])[0] == "true"
            found = endpoints.log_range(parts[0], parts[1], parts[2], previous)
            if found is None or not found.path.exists():
                self._send(HTTPStatus.NOT_FOUND, b"no such container log\n", "text/plain")
                return
            with found.path.open("rb") as handle:
                end = found.end if found.end is not None else found.path.stat().st_size
                start = max(found.start, end - MAX_LOG_BYTES)
                handle.seek(start)
                data = handle.read(max(0, end - start))
            self._send(HTTPStatus.OK, select_log(data, query), "text/plain; charset=utf-8")

        def _send(self, status: HTTPStatus, body: bytes, content_type: str) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type or "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            log.debug("%s " + format, self.address_string(), *args)

    return Handler
