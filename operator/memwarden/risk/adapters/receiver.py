"""The Alertmanager webhook receiver: an aiohttp sub-application. No Kubernetes calls.

``POST /alertmanager/v4`` with ``Authorization: Bearer <token>`` and an Alertmanager v4
payload. The request only parses and hands the findings to ``on_findings`` (which queues
them): it never waits on the API server, so Alertmanager's notification timeout and the
admission webhook sharing this event loop are never held up by incident creation.

Every malformed request is answered 4xx with a JSON ``{"error": ...}`` and one log line;
nothing a client sends can produce a 500 or stop the server.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import os
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from aiohttp import web

from memwarden.httpbody import read_limited
from memwarden.risk.alertmanager import AlertBatch, PayloadError, parse_payload
from memwarden.risk.findings import Finding

logger = logging.getLogger(__name__)

#: Alertmanager sends one group per request; 1 MiB holds a few thousand alerts, and the
#: same limit as aiohttp's default keeps a client from making us buffer more.
MAX_BODY_BYTES = 2**20
#: Where the operator mounts the sub-app, and the route inside it: ``/alertmanager/v4``.
PREFIX = "/alertmanager"
ROUTE = "/v4"

OnFindings = Callable[[Sequence[Finding]], Awaitable[None]]
TokenSource = str | Callable[[], str]


class Overloaded(Exception):
    """Raised by ``on_findings`` when it cannot take more work: answered 503, so
    Alertmanager retries the notification later."""


class TokenUnavailable(Exception):
    """The token cannot be read (missing Secret file): answered 503, never 'allow'."""


@dataclass
class TokenFile:
    """The bearer token from a file (a mounted Secret), re-read when the file changes.

    Kubernetes updates a mounted Secret in place; checking the mtime per request is one
    ``stat`` and lets a rotated token take effect without a restart.
    """

    path: Path
    _cached: tuple[float, str] | None = field(default=None, repr=False)

    def __call__(self) -> str:
        try:
            mtime = os.stat(self.path).st_mtime
            if self._cached is None or self._cached[0] != mtime:
                self._cached = (mtime, self.path.read_text().strip())
        except OSError as exc:
            raise TokenUnavailable(f"cannot read the token file {self.path}: {exc}") from exc
        return self._cached[1]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


def _authorized(header: str, token: str) -> bool:
    """Constant-time comparison of ``Bearer <token>``; an empty token authorises nothing.

    aiohttp hands over header bytes that are not UTF-8 as surrogate escapes: they are
    compared as the bytes sent (a plain ``encode()`` raised, and the request got a 500)."""
    scheme, _, given = header.partition(" ")
    if not token or scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(given.strip().encode("utf-8", "surrogateescape"), token.encode())


def _log_batch(batch: AlertBatch, remote: str | None) -> None:
    if batch.unmapped:
        logger.warning(
            "alertmanager receiver %r: %d firing alert(s) name no namespace/pod, ignored: %s",
            batch.receiver,
            len(batch.unmapped),
            ", ".join(sorted(set(batch.unmapped)))[:200],
        )
    if batch.truncated:
        logger.warning(
            "alertmanager receiver %r: Alertmanager left out %d alert(s) (max_alerts)",
            batch.receiver,
            batch.truncated,
        )
    logger.debug(
        "alertmanager notification from %s: %d finding(s), %d resolved",
        remote,
        len(batch.findings),
        batch.resolved,
    )


def make_alertmanager_app(
    *,
    token: TokenSource,
    on_findings: OnFindings,
    on_batch: Callable[[AlertBatch], None] | None = None,
) -> web.Application:
    """The receiver as a sub-app; ``on_batch`` sees every parsed batch (metrics)."""
    tokens: Callable[[], str] = (lambda: token) if isinstance(token, str) else token

    async def receive(request: web.Request) -> web.Response:
        try:
            # A stat (and a read on change) of a mounted file: off the loop admission uses.
            expected = await asyncio.to_thread(tokens)
        except TokenUnavailable as exc:
            logger.error("alertmanager receiver refused a request: %s", exc)
            return _error(503, "the receiver's token is not available")
        if not _authorized(request.headers.get("Authorization", ""), expected):
            logger.warning("alertmanager receiver: unauthorized request from %s", request.remote)
            return _error(401, "missing or wrong bearer token", **{"WWW-Authenticate": "Bearer"})
        body = await read_limited(request, MAX_BODY_BYTES)
        if body is None:
            logger.warning(
                "alertmanager receiver: body from %s over %d bytes refused",
                request.remote,
                MAX_BODY_BYTES,
            )
            return _error(413, f"body larger than {MAX_BODY_BYTES} bytes")
        try:
            batch = parse_payload(body)
        except PayloadError as exc:
            logger.warning(
                "alertmanager receiver: refused a payload from %s: %s",
                request.remote,
                str(exc)[:300],
            )
            return _error(400, str(exc)[:1000])
        _log_batch(batch, request.remote)
        if on_batch is not None:
            on_batch(batch)
        if batch.findings:
            try:
                await on_findings(batch.findings)
            except Overloaded as exc:
                logger.warning("alertmanager receiver: overloaded, asked to retry: %s", exc)
                return _error(503, f"overloaded: {exc}", **{"Retry-After": "10"})
        return web.json_response(
            {
                "accepted": len(batch.findings),
                "resolved": batch.resolved,
                "unmapped": len(batch.unmapped),
            }
        )

    app = web.Application(client_max_size=MAX_BODY_BYTES)
    app.router.add_post(ROUTE, receive)
    return app
