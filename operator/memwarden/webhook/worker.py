"""The admission webhook in a process of its own (``python -m memwarden.webhook.worker``).

Why a process: the operator's other work (Kubernetes calls, Prometheus queries, evidence
retention, uploads) runs in threads that hold the GIL in slices; every slice is a wait
for a review on the same interpreter. Measured with ``bench/admission_busy_bench.py``, that
work made the webhook's p99 four times its idle value. A process of its own shares no
GIL, no event loop and no garbage collector with that work, and imports only what a
decision needs (no kopf, no Kubernetes client).

It makes no API call either: the operator (its parent) feeds it the policy index over
stdin, the whole index first (it listens only after that, as the in-process webhook
did), then each namespace whose policies change. It reports on stdout: that it listens,
and once a second what it answered (the parent keeps the metrics and the summary line).
When the parent goes away, stdin ends and so does the worker.

The pipe carries pickles both ways: between two processes of the same code, with no
other writer, as ``multiprocessing`` does.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import pickle
import signal
import struct
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from memwarden import admission
from memwarden.mutation import PlanCache
from memwarden.observability import health
from memwarden.selection import PolicyIndex
from memwarden.sizing import KubeletProfile
from memwarden.webhook import server as webhook
from memwarden.webhook.tlsreload import CertificateReloader

logger = logging.getLogger(__name__)

_FRAME = struct.Struct("!I")
#: How often the worker reports what it answered.
REPORT_SECONDS = 1.0
#: How long a worker may take to listen (imports, index, certificates) before it counts as failed.
_START_SECONDS = 60.0


@dataclass(frozen=True)
class WorkerConfig:
    """What the worker needs from the operator's settings (sent first, once)."""

    host: str
    port: int
    path: str
    certfile: str
    keyfile: str
    file_check_seconds: float
    profile: KubeletProfile
    never_governed: frozenset[str]
    dry_run: bool


@dataclass
class Report:
    """What the worker answered since its last report."""

    outcomes: Counter[str] = field(default_factory=Counter)
    infeasible: Counter[str] = field(default_factory=Counter)
    seconds: list[float] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.outcomes)


def encode(message: tuple[Any, ...]) -> bytes:
    """One length-prefixed message."""
    payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _FRAME.pack(len(payload)) + payload


async def read_message(reader: asyncio.StreamReader) -> tuple[Any, ...] | None:
    """The next message; None at the end of the stream."""
    try:
        header = await reader.readexactly(_FRAME.size)
        (size,) = _FRAME.unpack(header)
        message: tuple[Any, ...] = pickle.loads(await reader.readexactly(size))
    except asyncio.IncompleteReadError:
        return None
    return message


class _ReportingTally(webhook.AdmissionTally):
    """The webhook's tally kept for the parent's report: the metrics live there."""

    def __init__(self) -> None:
        super().__init__()
        self.report = Report()

    def add(self, decision: admission.Decision, seconds: float) -> None:
        self.report.outcomes[decision.outcome] += 1
        if decision.outcome == "infeasible" and decision.policy:
            self.report.infeasible[decision.policy] += 1
        self.report.seconds.append(seconds)

    def take(self) -> Report:
        report, self.report = self.report, Report()
        return report


async def _pipes() -> tuple[asyncio.StreamReader, asyncio.WriteTransport]:
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin.buffer)
    transport, _ = await loop.connect_write_pipe(asyncio.BaseProtocol, sys.stdout.buffer)
    return reader, transport


def _apply(index: PolicyIndex, message: tuple[Any, ...]) -> None:
    kind = message[0]
    if kind == "all":
        index.replace_all(message[1])
    elif kind == "namespace":
        index.swap_namespace(message[1], message[2])
    else:
        logger.warning("admission worker: unknown message %r ignored", kind)


async def serve() -> int:
    reader, out = await _pipes()
    first = await read_message(reader)
    if first is None or first[0] != "config":
        logger.error("admission worker: no configuration on stdin")
        return 2
    config: WorkerConfig = first[1]
    index = PolicyIndex()
    snapshot = await read_message(reader)
    if snapshot is None:
        return 0
    _apply(index, snapshot)
    cache = PlanCache()

    def admit(pod: Any, namespace: str | None) -> admission.Decision:
        return admission.admit(
            pod=pod,
            namespace=namespace,
            index=index,
            profile=config.profile,
            never_governed=config.never_governed,
            dry_run=config.dry_run,
            cache=cache,
        )

    tally = _ReportingTally()
    certificates = CertificateReloader(
        certfile=config.certfile, keyfile=config.keyfile, interval=config.file_check_seconds
    )
    server = webhook.WebhookServer(
        app=webhook.make_webhook_app(path=config.path, admit=admit, tally=tally),
        host=config.host,
        port=config.port,
        certificates=certificates,
    )
    gc.collect()
    gc.freeze()  # the imports and the index live as long as the process (see handlers)
    try:
        await server.start()
    except OSError as exc:
        out.write(encode(("error", f"cannot listen on {config.host}:{config.port}: {exc}")))
        return 1
    out.write(encode(("listening", len(index))))
    reporting = asyncio.create_task(_report(tally, out))
    try:
        while (message := await read_message(reader)) is not None:
            if message[0] == "drain":
                server.start_draining()
            else:
                _apply(index, message)
    finally:
        # stdin closed (the operator stops, or died): stop listening, finish the reviews
        # in flight, then exit; the drain itself was asked for before ("drain").
        await server.stop()
        reporting.cancel()
        report = tally.take()
        if report:
            out.write(encode(("report", report)))
    return 0


