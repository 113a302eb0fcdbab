"""A real Alertmanager (Debian's 0.25) for tests, and builders of its webhook payloads.

:class:`AlertmanagerProcess` runs ``prometheus-alertmanager`` on free loopback ports with
clustering off and one route: every alert goes to the operator's receiver with a bearer
token read from a file, grouped per pod, ``group_wait``/``group_interval`` 1 s so a test
sees a notification within seconds. Readiness is polled on ``/-/ready``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import shutil
import subprocess
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from memwarden_testing.cluster import stop_process_group, wait_for
from memwarden_testing.operator import free_port

ALERTMANAGER = Path(shutil.which("prometheus-alertmanager") or "/usr/bin/prometheus-alertmanager")
RECEIVER = "memwarden"


def make_alert(
    *,
    pod: str | None,
    namespace: str | None = "shop",
    container: str | None = None,
    alertname: str = "MemwardenNearLimit",
    status: str = "firing",
    value: str | None = None,
    fingerprint: str = "",
) -> dict[str, Any]:
    """One alert as Alertmanager's webhook sends it; ``None`` leaves a label out."""
    labels = {"alertname": alertname, "severity": "warning"}
    for key, text in (("namespace", namespace), ("pod", pod), ("container", container)):
        if text is not None:
            labels[key] = text
    starts = "2026-11-25T18:12:00.123456789Z"
    return {
        "status": status,
        "labels": labels,
        "annotations": {"value": value} if value is not None else {},
        "startsAt": starts,
        "endsAt": "0001-01-01T00:00:00Z" if status == "firing" else "2026-11-25T18:20:00Z",
        "generatorURL": "http://prometheus.example/graph?g0.expr=up",
        "fingerprint": fingerprint
        or hashlib.sha256(f"{namespace}/{pod}/{container}/{alertname}".encode()).hexdigest()[:16],
    }


def make_payload(alerts: list[dict[str, Any]], *, receiver: str = RECEIVER) -> dict[str, Any]:
    """A version-4 webhook body holding ``alerts`` as one group."""
    firing = any(a.get("status") == "firing" for a in alerts)
    return {
        "receiver": receiver,
        "status": "firing" if firing else "resolved",
        "alerts": alerts,
        "groupLabels": {},
        "commonLabels": {},
        "commonAnnotations": {},
        "externalURL": "http://alertmanager.example:9093",
        "version": "4",
        "groupKey": '{}:{alertname="MemwardenNearLimit"}',
        "truncatedAlerts": 0,
    }


def alertmanager_config(
    *, receiver_url: str, token_file: Path, ca_file: Path | None = None
) -> dict[str, Any]:
    """The route documented in docs/alerting.md, with test timings; ``ca_file`` is the CA
    Alertmanager trusts for the operator's HTTPS receiver."""
    http_config: dict[str, Any] = {
        "authorization": {"type": "Bearer", "credentials_file": str(token_file)}
    }
    if ca_file is not None:
        http_config["tls_config"] = {"ca_file": str(ca_file)}
    return {
        "route": {
            "receiver": RECEIVER,
            "group_by": ["namespace", "pod"],
            "group_wait": "1s",
            "group_interval": "1s",
            "repeat_interval": "1h",
        },
        "receivers": [
            {
                "name": RECEIVER,
                "webhook_configs": [
                    {
                        "url": receiver_url,
                        "send_resolved": True,
                        "http_config": http_config,
                    }
                ],
            }
        ],
    }


@dataclass
class AlertmanagerProcess:
    """One Alertmanager routing every alert to ``receiver_url``; its log in ``workdir``."""

    workdir: Path
    receiver_url: str
    token_file: Path
    ca_file: Path | None = None
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "alertmanager.log"

    def start(self) -> None:
        config = self.workdir / "alertmanager.yml"
        config.write_text(
            yaml.safe_dump(
                alertmanager_config(
                    receiver_url=self.receiver_url,
                    token_file=self.token_file,
                    ca_file=self.ca_file,
                )
            )
        )
        storage = self.workdir / "data"
        storage.mkdir(exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            [
                str(ALERTMANAGER),
                f"--config.file={config}",
                f"--storage.path={storage}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--cluster.listen-address=",  # no gossip: a single, private instance
                "--log.level=info",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        wait_for(self._ready, timeout=30, what="alertmanager /-/ready")

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"alertmanager exited: {self.log_tail()}")
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def alerts(self) -> list[dict[str, Any]]:
        """The alerts Alertmanager holds (``/api/v2/alerts``)."""
        with urllib.request.urlopen(f"{self.url}/api/v2/alerts", timeout=5) as response:
            result: list[dict[str, Any]] = json.load(response)
        return result

    def post_alerts(self, labels: list[dict[str, str]]) -> None:
        """Push alerts straight to Alertmanager, as Prometheus would."""
        now = dt.datetime.now(dt.UTC)
        body = [
            {
                "labels": entry,
                "startsAt": now.isoformat(),
                "endsAt": (now + dt.timedelta(minutes=5)).isoformat(),
            }
            for entry in labels
        ]
        request = urllib.request.Request(
            f"{self.url}/api/v2/alerts",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(request, timeout=5):
            pass

    def stop(self) -> None:
        stop_process_group(self.process, grace=10)

    def log_tail(self, size: int = 4000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-size:]
        except OSError:
            return ""


def suppressed_counts(metrics_text: str) -> dict[str, float]:
    """``memwarden_suppressed_triggers_total`` by reason, from a /metrics page."""
    counts: dict[str, float] = {}
    for line in metrics_text.splitlines():
        if line.startswith("memwarden_suppressed_triggers_total{"):
            labels, value = line.rsplit(" ", 1)
            counts[labels.split('reason="', 1)[1].split('"', 1)[0]] = float(value)
    return counts
