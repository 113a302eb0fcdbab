"""An alert storm: webhook notifications POSTed to the receiver from a child process.

The child imports nothing but the standard library (it starts in a few tens of ms) and
does not share a GIL with the test, which measures admission latency meanwhile, as
Alertmanager would be a process of its own. It prints ``started`` once it begins
sending, then one JSON line: the HTTP statuses and how long the storm lasted.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any


def _post(url: str, body: bytes, *, token: str) -> int:
    request = urllib.request.Request(
        url,
        data=body,
        headers={"Content-Type": "application/json", "Authorization": f"Bearer {token}"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)


def send_storm(
    *, url: str, token: str, bodies: list[bytes], senders: int, pace: float
) -> list[int]:
    """POST ``bodies`` from ``senders`` threads, each sending one every ``pace`` seconds
    (staggered); the statuses, in completion order."""
    statuses: list[int] = []

    def sender(share: list[bytes], offset: float) -> None:
        start = time.monotonic()
        for k, body in enumerate(share):
            # Pacing of a load generator (a schedule), not a wait for a condition.
            time.sleep(max(0.0, start + offset + k * pace - time.monotonic()))
            statuses.append(_post(url, body, token=token))

    threads = [
        threading.Thread(target=sender, args=(bodies[i::senders], i * pace / senders))
        for i in range(senders)
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return statuses


class StormProcess:
    """:func:`send_storm` in a child process."""

    def __init__(
        self,
        *,
        url: str,
        token: str,
        bodies: list[bytes],
        senders: int,
        pace: float,
        workdir: Path,
        ca_file: Path | None = None,
    ) -> None:
        """``ca_file``: the CA the child trusts for an https ``url`` (its default context
        reads ``SSL_CERT_FILE``)."""
        spec = workdir / "storm.json"
        spec.write_text(
            json.dumps(
                {
                    "url": url,
                    "token": token,
                    "bodies": [b.decode() for b in bodies],
                    "senders": senders,
                    "pace": pace,
                }
            )
        )
        self.process = subprocess.Popen(
            # -P: not the script's folder first on sys.path (it holds an operator.py).
            [sys.executable, "-P", __file__, str(spec)],
            env={**os.environ, **({"SSL_CERT_FILE": str(ca_file)} if ca_file else {})},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        started = self.process.stdout.readline().strip()
        if started != "started":
            self.process.kill()
            _, err = self.process.communicate(timeout=10)
            raise AssertionError(f"storm sender did not start: {err[-2000:]}")

    def running(self) -> bool:
        return self.process.poll() is None

    def result(self, *, timeout: float = 60) -> dict[str, Any]:
        """``{"statuses": [...], "seconds": ...}`` once the child is done."""
        try:
            out, err = self.process.communicate(timeout=timeout)
        finally:
            if self.process.poll() is None:
                self.process.kill()
        if self.process.returncode != 0:
            raise AssertionError(f"storm sender failed: {err}")
        result: dict[str, Any] = json.loads(out)
        return result


def _main(spec_path: str) -> None:
    spec = json.loads(Path(spec_path).read_text())
    bodies = [b.encode() for b in spec.pop("bodies")]
    print("started", flush=True)
    began = time.monotonic()
    statuses = send_storm(bodies=bodies, **spec)
    print(json.dumps({"statuses": statuses, "seconds": time.monotonic() - began}))


if __name__ == "__main__":
    _main(sys.argv[1])
