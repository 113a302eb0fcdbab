"""Background tasks the handlers start at operator start-up and stop at clean-up.

Each lives in kopf's memo under a key of its own; stopping one cancels it and waits
until it has finished, so nothing runs on after the event loop's owner moved on.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine
from typing import Any

import kopf


def start(memo: kopf.Memo, key: str, work: Coroutine[Any, Any, None]) -> None:
    memo[key] = asyncio.create_task(work, name=key)


async def stop(memo: kopf.Memo, key: str) -> None:
    await cancel(memo.get(key))


async def cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel ``task`` (if any) and wait for it to end."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


__all__ = ["cancel", "start", "stop"]
