"""The queue between pushed alerts and incident creation: one pending finding per pod.

The receiver answers Alertmanager as soon as its findings are queued; a single consumer
takes everything pending at once and opens incidents. Keyed by pod (an incident is per
pod, and cooldown is per pod), so an alert storm for a few pods holds a few entries,
however many notifications arrive; the findings folded into a pending one are reported
as duplicates. No network, no Kubernetes: asyncio only.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass

from memwarden.risk.findings import Finding

#: Distinct pods waiting at most. Far above what one consumer pass leaves behind (it takes
#: everything at once), low enough that a flood of distinct fake pods cannot grow memory.
DEFAULT_LIMIT = 2000


@dataclass(frozen=True)
class Offered:
    """What became of the findings of one ``offer``."""

    accepted: tuple[Finding, ...]
    duplicates: tuple[Finding, ...]
    dropped: tuple[Finding, ...]


class FindingQueue:
    """Pending findings by (namespace, pod); the first finding of a pod is kept."""

    def __init__(self, *, limit: int = DEFAULT_LIMIT) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self.limit = limit
        self._pending: dict[tuple[str, str], Finding] = {}
        self._ready = asyncio.Event()

    def __len__(self) -> int:
        return len(self._pending)

    def offer(self, findings: Iterable[Finding]) -> Offered:
        """Queue what fits; never blocks (the receiver must answer quickly)."""
        accepted: list[Finding] = []
        duplicates: list[Finding] = []
        dropped: list[Finding] = []
        for finding in findings:
            key = (finding.namespace, finding.pod)
            if key in self._pending:
                duplicates.append(finding)
            elif len(self._pending) >= self.limit:
                dropped.append(finding)
            else:
                self._pending[key] = finding
                accepted.append(finding)
        if self._pending:
            self._ready.set()
        return Offered(tuple(accepted), tuple(duplicates), tuple(dropped))

    async def take(self) -> list[Finding]:
        """Wait for pending findings, then return them all (oldest first) and clear."""
        await self._ready.wait()
        taken = list(self._pending.values())
        self._pending.clear()
        self._ready.clear()
        return taken
