"""OOM-risk signal math: query results + governed containers -> Findings. Pure.

Prometheus says what each container's working set, fault rate or stall ratio held over
``for``; the pod specs (from the operator's pod index) say which containers a policy
governs and their memory limits. Joining the two on ``(namespace, pod, container)``
happens here, so the queries never name a pod. No clock, no network: ``now`` comes in.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from memwarden.quantity import QuantityError, parse_bytes
from memwarden.risk.findings import Finding
from memwarden.risk.promql import JOIN_LABELS, PART_LABEL, SIGNALS, Query, Sample
from memwarden.selection import (
    Candidate,
    NamespacePolicies,
    select_for_pod,
)
from memwarden.timefmt import parse_time

Key = tuple[str, str, str]


@dataclass(frozen=True)
class Governed:
    """A container a policy governs, with its memory limit (None: no limit, so no ratio)."""

    namespace: str
    pod: str
    container: str
    limit_bytes: int | None

    @property
    def key(self) -> Key:
        return (self.namespace, self.pod, self.container)


def governed_containers(
    policy: Candidate, *, pods: Iterable[Mapping[str, Any]], candidates: Sequence[Candidate]
) -> dict[Key, Governed]:
    """The containers ``policy`` governs among ``pods`` (of its namespace), with limits.

    A pod selected by several policies belongs to the winner only, as at admission.
    """
    found: dict[Key, Governed] = {}
    for pod in pods:
        metadata = pod.get("metadata") or {}
        selection = select_for_pod(pod, candidates)
        if selection.winner is None or selection.winner.name != policy.name:
            continue
        limits = _limits(pod)
        for name in selection.governed:
            item = Governed(
                namespace=policy.namespace,
                pod=str(metadata.get("name")),
                container=name,
                limit_bytes=limits.get(name),
            )
            found[item.key] = item
    return found


def governed_by_policy(
    policies: Sequence[Candidate], *, pods: Iterable[Mapping[str, Any]]
) -> dict[str, dict[Key, Governed]]:
    """``governed_containers`` for every policy of a namespace in one pass over its pods:
    each pod is selected once, whatever the number of policies."""
    table = NamespacePolicies.build(policies)
    found: dict[str, dict[Key, Governed]] = {name: {} for name in table.by_name}
    for pod in pods:
        metadata = pod.get("metadata") or {}
        selection = table.select_pod(pod)
        if selection.winner is None:
            continue
        limits = _limits(pod)
        for name in selection.governed:
            item = Governed(
                namespace=selection.winner.namespace,
                pod=str(metadata.get("name")),
                container=name,
                limit_bytes=limits.get(name),
            )
            found[selection.winner.name][item.key] = item
    return found


def _limits(pod: Mapping[str, Any]) -> dict[str, int | None]:
    spec = pod.get("spec") or {}
    limits: dict[str, int | None] = {}
    for container in [*(spec.get("containers") or []), *(spec.get("initContainers") or [])]:
        text = ((container.get("resources") or {}).get("limits") or {}).get("memory")
        try:
            limits[str(container.get("name"))] = parse_bytes(text) if text else None
        except QuantityError:
            limits[str(container.get("name"))] = None
    return limits


def _key(labels: Mapping[str, str]) -> Key | None:
    values = tuple(labels.get(name, "") for name in JOIN_LABELS)
    return (values[0], values[1], values[2]) if all(values) else None


def usage_ratio(working_set: float, limit: int) -> float:
    """Working set / limit."""
    return working_set / limit


def seconds_to_limit(*, fitted_now: float, slope: float, limit: int) -> float:
    """When the linear fit reaches ``limit``, in seconds from now (0 if already there,
    infinity if it is not rising)."""
    if fitted_now >= limit:
        return 0.0
    if slope <= 0:
        return math.inf
    return (limit - fitted_now) / slope


def smallest_limit(governed: Mapping[Key, Governed]) -> int | None:
    """The smallest memory limit among ``governed`` (None: none has a limit)."""
    limits = [g.limit_bytes for g in governed.values() if g.limit_bytes]
    return min(limits) if limits else None


def evaluate(
    results: Iterable[tuple[Query, Sequence[Sample]]],
    *,
    governed: Mapping[Key, Governed],
    policy: str,
) -> list[Finding]:
    """The findings of one policy's cycle: every signal holding on a governed container.

    Series of containers the policy does not govern (another policy's pod, a pod that
    is gone) are ignored. Findings come sorted by pod, then by ``SIGNALS`` order.
    """
    findings: list[Finding] = []
    for query, samples in results:
        if query.signal == "timeToLimit":
            findings += _time_to_limit(query, samples, governed=governed, policy=policy)
        else:
            findings += _thresholded(query, samples, governed=governed, policy=policy)
    return sort_findings(findings)


def sort_findings(findings: Iterable[Finding]) -> list[Finding]:
    """By pod and container, the most certain signal first (opening keeps the first)."""
    order: dict[str, int] = {name: i for i, name in enumerate(SIGNALS)}
    return sorted(
        findings,
        key=lambda f: (f.namespace, f.pod, order.get(f.signal, len(order)), f.container),
    )


def _finite(samples: Sequence[Sample]) -> Iterable[tuple[Key, Sample]]:
    for sample in samples:
        key = _key(sample.labels)
        if key is not None and math.isfinite(sample.value):
            yield key, sample


def _finding(
    target: Governed, *, query: Query, value: float, threshold: float | None, policy: str
) -> Finding:
    return Finding(
        namespace=target.namespace,
        pod=target.pod,
        container=target.container,
        source="prometheus",
        signal=query.signal,
        value=round(value, 4),
        threshold=threshold,
        policy=policy,
    )


def _thresholded(
    query: Query, samples: Sequence[Sample], *, governed: Mapping[Key, Governed], policy: str
) -> list[Finding]:
    found: list[Finding] = []
    for key, sample in _finite(samples):
        target = governed.get(key)
        if target is None:
            continue
        value = sample.value
        if query.signal == "usageRatio":
            if target.limit_bytes is None or target.limit_bytes <= 0:
                continue  # no limit, no ratio: timeToLimit and the OOM signals still speak
            value = usage_ratio(sample.value, target.limit_bytes)
        if query.signal == "oomKilled":
            if value <= 0:
                continue
            value = float(math.ceil(value - 1e-9))  # increase() extrapolates: 0.98 kills is 1
        elif query.threshold is None or value < query.threshold:
            continue
        found.append(
            _finding(target, query=query, value=value, threshold=query.threshold, policy=policy)
        )
    return found


def _time_to_limit(
    query: Query, samples: Sequence[Sample], *, governed: Mapping[Key, Governed], policy: str
) -> list[Finding]:
    """Holds when the lowest prediction over ``for`` reached the limit; the value is the
    seconds left according to the fit at evaluation time (``predicted - slope × horizon``,
    the line ``predict_linear`` extrapolated from)."""
    parts: dict[Key, dict[str, float]] = {}
    for key, sample in _finite(samples):
        parts.setdefault(key, {})[sample.labels.get(PART_LABEL, "")] = sample.value
    found: list[Finding] = []
    for key, values in parts.items():
        target = governed.get(key)
        if target is None or target.limit_bytes is None or "held" not in values:
            continue
        if values["held"] < target.limit_bytes:
            continue
        horizon = query.threshold if query.threshold is not None else math.inf
        if "predicted" in values and "slope" in values and math.isfinite(horizon):
            seconds = seconds_to_limit(
                fitted_now=values["predicted"] - values["slope"] * horizon,
                slope=values["slope"],
                limit=target.limit_bytes,
            )
        else:  # the prediction dipped since ``held``'s last point: all we know is "within"
            seconds = horizon
        # The fit moved between held's last point and now: never report more
        # than the horizon for a signal that held.
        found.append(
            _finding(
                target,
                query=query,
                value=min(seconds, horizon),
                threshold=query.threshold,
                policy=policy,
            )
        )
    return found


def oom_killed(
    pods: Iterable[Mapping[str, Any]],
    *,
    governed: Mapping[Key, Governed],
    policy: str,
    now: dt.datetime,
    within: dt.timedelta,
) -> list[Finding]:
    """Governed containers whose last termination was the OOM killer, within ``within``.

    Reads ``status.containerStatuses[].lastState.terminated`` (and ``state.terminated``)
    of pod dicts or pod views. Older kills are ignored, or the same kill would open a
    new incident every time the cooldown expired.
    """
    found: list[Finding] = []
    for pod in pods:
        metadata = pod.get("metadata") or {}
        status = pod.get("status") or {}
        statuses = [
            *(status.get("containerStatuses") or []),
            *(status.get("initContainerStatuses") or []),
        ]
        for container in statuses:
            key = (str(metadata.get("namespace")), str(metadata.get("name")), container.get("name"))
            target = governed.get(key)
            if target is None:
                continue
            for state in (container.get("state") or {}, container.get("lastState") or {}):
                terminated = state.get("terminated") or {}
                if terminated.get("reason") != "OOMKilled":
                    continue
                finished = parse_time(terminated.get("finishedAt"))
                if finished is None or not (now - within <= finished <= now + within):
                    continue
                found.append(
                    Finding(
                        namespace=target.namespace,
                        pod=target.pod,
                        container=target.container,
                        source="oomkilled",
                        signal="oomKilled",
                        policy=policy,
                        labels={"finishedAt": str(terminated.get("finishedAt"))},
                    )
                )
                break
    return sort_findings(found)


__all__ = [
    "Governed",
    "Key",
    "evaluate",
    "governed_containers",
    "oom_killed",
    "seconds_to_limit",
    "smallest_limit",
    "sort_findings",
    "usage_ratio",
]
