"""A stand-in for a Service: a loopback TCP load balancer over operator replicas.

Why it exists: the local control plane has no kube-proxy and no endpoints controller, and
the tests point the webhook configuration (``operator.py``, ``register_webhook``) or the
toolbox's evidence URL (``MEMWARDEN_EVIDENCE_BASE_URL``) at ``https://127.0.0.1:PORT``.
With two replicas, something must stand where the Service is, or a rolling restart and an
upload reaching a follower cannot be tested at all. This is that something, and it
reproduces what matters there:

- the readiness probe: each backend's ``/readyz`` is polled every ``probe_seconds``
  (failureThreshold 1, successThreshold 1, as ``periodSeconds`` of the chart's probe but
  faster, so tests run in seconds); a backend is in the endpoints only while it answers
  200. A backend without a probe (``readyz_port=None``) is in the endpoints from the
  start and stays there, as a pod without a readiness probe is Ready once it runs;
- the endpoints controller + kube-proxy: each NEW connection goes to one backend among the
  ready ones (round robin); a backend that turns not ready is removed for new connections
  only;
- conntrack: a connection, once made, stays with its backend until one side closes it,
  whatever the probes say meanwhile (a keep-alive connection of the API server to a
  terminating replica is not moved, exactly as with iptables/IPVS kube-proxy);
- a connection routed to a backend that does not listen fails (the client's connection is
  closed without an answer, and it is not tried on another backend: the API server's call
  fails, and with ``failurePolicy: Ignore`` the pod is admitted unmutated; a toolbox
  upload is retried by the toolbox), as a SYN DNAT-ed to a pod that stopped listening is
  refused;
- the client's source address: kube-proxy rewrites only the destination (DNAT) of a
  pod's connection to a ClusterIP, so the replica sees the pod's IP, which the evidence
  API's upload source check compares with the pod's ``status.podIPs``. The simulated
  node gives each pod a loopback address of its own (127.0.0.0/8 is all routed to
  ``lo``), so the balancer binds its connection to the backend to the address the client
  came from;
- the propagation delay: a probe's result reaches the routing table ``propagation_seconds``
  later (probe -> kubelet status -> EndpointSlice -> kube-proxy on every node; about a
  second in a small idle cluster, more on a loaded one). It is configurable because it
  is what the drain must cover: a drain shorter than probe period + propagation loses
  pods.

One thing is the test's hand, not a Service's: ``prefer(names)`` sends each new
connection to the first READY backend in that order (the others are used only when none
of those is ready). kube-proxy picks at random (iptables) or round robin (IPVS); a test
that must know "the Service happened to pick the follower" steers it so instead of
hoping for it.

TLS passes through untouched: the replicas serve the same certificate, as the pods of a
Deployment do. What it does not reproduce: per-node kube-proxy views that disagree with
each other for a moment, a connection to a dead pod IP that hangs (SYN unanswered until a
timeout) instead of being refused, the terminating-endpoints fallback (kube-proxy uses a
terminating but still serving endpoint when no other is ready), session affinity,
masquerading (SNAT) where a cluster applies it, and anything about DNS. It counts what it
did (``stats``), so a test can say where connections went and how many found no listener.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import multiprocessing
import multiprocessing.process
import socket
import ssl
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

_PROBE_TIMEOUT = 1.0
_CONNECT_TIMEOUT = 1.0
_CHUNK = 64 * 1024


@dataclass(frozen=True)
class Backend:
    """One replica: the port connections are forwarded to, and where its ``/readyz`` is
    probed (HTTPS, trusting ``readyz_ca_file``, or plain HTTP without it; no probe at all
    without ``readyz_port``: always in the endpoints). The probed port may be ``port``
    itself, as with the operator's HTTP API."""

    name: str
    port: int
    readyz_port: int | None = None
    readyz_ca_file: str | None = None


@dataclass
class Stats:
    """What the balancer did, per backend name."""

    #: Connections routed to each backend (those refused included).
    connections: Counter[str] = field(default_factory=Counter)
    #: Connections routed to a backend that did not accept them (closed without answer).
    refused: Counter[str] = field(default_factory=Counter)
    #: Connections that arrived when no backend was ready (closed without answer).
    no_backend: int = 0
    #: (time.monotonic(), backend, ready) for every change of the routing table.
    changes: list[tuple[float, str, bool]] = field(default_factory=list)


