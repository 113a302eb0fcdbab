"""A tiny HTTP PUT sink on 127.0.0.1 for toolbox upload tests: checks a bearer token,
decodes chunked bodies, and streams each body to a file while hashing it.

Test infrastructure, deliberately dumber than the evidence store, but answering like it
where the toolbox cares: 201 when stored, 401 for a wrong token, 409 with the stored
``bytes``/``sha256`` in ``details`` when a bundle is already there. A ``script`` makes
the first requests fail on purpose: ``"503"`` answers 503 without storing,
``"lose-answer"`` stores the body and hangs up without answering. ``tls`` serves HTTPS
with a loopback certificate of a CA of its own (``UploadSink.ca_file``).
"""

from __future__ import annotations

import hashlib
import json
import ssl
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import BinaryIO

from memwarden_testing.tls import loopback_certificates


@dataclass(frozen=True)
class Received:
    """One PUT as the sink saw it."""

    path: str
    headers: dict[str, str]
    status: int
    file: Path | None = None
    size: int = 0
    sha256: str | None = None


def _chunks(stream: BinaryIO) -> Iterator[bytes]:
    """The data of a ``Transfer-Encoding: chunked`` body (RFC 9112 §7.1), chunk by chunk."""
    while True:
        size = int(stream.readline().split(b";")[0].strip(), 16)
        if size == 0:
            while stream.readline() not in (b"\r\n", b"\n", b""):
                pass  # trailer fields
            return
        yield stream.read(size)
        stream.readline()  # the CRLF after the chunk


@dataclass
class UploadSink:
    """Where uploads land; ``url`` is the base address, ``received`` what arrived."""

    directory: Path
    token: str
    script: tuple[str, ...] = ()
    url: str = ""
    ca_file: Path | None = None
    received: tuple[Received, ...] = ()
    stored: dict[str, Received] = field(default_factory=dict)

    def _record(self, item: Received) -> None:
        self.received = (*self.received, item)


def _handler(sink: UploadSink) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            headers = dict(self.headers.items())
            if self.headers.get("Authorization") != f"Bearer {sink.token}":
                self._answer(401, b'{"reason": "Unauthorized"}')
                sink._record(Received(path=self.path, headers=headers, status=401))
                self.close_connection = True
                return
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                body = _chunks(self.rfile)
            else:
                body = iter([self.rfile.read(int(self.headers.get("Content-Length", "0")))])
            step = sink.script[len(sink.received)] if len(sink.received) < len(sink.script) else ""
            file = sink.directory / f"upload-{len(sink.received)}.tar.gz"
            digest = hashlib.sha256()
            size = 0
            with file.open("wb") as out:
                for chunk in body:
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
            item = Received(
                path=self.path,
                headers=headers,
                status=201,
                file=file,
                size=size,
                sha256=digest.hexdigest(),
            )
            if step == "503":
                item = Received(path=self.path, headers=headers, status=503)
                self._answer(503, b'{"reason": "ServiceUnavailable"}')
            elif self.path in sink.stored:
                held = sink.stored[self.path]
                details = {"bytes": held.size, "sha256": held.sha256}
                item = Received(path=self.path, headers=headers, status=409)
                self._answer(409, json.dumps({"code": 409, "details": details}).encode())
            else:
                sink.stored[self.path] = item
                if step == "lose-answer":
                    self.close_connection = True
                else:
                    self._answer(201, b'{"stored": true}')
            sink._record(item)

        def _answer(self, status: int, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass  # quiet: pytest shows what a failing test asserts

    return Handler


@contextmanager
def upload_sink(
    directory: Path,
    *,
    token: str,
    script: tuple[str, ...] = (),
    port: int = 0,
    tls: bool = False,
) -> Iterator[UploadSink]:
    """A running sink on a loopback port (kernel-chosen unless given) for the ``with``
    block; a given port lets a test start the sink after its client (a server that was
    down). ``tls``: HTTPS, its CA in ``ca_file``."""
    sink = UploadSink(directory=directory, token=token, script=script)
    server = ThreadingHTTPServer(("127.0.0.1", port), _handler(sink))
    scheme = "http"
    if tls:
        sink.ca_file = directory / "sink-ca.crt"
        cert, key = directory / "sink.crt", directory / "sink.key"
        loopback_certificates(
            ca_name="upload-sink-ca", ca_file=sink.ca_file, cert_file=cert, key_file=key
        )
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        server.socket = context.wrap_socket(server.socket, server_side=True)
        scheme = "https"
    sink.url = f"{scheme}://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield sink
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)
