"""``/healthz`` and ``/readyz`` of the operator's HTTP app (mounted by handlers/http.py).

Live: the event loop answers (the webhook shares it) and every part that must keep
running still does: each one registers a check (``watch``) saying what died, if anything
(a background loop that ended, a pod watcher thread gone), so a kubelet restarts an
operator that answers but no longer works. Ready: the webhook has a serving
certificate that has not expired, i.e. the API server can be answered, its webhook
listens, and it is not draining. A replica that is not ready is taken out of the
Service's endpoints; with ``failurePolicy: Ignore`` the pods meanwhile are admitted by the
other replicas, or unmutated.

Draining (``start_draining``): the operator is stopping. ``/readyz`` answers 503 at once so
the endpoints controller takes the replica out of the Service for new connections, while
the webhook keeps answering for ``webhook.drain_seconds`` (docs/ha.md, "Rolling restarts
and draining").
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

_certificate_not_after: float | None = None
#: Why the webhook does not answer now (None while it listens).
_webhook_down: str | None = "the webhook is not listening yet"
_draining = False
#: name -> a check returning None while its part runs, else what is wrong.
_liveness_checks: dict[str, Callable[[], str | None]] = {}


def watch(name: str, check: Callable[[], str | None]) -> None:
    """Make ``/healthz`` fail while ``check`` says something is wrong."""
    _liveness_checks[name] = check


def unwatch(name: str) -> None:
    """The part stopped on purpose (clean-up): no longer checked."""
    _liveness_checks.pop(name, None)


def task_ended(task: asyncio.Task[None] | None) -> str | None:
    """Why a task that must run for ever is not running (None while it runs)."""
    if task is None or not task.done():
        return None
    if task.cancelled():
        return "cancelled"
    error = task.exception()
    return f"ended: {type(error).__name__}: {error}" if error else "ended"


def liveness() -> list[str]:
    """What has stopped that must run; empty while the operator is alive."""
    return [f"{name}: {why}" for name, check in list(_liveness_checks.items()) if (why := check())]


def record_certificate(not_after: float) -> None:
    """The serving certificate now in use expires at ``not_after`` (Unix time)."""
    global _certificate_not_after
    _certificate_not_after = not_after


def webhook_listening(listening: bool, why_not: str = "the webhook stopped listening") -> None:
    """The webhook (inline server or admission worker) listens now, or not, and why."""
    global _webhook_down
    _webhook_down = None if listening else why_not


def start_draining() -> None:
    """The operator is stopping: not ready from now on (no way back in this process)."""
    global _draining
    _draining = True


def draining() -> bool:
    return _draining


def readiness(now: float) -> str | None:
    """None when ready, else why not."""
    if _draining:
        return "draining: the operator is stopping"
    if _webhook_down is not None:
        return _webhook_down
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
    problems = liveness()
    if not problems:
        return web.Response(text="ok\n")
    return web.Response(status=503, text="\n".join(problems) + "\n")


async def _readyz(_: web.Request) -> web.Response:
    why = readiness(time.time())
    if why is None:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=why + "\n")


def subapps() -> dict[str, web.Application]:
    """By prefix: ``/healthz`` and ``/readyz``."""
    return {"/healthz": _app(_healthz), "/readyz": _app(_readyz)}


__all__ = [
    "draining",
    "liveness",
    "readiness",
    "record_certificate",
    "start_draining",
    "subapps",
    "task_ended",
    "unwatch",
    "watch",
    "webhook_listening",
]