class ServiceLoadBalancer:
    """The test's handle on a balancer listening on ``127.0.0.1:port``.

    The balancer runs in a process of its own: in the test's process it would wait for
    the GIL behind the client threads, and every FIN it passes on late widens the window
    in which the API server writes a review to a connection the replica already closed
    (a delay kube-proxy, in the kernel, does not add)."""

    def __init__(
        self,
        backends: list[Backend],
        *,
        probe_seconds: float = 0.5,
        propagation_seconds: float = 1.0,
    ) -> None:
        self.backends = list(backends)
        self.probe_seconds = probe_seconds
        self.propagation_seconds = propagation_seconds
        self.port = 0
        self._process: multiprocessing.process.BaseProcess | None = None
        self._conn: Connection | None = None
        self._final: Stats | None = None

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        ours, theirs = context.Pipe()
        self._process = context.Process(
            target=_serve,
            args=(self.backends, self.probe_seconds, self.propagation_seconds, theirs),
            name="servicelb",
            daemon=True,
        )
        self._process.start()
        theirs.close()
        self._conn = ours
        if not ours.poll(30):
            raise RuntimeError("service load balancer did not start")
        self.port = ours.recv()

    def _ask(self, question: str | tuple[str, list[str]]) -> Any:
        assert self._conn is not None, "not started"
        self._conn.send(question)
        return self._conn.recv()

    def ready(self) -> set[str]:
        """The backends new connections go to now."""
        found: set[str] = self._ask("ready")
        return found

    def prefer(self, names: Sequence[str]) -> None:
        """From now on, each new connection goes to the first ready backend of ``names``
        (round robin over the ready ones when none of them is ready, or ``names`` is
        empty). The test's steering, not a Service's: see the module docstring."""
        unknown = set(names) - {b.name for b in self.backends}
        if unknown:
            raise ValueError(f"prefer: no backend named {sorted(unknown)}")
        self._ask(("prefer", list(names)))

    @property
    def stats(self) -> Stats:
        """What it did so far (once stopped: until it stopped)."""
        if self._conn is None and self._final is not None:
            return self._final
        found: Stats = self._ask("stats")
        return found

    def stop(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(OSError, EOFError):
                self._final = self._ask("stats")
                self._ask("stop")
            self._conn.close()
            self._conn = None
        if self._process is not None:
            self._process.join(10)
            if self._process.is_alive():
                self._process.kill()
                self._process.join(5)

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"


def _serve(
    backends: list[Backend], probe_seconds: float, propagation_seconds: float, conn: Connection
) -> None:
    asyncio.run(_Balancer(backends, probe_seconds, propagation_seconds).run(conn))


class _Balancer:
    """The balancer itself, on its process's event loop."""

    def __init__(
        self, backends: list[Backend], probe_seconds: float, propagation_seconds: float
    ) -> None:
        self.backends = {b.name: b for b in backends}
        self.probe_seconds = probe_seconds
        self.propagation_seconds = propagation_seconds
        self.stats = Stats()
        #: The routing table: names of the backends new connections may go to.
        self.ready: set[str] = set()
        #: Backends new connections go to first, when ready (``prefer``).
        self.preferred: list[str] = []
        #: Last probe result per backend, before propagation.
        self._probed: dict[str, bool] = {}
        self._turn = itertools.count()
        self._probes: list[asyncio.Task[None]] = []

    async def run(self, conn: Connection) -> None:
        loop = asyncio.get_running_loop()
        stopped = asyncio.Event()
        server = await asyncio.start_server(self._accept, "127.0.0.1", 0, backlog=1024)
        for backend in self.backends.values():
            if backend.readyz_port is None:  # no readiness probe: Ready once it runs
                self._probed[backend.name] = True
                self._route(backend.name, True)
        # Kept: the event loop holds tasks only weakly.
        self._probes = [
            asyncio.create_task(self._probe_forever(b))
            for b in self.backends.values()
            if b.readyz_port is not None
        ]

        def answer() -> None:
            try:
                question = conn.recv()
            except (EOFError, OSError):  # the test went away
                question = "stop"
            if question == "ready":
                conn.send(set(self.ready))
            elif question == "stats":
                conn.send(self.stats)
            elif isinstance(question, tuple) and question[0] == "prefer":
                self.preferred = question[1]
                conn.send(None)
            else:
                loop.remove_reader(conn.fileno())
                conn.send(None)
                stopped.set()

        loop.add_reader(conn.fileno(), answer)
        conn.send(server.sockets[0].getsockname()[1])
        await stopped.wait()
        server.close()
        # The probes and the connections still pinned: ended here, not left pending.
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _probe_forever(self, backend: Backend) -> None:
        loop = asyncio.get_running_loop()
        port = backend.readyz_port
        assert port is not None, "started for probed backends only"
        tls: ssl.SSLContext | None = None
        while True:
            started = time.monotonic()
            try:  # the CA file may be written after the balancer starts: a failed probe
                if backend.readyz_ca_file and tls is None:
                    tls = ssl.create_default_context(cafile=backend.readyz_ca_file)
                ok = await _probe(port, tls)
            except (OSError, ssl.SSLError):
                ok = False
            if self._probed.get(backend.name) != ok:
                self._probed[backend.name] = ok
                loop.call_later(self.propagation_seconds, self._route, backend.name, ok)
            await asyncio.sleep(max(0.0, self.probe_seconds - (time.monotonic() - started)))

    def _route(self, name: str, ready: bool) -> None:
        if self._probed.get(name) != ready or (name in self.ready) == ready:
            return  # a later probe said otherwise (its own change is on its way), or no change
        (self.ready.add if ready else self.ready.discard)(name)
        self.stats.changes.append((time.monotonic(), name, ready))

    def _pick(self) -> str | None:
        for name in self.preferred:
            if name in self.ready:
                return name
        ready = sorted(self.ready)
        if not ready:
            return None
        return ready[next(self._turn) % len(ready)]

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        name = self._pick()
        if name is None:
            self.stats.no_backend += 1
            writer.close()
            return
        backend = self.backends[name]
        self.stats.connections[name] += 1
        source = writer.get_extra_info("peername")[0]
        try:
            upstream_reader, upstream_writer = await asyncio.wait_for(
                _connect_from(source, backend.port), _CONNECT_TIMEOUT
            )
        except (OSError, TimeoutError):
            self.stats.refused[name] += 1
            writer.close()
            return
        # Pinned: this pair lives until one side closes, whatever the probes say.
        await asyncio.gather(
            _pump(reader, upstream_writer),
            _pump(upstream_reader, writer),
            return_exceptions=True,
        )
        for w in (writer, upstream_writer):
            w.close()


async def _connect_from(
    source: str, port: int
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A connection to ``127.0.0.1:port`` from the address ``source`` (the client's: DNAT
    keeps it). IP_BIND_ADDRESS_NO_PORT leaves the port's choice to connect(), which needs
    it unique for this destination only: a bind() alone would take a port of its own per
    connection out of the ephemeral range (TIME_WAIT ones included), which the thousands
    of connections of a load test can use up."""
    loop = asyncio.get_running_loop()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_IP, socket.IP_BIND_ADDRESS_NO_PORT, 1)
        sock.bind((source, 0))
        await loop.sock_connect(sock, ("127.0.0.1", port))
        return await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy one direction; pass the end of the stream on (FIN) as a half-close."""
    try:
        while data := await reader.read(_CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (OSError, RuntimeError):
        writer.close()  # a reset on one side: the other side's connection ends too


async def _probe(port: int, tls: ssl.SSLContext | None) -> bool:
    """GET /readyz answers 200 within the probe timeout (the kubelet's httpGet probe)."""
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection(
                "127.0.0.1",
                port,
                ssl=tls,
                server_hostname="127.0.0.1" if tls else None,
            ),
            _PROBE_TIMEOUT,
        )
    except (OSError, TimeoutError, ssl.SSLError):
        return False
    try:
        writer.write(b"GET /readyz HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n")
        status = await asyncio.wait_for(reader.readline(), _PROBE_TIMEOUT)
        return status.split(b" ", 2)[1:2] == [b"200"]
    except (OSError, TimeoutError, ssl.SSLError, IndexError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(writer.wait_closed(), _PROBE_TIMEOUT)


@contextmanager
def service_load_balancer(
    backends: list[Backend], **options: float
) -> Iterator[ServiceLoadBalancer]:
    """A started balancer, stopped on exit."""
    balancer = ServiceLoadBalancer(backends, **options)  # type: ignore[arg-type]
    balancer.start()
    try:
        yield balancer
    finally:
        balancer.stop()


__all__ = ["Backend", "ServiceLoadBalancer", "Stats", "service_load_balancer"]