async def _report(tally: _ReportingTally, out: asyncio.WriteTransport) -> None:
    while True:
        await asyncio.sleep(REPORT_SECONDS)
        report = tally.take()
        if report:
            out.write(encode(("report", report)))


def main() -> None:
    # The operator decides when the worker stops (it closes stdin, after the drain): a
    # SIGTERM to the operator's process group (tests, shells; a kubelet signals PID 1
    # only) must not take admission down before the operator's own shutdown does, nor
    # make it look like a crash to restart.
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    logging.basicConfig(
        stream=sys.stderr,
        level=logging.INFO,
        format="%(asctime)s %(levelname)-8s %(name)s: %(message)s",
    )
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency; plain asyncio works too
        runner = asyncio.run
    started = time.monotonic()
    code = runner(serve())
    logger.debug("admission worker exits after %.0fs", time.monotonic() - started)
    sys.exit(code)


class AdmissionWorker:
    """The operator's side: starts the worker, feeds it the policy index, keeps its
    reports, and starts it again if it dies (pods created meanwhile are admitted
    unchanged, ``failurePolicy: Ignore``, as when the operator is down)."""

    def __init__(
        self, *, config: WorkerConfig, index: PolicyIndex, tally: webhook.AdmissionTally
    ) -> None:
        self._config = config
        self._index = index
        self._tally = tally
        self._process: asyncio.subprocess.Process | None = None
        self._supervising: asyncio.Task[None] | None = None
        self._stopping = False
        index.subscribe(self._changed)

    async def start(self) -> int:
        """Start the worker; return the policies it indexed once it listens."""
        listening = await self._spawn()
        health.webhook_listening(True)
        supervising = self._supervising = asyncio.create_task(self._supervise())
        health.watch("admission_worker", lambda: health.task_ended(supervising))
        return listening

    async def _spawn(self) -> int:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "memwarden.webhook.worker",
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        self._process = process
        assert process.stdin is not None and process.stdout is not None
        process.stdin.write(encode(("config", self._config)))
        process.stdin.write(encode(("all", self._index.all_candidates())))
        try:
            first = await asyncio.wait_for(read_message(process.stdout), _START_SECONDS)
        except TimeoutError:
            first = ("error", f"not listening after {_START_SECONDS:.0f}s")
        if first is None or first[0] != "listening":
            process.kill()
            await process.wait()
            why = "exited" if first is None else first[1]
            raise WorkerError(f"admission worker: {why}")
        count: int = first[1]
        return count

    def _send(self, message: tuple[Any, ...]) -> None:
        process = self._process
        if process is None or process.stdin is None or process.returncode is not None:
            return  # a new worker gets the whole index when it starts
        with contextlib.suppress(ConnectionError, RuntimeError):  # it died: see _supervise
            process.stdin.write(encode(message))

    def _changed(self, namespace: str | None) -> None:
        if namespace is None:
            self._send(("all", self._index.all_candidates()))
        else:
            self._send(("namespace", namespace, self._index.in_namespace(namespace)))

    async def _supervise(self) -> None:
        delay = 1.0
        while not self._stopping:
            process = self._process
            assert process is not None and process.stdout is not None
            while (message := await read_message(process.stdout)) is not None:
                if message[0] == "report":
                    report: Report = message[1]
                    self._tally.merge(report.outcomes, report.infeasible, report.seconds)
            code = await process.wait()
            if self._stopping:
                return
            health.webhook_listening(False, "the admission worker exited; restarting it")
            logger.error(
                "admission worker (pid %d) exited with %s; starting another in %.0fs",
                process.pid,
                code,
                delay,
            )
            await asyncio.sleep(delay)
            try:
                await self._spawn()
                health.webhook_listening(True)
                delay = 1.0
            except WorkerError as exc:
                logger.error("%s", exc)
                delay = min(delay * 2, 30.0)

    async def stop(self, *, drain_seconds: float = 0.0) -> None:
        """Not ready at once; the worker drains for ``drain_seconds`` (as
        ``WebhookServer.stop`` does), then stops listening, answers the reviews in flight
        and exits. Its last report is read before it is reaped."""
        self._stopping = True
        health.start_draining()
        health.unwatch("admission_worker")
        process = self._process
        if process is not None and process.returncode is None and drain_seconds > 0:
            self._send(("drain",))
            await asyncio.sleep(drain_seconds)
        if process is not None and process.returncode is None:
            assert process.stdin is not None
            process.stdin.close()  # the worker stops serving and exits
            try:
                await asyncio.wait_for(process.wait(), webhook.SHUTDOWN_SECONDS + 5)
            except TimeoutError:
                process.kill()
                await process.wait()
        health.webhook_listening(False, "the webhook stopped")
        if self._supervising is not None:
            with contextlib.suppress(TimeoutError):  # its last report, read to the end
                await asyncio.wait_for(asyncio.shield(self._supervising), 1)
            self._supervising.cancel()


class WorkerError(RuntimeError):
    """The admission worker did not start listening; the message says why."""


__all__ = [
    "REPORT_SECONDS",
    "AdmissionWorker",
    "Report",
    "WorkerConfig",
    "WorkerError",
    "encode",
    "read_message",
    "serve",
]


if __name__ == "__main__":  # run as the module, so pickles name memwarden.webhook.worker
    from memwarden.webhook.worker import main as _main

    _main()
