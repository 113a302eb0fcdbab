"""nodesim.metrics: cAdvisor-style exposition of the simulated containers (pure part).

The node simulator is test infrastructure (hack/nodesim); memwarden's PromQL reads these
names and labels exactly as it would read a kubelet's ``/metrics/cadvisor``.
"""

from __future__ import annotations

import re

import pytest
from nodesim.metrics import ContainerSample, render_cadvisor

pytestmark = pytest.mark.unit

LABELS = {
    "container": "app",
    "image": "memwarden/leaky:dev",
    "name": "nodesim-0b7e4c3a-app",
    "namespace": "shop",
    "pod": "checkout-1",
}
Series = tuple[str, frozenset[tuple[str, str]], str]


def sample(**fields: object) -> ContainerSample:
    base: dict[str, object] = {
        "namespace": "shop",
        "pod": "checkout-1",
        "container": "app",
        "image": "memwarden/leaky:dev",
        "name": "nodesim-0b7e4c3a-app",
        "running": True,
        "working_set_bytes": 50_331_648,
        "rss_bytes": 50_331_648,
        "limit_bytes": 67_108_864,
        "pgfault": 1234,
        "pgmajfault": 5,
        "oom_events": 2,
        "start_time_seconds": 1795633559.0,
    }
    base.update(fields)
    return ContainerSample(**base)  # type: ignore[arg-type]


def series(text: str) -> set[Series]:
    """(name, labels, value) of every sample line."""
    out = set()
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = re.fullmatch(r"(\w+)(?:\{(.*)\})? (\S+)", line)
        assert match, line
        labels = re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', match.group(2) or "")
        out.add((match.group(1), frozenset(labels), match.group(3)))
    return out


def one(name: str, value: str, **extra: str) -> Series:
    return (name, frozenset({**LABELS, **extra}.items()), value)


def test_running_container() -> None:
    text = render_cadvisor([sample()], machine_memory_bytes=8 << 30)
    assert series(text) == {
        one("container_memory_working_set_bytes", "50331648"),
        one("container_memory_rss", "50331648"),
        one("container_memory_usage_bytes", "50331648"),
        one("container_spec_memory_limit_bytes", "67108864"),
        one("container_start_time_seconds", "1795633559.0"),
        one("container_memory_failures_total", "1234", failure_type="pgfault", scope="container"),
        one("container_memory_failures_total", "5", failure_type="pgmajfault", scope="container"),
        one("container_oom_events_total", "2"),
        ("machine_memory_bytes", frozenset(), "8589934592"),
    }
    assert "# TYPE container_oom_events_total counter" in text
    assert "# TYPE container_memory_working_set_bytes gauge" in text


def test_stopped_container_keeps_only_its_oom_counter() -> None:
    text = render_cadvisor([sample(running=False)], machine_memory_bytes=1)
    assert series(text) == {
        one("container_oom_events_total", "2"),
        ("machine_memory_bytes", frozenset(), "1"),
    }


def test_no_limit_reads_zero_and_labels_are_escaped() -> None:
    text = render_cadvisor([sample(limit_bytes=0, pod='we"ird\\pod')], machine_memory_bytes=1)
    assert 'pod="we\\"ird\\\\pod"} 0' in text
