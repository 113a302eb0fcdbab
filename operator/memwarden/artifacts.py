"""What a capture can collect: the one list, in collection order.

Stdlib-only, so the toolbox image (no pydantic) and the API models share it.
"""

from __future__ import annotations

from typing import Literal, get_args

Artifact = Literal["heap", "allocs", "goroutine", "trace", "gcore", "smaps", "cgroup"]
#: Every artifact the toolbox can collect, in collection order.
ALL_ARTIFACTS: tuple[Artifact, ...] = get_args(Artifact)

__all__ = ["ALL_ARTIFACTS", "Artifact"]
