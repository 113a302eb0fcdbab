"""Working-set history of one namespace from Prometheus, for ``memwarden recommend``.

An adapter: four queries per namespace, whatever the number of workloads (the PromQL is
built by the pure ``history_queries``), their answers turned into ``ContainerHistory``
and owners / pod labels. The math is in ``recommend.py``.

Queries (``W`` the window, ``E`` the end):
1. ``stats``: per container, the request quantile and the sample count over ``W``, as
   parts of one instant query (``memwarden_part``);
2. ``hourly``: a range query over ``W`` with a step of 1 h of ``max_over_time(...[1h])``:
   the hourly peaks (their highest is the peak) the leak test, the coverage and the VPA
   anchor use;
3. ``events``: OOM kills (cAdvisor ``container_oom_events_total``) and restarts
   (kube-state-metrics ``kube_pod_container_status_restarts_total``) over ``W``;
4. ``meta``: kube-state-metrics' ``kube_pod_owner`` and ``kube_pod_labels`` seen in ``W``.
"""

from __future__ import annotations

import datetime as dt
import math
import re
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass

from memwarden.recommend import REQUEST_QUANTILE, ContainerHistory, Owner, owner_from_metric
from memwarden.risk.adapters.prometheus import PrometheusClient
from memwarden.risk.promql import (
    OOM_EVENTS,
    PART_LABEL,
    WORKING_SET,
    by_container,
    duration,
    recorded_selector,
    selector,
)

HOUR = 3600.0
RESTARTS = "kube_pod_container_status_restarts_total"
POD_OWNER = "kube_pod_owner"
POD_LABELS = "kube_pod_labels"
#: kube-state-metrics writes pod label ``app.kubernetes.io/name`` as
#: ``label_app_kubernetes_io_name``: the original key is lost, so a selector is matched on
#: the sanitised form.
_LABEL_PREFIX = "label_"


def _part(expr: str, part: str) -> str:
    return f'label_replace({expr}, "{PART_LABEL}", "{part}", "", "")'


def history_queries(namespace: str, *, window: float) -> dict[str, str]:
    """The instant queries' PromQL (``stats``, ``events``, ``meta``) and the range
    query's (``hourly``) for one namespace: pure, for tests and the benchmark."""
    w = duration(window)
    ws = selector(WORKING_SET, namespace=namespace)
    quantile = f"{REQUEST_QUANTILE:g}"
    stats = " or ".join(
        (
            _part(by_container(f"quantile_over_time({quantile}, {ws}[{w}])"), "quantile"),
            _part(by_container(f"count_over_time({ws}[{w}])"), "samples"),
        )
    )
    oom = selector(OOM_EVENTS, namespace=namespace)
    restarts = selector(RESTARTS, namespace=namespace)
    events = " or ".join(
        (
            _part(by_container(f"increase({oom}[{w}])"), "oom"),
            _part(by_container(f"increase({restarts}[{w}])"), "restarts"),
        )
    )
    owner = recorded_selector(POD_OWNER, namespace=namespace, containers=None)
    labels = recorded_selector(POD_LABELS, namespace=namespace, containers=None)
    meta = " or ".join(
        (
            _part(f"max by (pod, owner_kind, owner_name) (last_over_time({owner}[{w}]))", "owner"),
            _part(f"last_over_time({labels}[{w}])", "labels"),
        )
    )
    hourly = by_container(f"max_over_time({ws}[1h])")
    return {"stats": stats, "hourly": hourly, "events": events, "meta": meta}


@dataclass(frozen=True)
class NamespaceHistory:
    """What Prometheus knows of one namespace's containers over the window."""

    containers: list[ContainerHistory]
    owners: dict[str, Owner]
    pod_labels: dict[str, dict[str, str]] | None
    """None: no kube_pod_labels (no kube-state-metrics)."""
    restarts_known: bool
    queries: int


def fetch(
    client: PrometheusClient, *, namespace: str, window: float, end: dt.datetime
) -> NamespaceHistory:
    """Run the four queries at ``end`` and assemble the histories."""
    before = client.queries
    queries = history_queries(namespace, window=window)
    stats = client.query(queries["stats"], time=end)
    events = client.query(queries["events"], time=end)
    meta = client.query(queries["meta"], time=end)
    # The first hour ends one step after the window's start: every point covers a full hour
    # of the window.
    hourly = client.query_range(
        queries["hourly"],
        start=end - dt.timedelta(seconds=window - HOUR),
        end=end,
        step=HOUR,
    )

    def key(labels: Mapping[str, str]) -> tuple[str, str]:
        return labels.get("pod", ""), labels.get("container", "")

    parts: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for sample in (*stats, *events):
        parts[key(sample.labels)][sample.labels.get(PART_LABEL, "")] = sample.value
    points = {key(s.labels): s.points for s in hourly}
    for container_key, values in parts.items():
        # The peak is the highest hourly peak: the hours cover the window exactly, and
        # reading every sample once less is a fifth of recommend's time (bench/results).
        if points.get(container_key) and "quantile" in values:
            values["peak"] = max(v for _, v in points[container_key])
    restarts_known = any("restarts" in p for p in parts.values())
    containers = [
        ContainerHistory(
            pod=pod,
            container=container,
            peak=values["peak"],
            quantiles={REQUEST_QUANTILE: values.get("quantile", values["peak"])},
            samples=int(values.get("samples", 0)),
            hourly_peaks=points.get((pod, container), ()),
            oom_kills=round(values.get("oom", 0.0)),
            restarts=round(values["restarts"]) if "restarts" in values else None,
        )
        for (pod, container), values in sorted(parts.items())
        if "peak" in values and pod and container and math.isfinite(values["peak"])
    ]
    owners: dict[str, Owner] = {}
    labels: dict[str, dict[str, str]] = {}
    for sample in meta:
        pod = sample.labels.get("pod", "")
        if sample.labels.get(PART_LABEL) == "owner":
            kind, name = sample.labels.get("owner_kind", ""), sample.labels.get("owner_name", "")
            if kind and kind != "<none>":
                owners[pod] = owner_from_metric(kind=kind, name=name, pod=pod)
        else:
            labels[pod] = pod_labels_from_metric(sample.labels)
    return NamespaceHistory(
        containers=containers,
        owners=owners,
        pod_labels=labels or None,
        restarts_known=restarts_known,
        queries=client.queries - before,
    )


def pod_labels_from_metric(labels: Mapping[str, str]) -> dict[str, str]:
    """``kube_pod_labels``' ``label_app="web"`` -> ``{"app": "web"}``.

    kube-state-metrics replaces every character outside ``[a-zA-Z0-9_]`` of a label key
    with ``_`` (``app.kubernetes.io/name`` -> ``app_kubernetes_io_name``): such keys are
    kept in that form, and a selector on them is compared in that form too.
    """
    return {
        key.removeprefix(_LABEL_PREFIX): value
        for key, value in labels.items()
        if key.startswith(_LABEL_PREFIX)
    }


def sanitised(key: str) -> str:
    """A label key as kube-state-metrics writes it."""
    return re.sub(r"[^a-zA-Z0-9_]", "_", key)


__all__ = ["NamespaceHistory", "fetch", "history_queries", "pod_labels_from_metric", "sanitised"]
