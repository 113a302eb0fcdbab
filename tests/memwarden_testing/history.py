"""Recorded working-set history for ``memwarden recommend``: a generator of OpenMetrics
series with known peaks (and a leak), backfilled into a real Prometheus with
``promtool tsdb create-blocks-from openmetrics``. Test infrastructure, not product code.

The series are what cAdvisor and kube-state-metrics would have recorded: working set per
container every ``interval`` seconds, OOM events and restarts as counters, and (per
workload, optionally) ``kube_pod_owner`` and ``kube_pod_labels``. Every value is a pure
function of the workload's spec, so a test can compute what it expects without the
product's code (``samples``).
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from memwarden_testing.prometheus import PrometheusServer

PROMTOOL = Path(os.environ.get("MEMWARDEN_TEST_PROMTOOL", "/usr/bin/promtool"))
MIB = 2**20
HOUR = 3600
DAY = 86400

#: Working set in bytes as a function of (pod index, seconds since the window's start).
PodCurve = Callable[[int, float], float]


def daily_cycle(*, base: float, amplitude: float) -> PodCurve:
    """``base`` ± ``amplitude``, one period a day, whole MiB (no leak, no trend)."""
    return lambda _pod, t: float(
        MIB * round((base + amplitude * math.sin(2 * math.pi * t / DAY)) / MIB)
    )


def with_spike(curve: PodCurve, *, pod: int, at: float, seconds: float, value: float) -> PodCurve:
    """``curve`` with pod ``pod`` at ``value`` for ``seconds`` from ``at``: a known peak."""
    return lambda p, t: value if p == pod and at <= t < at + seconds else curve(p, t)


def growing(*, start: float, per_hour: float) -> PodCurve:
    """A leak: ``start`` plus ``per_hour`` bytes an hour, never freed."""
    return lambda _pod, t: float(math.floor(start + per_hour * t / HOUR))


def constant(value: float) -> PodCurve:
    return lambda _pod, _t: float(value)


Kind = Literal["Deployment", "StatefulSet", "DaemonSet"]


@dataclass(frozen=True)
class Workload:
    """One workload's pods as kube-state-metrics and cAdvisor would show them."""

    kind: Kind
    name: str
    curve: PodCurve
    pods: int = 1
    containers: Sequence[str] = ("app",)
    oom_kills: int = 0
    """OOM kills of pod 0, spread over the window."""
    restarts: int = 0
    owner_metric: bool = True
    """Emit kube_pod_owner (else recommend falls back to the pod name)."""
    labels: dict[str, str] = field(default_factory=dict)
    """Pod labels (kube_pod_labels); default ``app=<name>``."""

    def pod_names(self) -> list[str]:
        if self.kind == "StatefulSet":
            return [f"{self.name}-{i}" for i in range(self.pods)]
        suffixes = [_suffix(self.name, i) for i in range(self.pods)]
        if self.kind == "Deployment":
            return [f"{self.name}-{self.replicaset_hash}-{s}" for s in suffixes]
        return [f"{self.name}-{s}" for s in suffixes]

    @property
    def replicaset_hash(self) -> str:
        return _suffix(self.name, 99, length=10)

    def pod_labels(self) -> dict[str, str]:
        return self.labels or {"app": self.name}


_SAFE = "bcdfghjklmnpqrstvwxz2456789"


def _suffix(seed: str, index: int, *, length: int = 5) -> str:
    """A deterministic Kubernetes-style name suffix."""
    value = int.from_bytes(hashlib.sha256(f"{seed}/{index}".encode()).digest()[:8], "big")
    chars = []
    for _ in range(length):
        value, digit = divmod(value, len(_SAFE))
        chars.append(_SAFE[digit])
    return "".join(chars)


