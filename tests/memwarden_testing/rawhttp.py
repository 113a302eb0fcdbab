"""A raw HTTP/1.1 client for fuzzing the operator's servers, and where those servers are.

``http.client``, ``urllib`` and ``requests`` refuse or rewrite much of what a hostile
client sends (non-ASCII header bytes, a NUL or ``..`` in the target, a Content-Length
that is not the body's, a chunked body cut short); :class:`RawClient` writes the bytes
it is given on its own socket (TLS or not), then reads one answer with
``http.client.HTTPResponse``.

:func:`operator_api` and :func:`admission_webhook` are the only places the fuzz tests
learn a server's scheme and address: from ``OperatorProcess``'s URLs, so a switch of the
evidence API and the Alertmanager receiver to HTTPS changes nothing here.
"""

from __future__ import annotations

import contextlib
import dataclasses
import http.client
import socket
import ssl
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from memwarden_testing.operator import OperatorProcess

#: How the body is framed: ``length`` a true Content-Length, ``chunked`` Transfer-Encoding
#: in two chunks, ``none`` no framing header (the body is sent anyway), ``short`` a
#: Content-Length below the body's size, ``long`` one above it (the server waits for
#: bytes that never come, so no answer is owed), ``badchunk`` chunked with a chunk that
#: says it is longer than it is.
Framing = Literal["length", "chunked", "none", "short", "long", "badchunk"]
FRAMINGS: tuple[Framing, ...] = ("length", "chunked", "none", "short", "long", "badchunk")

#: Largest answer body read: the fuzz tests look at statuses and small JSON answers.
_MAX_ANSWER = 4 * 2**20


@dataclass(frozen=True)
class Answer:
    """One answer; ``status`` None when the server closed or said nothing in time."""

    status: int | None
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    timed_out: bool = False
    sent: bool = True
    """The whole request was written (False: the server closed before it had all of it)."""


@dataclass(frozen=True)
class RawClient:
    """One connection per request to ``host:port``, through TLS when ``tls`` is set."""

    host: str
    port: int
    tls: ssl.SSLContext | None = None
    timeout: float = 10.0
    #: How long to wait for an answer the server does not owe (framing ``long``).
    unowed_wait: float = 0.5

    def send(
        self,
        method: bytes,
        target: bytes,
        *,
        headers: list[tuple[bytes, bytes]] | None = None,
        body: bytes = b"",
        framing: Framing = "length",
    ) -> Answer:
        """Send one request exactly as given (plus Host, framing and Connection: close)."""
        lines = [method + b" " + target + b" HTTP/1.1", f"Host: {self.host}:{self.port}".encode()]
        lines += [name + b": " + value for name, value in headers or []]
        payload = body
        if framing == "length":
            lines.append(b"Content-Length: %d" % len(body))
        elif framing == "short":
            lines.append(b"Content-Length: %d" % (len(body) // 2))
        elif framing == "long":
            lines.append(b"Content-Length: %d" % (len(body) + 1 + len(body) // 2))
        elif framing == "chunked":
            lines.append(b"Transfer-Encoding: chunked")
            half = len(body) // 2
            payload = b"".join(
                b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:half], body[half:]) if part
            )
            payload += b"0\r\n\r\n"
        elif framing == "badchunk":
            lines.append(b"Transfer-Encoding: chunked")
            payload = b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) + 7, body)
        lines.append(b"Connection: close")
        request = b"\r\n".join(lines) + b"\r\n\r\n" + payload
        with self._connect() as sock:
            sock.settimeout(self.unowed_wait if framing in ("long", "badchunk") else self.timeout)
            sent = False
            with contextlib.suppress(OSError):  # refused early and closed: read its answer
                sock.sendall(request)
                sent = True
            return dataclasses.replace(_read_answer(sock, head=method == b"HEAD"), sent=sent)

    def _connect(self) -> socket.socket:
        sock = socket.create_connection((self.host, self.port), timeout=self.timeout)
        if self.tls is None:
            return sock
        return self.tls.wrap_socket(sock, server_hostname=self.host)


def _read_answer(sock: socket.socket, *, head: bool) -> Answer:
    response = http.client.HTTPResponse(sock, method="HEAD" if head else "GET")
    try:
        response.begin()
        body = response.read(_MAX_ANSWER)
    except TimeoutError:
        return Answer(status=None, timed_out=True)
    except (http.client.HTTPException, OSError):
        status = getattr(response, "status", None)
        if isinstance(status, int) and status > 0:  # headers read, body cut short
            return Answer(status=status, headers=dict(response.getheaders()))
        return Answer(status=None)
    finally:
        response.close()
    return Answer(status=response.status, headers=dict(response.getheaders()), body=body)


def _client(url: str, *, tls: ssl.SSLContext | None) -> tuple[RawClient, str]:
    parts = urlsplit(url)
    assert parts.hostname is not None and parts.port is not None, url
    context = tls if parts.scheme == "https" else None
    return RawClient(parts.hostname, parts.port, tls=context), parts.path


@dataclass(frozen=True)
class OperatorApi:
    """The operator's HTTP API (receiver, evidence API, metrics): a client and its paths."""

    client: RawClient
    alertmanager_path: str
    evidence_path: str
    metrics_path: str


def operator_api(operator: OperatorProcess) -> OperatorApi:
    """The operator's HTTP API as its ``alertmanager_url`` says (HTTP or HTTPS).

    An HTTPS API is not verified: these tests probe what the server does with input, and
    its certificate is another test's business; a switch of scheme or CA needs no change.
    """
    unverified = ssl.create_default_context()
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE
    client, path = _client(operator.alertmanager_url, tls=unverified)
    # The operator mounts the receiver at /alertmanager, the evidence API at /evidence.
    root = path.rsplit("/alertmanager", 1)[0]
    return OperatorApi(
        client=client,
        alertmanager_path=path,
        evidence_path=root + "/evidence",
        metrics_path=root + "/metrics",
    )


def admission_webhook(operator: OperatorProcess) -> RawClient:
    """The operator's webhook (always HTTPS), verified with the CA it was registered with."""
    context = ssl.create_default_context(cafile=str(operator.workdir / "ca.crt"))
    return RawClient("127.0.0.1", operator.webhook_port, tls=context)
