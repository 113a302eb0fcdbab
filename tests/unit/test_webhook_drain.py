"""A stopping webhook server drains (``WebhookServer.stop(drain_seconds=...)``): not ready
at once, answers on (a review already in flight too) with ``Connection: close`` so
keep-alive clients reconnect elsewhere, then stops listening."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable

import orjson
import pytest

from memwarden.admission import Decision
from memwarden.observability import health
from memwarden.webhook.server import AdmissionTally, WebhookServer, make_webhook_app

pytestmark = pytest.mark.local

PATH = "/memwarden-pods"
REVIEW = orjson.dumps(
    {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-1",
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "operation": "CREATE",
            "namespace": "shop",
            "userInfo": {"username": "alice"},
            "object": {"metadata": {"name": "web"}, "spec": {"containers": []}},
        },
    }
)


def request_head(length: int = len(REVIEW)) -> bytes:
    return (
        f"POST {PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        f"Content-Length: {length}\r\n\r\n"
    ).encode()


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    status = int((await reader.readline()).split()[1])
    headers = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode().partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers["content-length"]))
    return status, headers, body


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def listening(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def wait_until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(5):
        while not predicate():  # noqa: ASYNC110 (polls state the server changes)
            await asyncio.sleep(0.02)


def test_a_stopping_server_drains_then_finishes_the_review_in_flight(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(health, "_draining", False)
    monkeypatch.setattr(health, "_webhook_down", None)
    monkeypatch.setattr(health, "_certificate_not_after", float("inf"))

    async def scenario() -> None:
        port = free_port()
        server = WebhookServer(
            app=make_webhook_app(
                path=PATH, admit=lambda pod, ns: Decision("unchanged"), tally=AdmissionTally()
            ),
            host="127.0.0.1",
            port=port,
            certificates=None,
        )
        await server.start()
        assert health.readiness(0.0) is None
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request_head() + REVIEW)
        status, headers, body = await read_response(reader)
        assert status == 200 and headers.get("connection") != "close"
        assert orjson.loads(body)["response"]["allowed"] is True

        # A review in flight: its headers and part of its body sent before the stop.
        slow_reader, slow_writer = await asyncio.open_connection("127.0.0.1", port)
        slow_writer.write(request_head() + REVIEW[:10])
        await slow_writer.drain()

        stopping = asyncio.create_task(server.stop(drain_seconds=0.5))
        await wait_until(lambda: health.readiness(0.0) is not None)
        assert health.readiness(0.0) == "draining: the operator is stopping"
        # Draining: the kept-alive connection is answered, told to close, and closed.
        writer.write(request_head() + REVIEW)
        status, headers, _ = await read_response(reader)
        assert status == 200 and headers.get("connection") == "close"
        assert await reader.read() == b""
        # The review in flight is answered too, and new connections still are.
        slow_writer.write(REVIEW[10:])
        status, headers, body = await read_response(slow_reader)
        assert status == 200 and headers.get("connection") == "close"
        assert orjson.loads(body)["response"]["uid"] == "u-1"
        assert listening(port)
        assert not stopping.done()

        # Then it stops listening and returns.
        await asyncio.wait_for(stopping, 5)
        assert not listening(port)
        assert health.readiness(0.0) == "draining: the operator is stopping"

    asyncio.run(scenario())


def test_no_drain_stops_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(health, "_draining", False)

    async def scenario() -> None:
        port = free_port()
        server = WebhookServer(
            app=make_webhook_app(
                path=PATH, admit=lambda pod, ns: Decision("unchanged"), tally=AdmissionTally()
            ),
            host="127.0.0.1",
            port=port,
            certificates=None,
        )
        await server.start()
        await asyncio.wait_for(server.stop(drain_seconds=0), 2)
        assert not listening(port)
        assert health.draining()

    asyncio.run(scenario())
