"""Background tasks the handlers start at operator start-up and stop at clean-up.

Each lives in kopf's memo under a key of its own; stopping one cancels it and waits
until it has finished, so nothing runs on after the event loop's owner moved on.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any

import kopf

from memwarden.observability import health

logger = logging.getLogger(__name__)


def start(
    memo: kopf.Memo, key: str, work: Coroutine[Any, Any, None], *, forever: bool = True
) -> None:
    """Run ``work`` as a task; ``/healthz`` fails if a ``forever`` one ends before ``stop``
    (a one-off, ``forever=False``, may end)."""
    task = memo[key] = asyncio.create_task(work, name=key)
    if forever:
        health.watch(key, lambda: health.task_ended(task))


async def stop(memo: kopf.Memo, key: str) -> None:
    health.unwatch(key)
    await cancel(memo.get(key))


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to end."""
    if task is None:
        return
    task.cancel()
    try:
        await task
    except asyncio.CancelledError:
        pass
    except Exception:  # it had failed before: /healthz said so; said here once more
        logger.exception("background task %s had ended with an error", task.get_name())


__all__ = ["cancel", "start", "stop"]
