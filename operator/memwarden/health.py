"""``/healthz`` and ``/readyz`` of the operator's HTTP app (mounted by handlers/http.py).

Live: the event loop answers (the webhook shares it). Ready: the webhook has a serving
certificate that has not expired, i.e. the API server can be answered. A replica that is
not ready is taken out of the Service's endpoints; with ``failurePolicy: Ignore`` the
pods meanwhile are admitted by the other replicas, or unmutated.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

_certificate_not_after: float | None = None


def record_certificate(not_after: float) -> None:
    """The serving certificate now in use expires at ``not_after`` (Unix time)."""
    global _certificate_not_after
    _certificate_not_after = not_after


def readiness(now: float) -> str | None:
    """None when ready, else why not."""
    if _certificate_not_after is None:
        return "no webhook serving certificate yet"
    if _certificate_not_after <= now:
        return "the webhook serving certificate expired"
    return None


def _app(handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.Application:
    app = web.Application()
    app.router.add_get("", handler)
    return app


async def _healthz(_: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(_: web.Request) -> web.Response:
    why = readiness(time.time())
    if why is None:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=why + "\n")


def subapps() -> dict[str, web.Application]:
    """By prefix: ``/healthz`` and ``/readyz``."""
    return {"/healthz": _app(_healthz), "/readyz": _app(_readyz)}


__all__ = ["readiness", "record_certificate", "subapps"]
