"""A flood of evidence reads with junk bearer tokens, from a loopback address of its own.

Every 127/8 address is this host's, so the flood leaves from ``source`` (the evidence API
rate-limits per client address) while the test's own requests leave from 127.0.0.1.
Each sender keeps its connection alive and sends as fast as it is answered, as a
determined client would. HTTPS when the URL says so, trusting ``ca_file``.
"""

from __future__ import annotations

import http.client
import secrets
import ssl
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit


def junk_token(_: int) -> str:
    """A token no API server ever issued, different every time (no cache can help)."""
    return "junk-" + secrets.token_urlsafe(24)


@dataclass
class Flood:
    """GETs of ``url`` with ``token(n)`` until stopped, or ``limit`` requests were sent."""

    url: str
    source: str
    senders: int = 16
    token: Callable[[int], str] = junk_token
    limit: int | None = None
    ca_file: Path | None = None
    statuses: Counter[int] = field(default_factory=Counter)
    """HTTP statuses answered; 0 for a request that got no answer."""
    started: float = 0.0
    ended: float = 0.0
    _claimed: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _threads: list[threading.Thread] = field(default_factory=list)

    @property
    def sent(self) -> int:
        with self._lock:
            return sum(self.statuses.values())

    @property
    def seconds(self) -> float:
        return (self.ended or time.monotonic()) - self.started

    def start(self) -> Flood:
        self.started = time.monotonic()
        self._threads = [
            threading.Thread(target=self._send, daemon=True) for _ in range(self.senders)
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self) -> Flood:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=30)
        self.ended = time.monotonic()
        return self

    def run(self) -> Flood:
        """Send ``limit`` requests and return once all are answered."""
        assert self.limit is not None, "run() needs a limit"
        self.start()
        for thread in self._threads:
            thread.join(timeout=120)
        self.ended = time.monotonic()
        return self

    def _claim(self) -> int | None:
        """The number of the next request to send, None once done."""
        with self._lock:
            n = self._claimed
            if self._stop.is_set() or (self.limit is not None and n >= self.limit):
                return None
            self._claimed += 1
            return n

    def _send(self) -> None:
        parts = urlsplit(self.url)
        assert parts.hostname is not None
        connection: http.client.HTTPConnection | None = None
        while (n := self._claim()) is not None:
            if connection is None:
                connection = connect(self.url, source=self.source, ca_file=self.ca_file)
            try:
                connection.request(
                    "GET", parts.path, headers={"Authorization": f"Bearer {self.token(n)}"}
                )
                response = connection.getresponse()
                response.read()
                status = response.status
            except (OSError, http.client.HTTPException):
                connection.close()
                connection, status = None, 0
            with self._lock:
                self.statuses[status] += 1
        if connection is not None:
            connection.close()


def connect(
    url: str, *, source: str, ca_file: Path | None, timeout: float = 30
) -> http.client.HTTPConnection:
    """A connection to ``url``'s host leaving from ``source``; HTTPS for an https URL,
    verified against ``ca_file``."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    if parts.scheme == "https":
        context = ssl.create_default_context(cafile=str(ca_file) if ca_file else None)
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, source_address=(source, 0), context=context
        )
    return http.client.HTTPConnection(
        parts.hostname, parts.port, timeout=timeout, source_address=(source, 0)
    )