def sample_times(*, start: float, end: float, interval: float) -> Iterator[float]:
    """Scrape times: ``start + interval``, ... up to ``end`` included."""
    count = int((end - start) // interval)
    for i in range(1, count + 1):
        yield start + i * interval


def samples(
    workload: Workload, *, pod: int, start: float, end: float, interval: float
) -> list[float]:
    """The working-set values of one pod (every container has the same), oldest first."""
    return [
        workload.curve(pod, t - start)
        for t in sample_times(start=start, end=end, interval=interval)
    ]


def write_openmetrics(
    path: Path,
    workloads: Sequence[Workload],
    *,
    namespace: str,
    start: float,
    end: float,
    interval: float = 30.0,
) -> int:
    """Write the series as OpenMetrics text (families grouped, times ascending); the
    number of working-set samples written."""
    written = 0
    times = list(sample_times(start=start, end=end, interval=interval))
    hours = list(sample_times(start=start, end=end, interval=HOUR))
    with path.open("w", buffering=1 << 20) as out:
        out.write("# TYPE container_memory_working_set_bytes gauge\n")
        for w in workloads:
            for index, pod in enumerate(w.pod_names()):
                values = [w.curve(index, t - start) for t in times]
                for container in w.containers:
                    labels = f'namespace="{namespace}",pod="{pod}",container="{container}"'
                    prefix = f"container_memory_working_set_bytes{{{labels}}} "
                    out.writelines(
                        f"{prefix}{v:.0f} {t:.0f}\n" for v, t in zip(values, times, strict=True)
                    )
                    written += len(values)
        for family, count_of in (
            ("container_oom_events_total", lambda w, i: w.oom_kills if i == 0 else 0),
            ("kube_pod_container_status_restarts_total", lambda w, i: w.restarts if i == 0 else 0),
        ):
            out.write(f"# TYPE {family} gauge\n")
            for w in workloads:
                for index, pod in enumerate(w.pod_names()):
                    total = count_of(w, index)
                    for container in w.containers:
                        labels = f'namespace="{namespace}",pod="{pod}",container="{container}"'
                        for i, t in enumerate(hours):
                            # Events spread evenly over the window, the first after an hour.
                            value = math.floor(total * i / max(1, len(hours) - 1))
                            out.write(f"{family}{{{labels}}} {value} {t:.0f}\n")
        out.write("# TYPE kube_pod_owner gauge\n")
        for w in workloads:
            if not w.owner_metric:
                continue
            kind, owner = (
                ("ReplicaSet", f"{w.name}-{w.replicaset_hash}")
                if w.kind == "Deployment"
                else (w.kind, w.name)
            )
            for pod in w.pod_names():
                labels = (
                    f'namespace="{namespace}",pod="{pod}",owner_kind="{kind}",'
                    f'owner_name="{owner}",owner_is_controller="true"'
                )
                out.writelines(f"kube_pod_owner{{{labels}}} 1 {t:.0f}\n" for t in hours)
        out.write("# TYPE kube_pod_labels gauge\n")
        for w in workloads:
            for pod in w.pod_names():
                extra = "".join(
                    f',label_{k.replace(".", "_").replace("/", "_").replace("-", "_")}="{v}"'
                    for k, v in sorted(w.pod_labels().items())
                )
                labels = f'namespace="{namespace}",pod="{pod}"{extra}'
                out.writelines(f"kube_pod_labels{{{labels}}} 1 {t:.0f}\n" for t in hours)
        out.write("# EOF\n")
    return written


def backfill(openmetrics: Path, data_dir: Path, *, timeout: float = 1800) -> None:
    """``promtool tsdb create-blocks-from openmetrics`` into a Prometheus data directory
    (blocks of up to a day: fewer blocks for Prometheus to open and compact)."""
    data_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [
            str(PROMTOOL),
            "tsdb",
            "create-blocks-from",
            "openmetrics",
            "--max-block-duration=24h",
            str(openmetrics),
            str(data_dir),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise AssertionError(f"promtool failed ({result.returncode}): {result.stderr[-2000:]}")


def backfilled_prometheus(
    workdir: Path,
    workloads: Sequence[Workload],
    *,
    namespace: str,
    end: float,
    window: float = 7 * DAY,
    interval: float = 30.0,
) -> PrometheusServer:
    """A started Prometheus (no scrape targets) holding the workloads' history, ending at
    ``end``."""
    workdir.mkdir(parents=True, exist_ok=True)
    text = workdir / "history.om.txt"
    write_openmetrics(
        text, workloads, namespace=namespace, start=end - window, end=end, interval=interval
    )
    backfill(text, workdir / "data")
    text.unlink()
    server = PrometheusServer(workdir=workdir, targets=[], retention="400d")
    server.start()
    return server
