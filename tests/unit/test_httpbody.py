"""What a request body may cost memwarden's HTTP servers (``memwarden.httpbody``).

Real aiohttp servers on loopback, driven by a raw client: a compressed body is read as
sent, never inflated; an announced oversize body is refused before it is read; a bearer
token that is not ASCII is refused before anyone is asked about it.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import logging
import socket
import threading
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest
from kubernetes import client

from memwarden.admission import Decision
from memwarden.evidence.adapters.api import make_evidence_app
from memwarden.evidence.adapters.auth import KubeAuthorizer
from memwarden.evidence.adapters.store import EvidenceStore
from memwarden.webhook.server import (
    MAX_REVIEW_BYTES,
    AdmissionTally,
    WebhookServer,
    make_webhook_app,
)
from memwarden_testing.operator import free_port
from memwarden_testing.rawhttp import Answer, RawClient

pytestmark = [pytest.mark.unit, pytest.mark.local]  # each test starts a server

PATH = "/memwarden-pods"


def unchanged(pod: object, namespace: object) -> Decision:
    return Decision("unchanged", detail="test")


@pytest.fixture
def webhook_port() -> int:
    return free_port()


@pytest.fixture
def webhook(webhook_port: int) -> Iterator[Callable[..., Answer]]:
    """``send(...)`` to the admission webhook served as the operator serves it (no TLS)."""
    port = webhook_port
    app = make_webhook_app(path=PATH, admit=unchanged, tally=AdmissionTally())
    server = WebhookServer(app=app, host="127.0.0.1", port=port, certificates=None)
    loop = asyncio.new_event_loop()
    loop.run_until_complete(server.start())
    raw = RawClient("127.0.0.1", port, timeout=5)

    def send(*args: object, **kwargs: object) -> Answer:
        future = asyncio.run_coroutine_threadsafe(
            asyncio.to_thread(raw.send, *args, **kwargs), loop
        )
        return future.result()

    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield send
    finally:
        asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(timeout=10)
        loop.close()


def test_a_gzip_encoded_review_is_read_as_sent_not_inflated(
    webhook: Callable[..., Answer],
) -> None:
    """A body with Content-Encoding: gzip is the bytes sent (not JSON: 400); inflated,
    it was 64 MiB (413 after inflating 8 MiB of it, and up to 64 MiB kept in memory)."""
    bomb = gzip.compress(b"\0" * 64 * 2**20, compresslevel=9)
    answer = webhook(b"POST", PATH.encode(), headers=[(b"Content-Encoding", b"gzip")], body=bomb)
    assert answer.status == 400, answer
    assert "not JSON" in json.loads(answer.body)["error"]


def test_an_announced_oversize_review_is_refused_before_it_is_read(
    webhook: Callable[..., Answer], webhook_port: int
) -> None:
    """A Content-Length over the limit gets 413 at once, without the body (the server
    waited for all of it before)."""
    head = f"POST {PATH} HTTP/1.1\r\nHost: x\r\nContent-Length: {MAX_REVIEW_BYTES + 1}\r\n\r\n"
    with socket.create_connection(("127.0.0.1", webhook_port), timeout=5) as sock:
        sock.sendall(head.encode() + b"{")
        status_line = sock.makefile("rb").readline()
    assert status_line.split()[1] == b"413", status_line


def test_an_unknown_expectation_is_417_however_it_is_written(
    webhook: Callable[..., Answer],
) -> None:
    """aiohttp's own 417 quoted the header and raised on bytes that are not UTF-8 (a 500),
    on a route and on a request that matches none (404, 405); ``100-continue`` is still
    honoured."""
    body = json.dumps({"kind": "AdmissionReview"}).encode()
    for method, path in ((b"POST", PATH), (b"POST", "/nowhere"), (b"GET", PATH)):
        headers = [(b"Expect", b"\xff\xfe")]
        answer = webhook(method, path.encode(), headers=headers, body=body)
        assert answer.status == 417, (method, path, answer)
    answer = webhook(b"POST", PATH.encode(), headers=[(b"Expect", b"100-continue")], body=body)
    assert answer.status == 400, answer  # read, parsed, refused as no AdmissionReview


def test_a_request_aiohttp_cannot_parse_is_one_warning_not_a_traceback(
    webhook: Callable[..., Answer], caplog: pytest.LogCaptureFixture
) -> None:
    """A client's malformed request is a 400 and one WARNING line (aiohttp logged it at
    ERROR with a traceback: anyone who can connect could fill the log with them)."""
    with caplog.at_level(logging.DEBUG):
        answer = webhook(b"POST", PATH.encode(), headers=[(b"Bad Header", b"x")], body=b"{}")
    assert answer.status == 400, answer
    records = [r for r in caplog.records if r.name == "memwarden.http"]
    assert [(r.levelname, r.exc_info) for r in records] == [("WARNING", None)], records
    assert "malformed HTTP request from 127.0.0.1: Invalid header token" in records[0].getMessage()
    servers = ("aiohttp", "memwarden")
    assert not [
        r for r in caplog.records if r.levelno >= logging.ERROR and r.name.startswith(servers)
    ]


def serve_evidence(tmp_path: Path, test: Callable[[RawClient], Awaitable[None]]) -> None:
    """The evidence API with the operator's authorizer, whose API server is never reached."""
    from aiohttp import web

    async def main() -> None:
        app = make_evidence_app(
            store=EvidenceStore(tmp_path / "store"),
            authorizer=KubeAuthorizer(
                client.ApiClient(client.Configuration(host="http://127.0.0.1:9"))
            ),
            upload_key=b"k" * 32,
            max_bundle_bytes=2**20,
            incident=lambda namespace, name: None,
            pod_addresses=None,
        )
        root = web.Application()
        root.add_subapp("/evidence", app)
        runner = web.AppRunner(root)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        try:
            await test(RawClient("127.0.0.1", port, timeout=5))
        finally:
            await runner.cleanup()

    asyncio.run(main())


def test_a_bearer_token_that_is_not_ascii_is_refused_unasked(tmp_path: Path) -> None:
    """401 before any review (a 500 before: hashing the token for the cache raised on the
    surrogate escapes aiohttp makes of bytes that are not UTF-8)."""

    async def check(raw: RawClient) -> None:
        for token in (b"\xff\xfe", b"caf\xc3\xa9"):
            answer = await asyncio.to_thread(
                raw.send,
                b"GET",
                b"/evidence/v1/namespaces/shop/incidents",
                headers=[(b"Authorization", b"Bearer " + token)],
            )
            assert answer.status == 401, (token, answer)
            assert "printable ASCII" in json.loads(answer.body)["message"]

    serve_evidence(tmp_path, check)
