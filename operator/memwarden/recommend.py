"""Capacity planning from history: working-set history in, a proposed MemoryPolicy out. Pure.

``memwarden recommend`` (``commands/recommend.py``) fetches the history per namespace and
hands it here; this module groups pods into workloads, finds leaks, computes memwarden's
recommendation with the sizing engine (intent form when the kubelet writes memory.high,
GOMEMLIMIT by the same rule as admission), and the two anchors on the same data: KRR's
simple strategy and VPA's recommender target. No I/O, no clock: ``end`` is passed in.

The decisions (percentiles, headroom, leak test, confidence) are in docs/recommend.md.
"""

from __future__ import annotations

import itertools
import math
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal

from memwarden.quantity import approximate_bytes, format_bytes
from memwarden.sizing import (
    HEADROOM_MIN,
    ContainerResources,
    GoRuntimeRule,
    KubeletProfile,
    MemoryRule,
    PodShape,
    PodSizing,
    size_pod,
)

MIB: Final = 2**20
HOUR: Final = 3600.0
DAY: Final = 86400.0

#: The request covers this percentile of the working set (each replica's, the highest
#: replica wins): the scheduler reserves what the container uses nearly all the time.
REQUEST_QUANTILE: Final = 0.95
#: The ceiling (the limit, or memory.high when the kubelet throttles) is the peak plus 20 %:
#: with GOMEMLIMIT at 90 % of the ceiling, the Go heap limit still sits 8 % above the peak,
#: so the GC does not run hard at the highest load seen.
CEILING_HEADROOM: Final = 0.20
#: ... and at least this much above the peak (small containers: 20 % is a few MiB).
CEILING_HEADROOM_MIN: Final = 32 * MIB
#: A workload OOM-killed in the window: its peak is cut off at the old limit, so the
#: peak is bumped first, as VPA does after an OOM kill (model/aggregations_config.go:
#: ``DefaultOOMBumpUpRatio`` 1.2, ``DefaultOOMMinBumpUp`` 100 MB).
OOM_BUMP_RATIO: Final = 1.2
OOM_BUMP_MIN: Final = 100 * 1024 * 1024
#: GOMEMLIMIT of a proposed policy: the percentage form, so it follows the resources when
#: they change.
GOMEMLIMIT_PERCENT: Final = 90

#: Leak test on hourly peaks since the last restart (a drop below 70 % of the hour before):
#: at least 12 hours, a least-squares line explaining 80 % of the variance, and growth of
#: 10 % or more of the first value over the segment. A daily cycle fails the fit; a GC
#: sawtooth disappears in hourly peaks.
LEAK_MIN_POINTS: Final = 12
LEAK_MIN_R2: Final = 0.8
LEAK_MIN_GROWTH: Final = 0.10
RESTART_DROP: Final = 0.70

#: KRR's simple strategy: memory request = limit = the highest peak of any pod x 1.15
#: (robusta-dev/krr robusta_krr/strategies/simple.py, ``memory_buffer_percentage``).
KRR_BUFFER: Final = 0.15

#: VPA recommender v1.8.1 (k8s.io/autoscaler/vertical-pod-autoscaler, pkg/recommender):
#: config/config.go: ``TargetMemoryPercentile`` 0.9, ``SafetyMarginFraction`` 0.15,
#: ``PodMinMemoryMb`` 250 (split evenly among the pod's containers, logic/recommender.go);
#: model/aggregations_config.go: one peak per container per 24 h interval, weights halving
#: every 24 h, an exponential histogram with a first bucket of 1e7 bytes, 5 % growth;
#: util/histogram.go ``Percentile`` returns the end of the bucket that reaches it.
VPA_PERCENTILE: Final = 0.9
VPA_MARGIN: Final = 0.15
VPA_POD_MIN_BYTES: Final = 250 * 1024 * 1024
VPA_INTERVAL: Final = DAY
VPA_HALF_LIFE: Final = DAY
VPA_FIRST_BUCKET: Final = 1e7
VPA_BUCKET_RATIO: Final = 1.05
VPA_MAX_VALUE: Final = 1e12

OwnerKind = Literal["Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job", "Pod"]
Confidence = Literal["high", "medium", "low"]
OwnerSource = Literal["kube_pod_owner", "pod name"]

#: The characters Kubernetes uses for generated name suffixes (apimachinery rand.String
#: and the pod-template-hash): no vowels, no 0/1/3.
_SAFE = "[bcdfghjklmnpqrstvwxz2456789]"
_DEPLOYMENT_POD = re.compile(rf"^(?P<name>.+)-{_SAFE}{{6,10}}-{_SAFE}{{5}}$")
_STATEFULSET_POD = re.compile(r"^(?P<name>.+)-(?:0|[1-9][0-9]*)$")
_GENERATED_POD = re.compile(rf"^(?P<name>.+)-{_SAFE}{{5}}$")
_REPLICASET = re.compile(rf"^(?P<name>.+)-{_SAFE}{{6,10}}$")

# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True)
class Owner:
    """The workload a pod belongs to, and how that was decided."""

    kind: OwnerKind
    name: str
    source: OwnerSource


def owner_from_pod_name(pod: str) -> Owner:
    """Guess the owner from the pod's generated name (no kube-state-metrics).

    ``web-7d9f8b6c5d-x2x4z`` -> Deployment web; ``db-0`` -> StatefulSet db;
    ``agent-x2x4z`` -> DaemonSet agent (a bare ReplicaSet or a Job look the same); else the pod.
    """
    for pattern, kind in (
        (_DEPLOYMENT_POD, "Deployment"),
        (_STATEFULSET_POD, "StatefulSet"),
        (_GENERATED_POD, "DaemonSet"),
    ):
        match = pattern.match(pod)
        if match:
            return Owner(kind=kind, name=match["name"], source="pod name")  # type: ignore[arg-type]
    return Owner(kind="Pod", name=pod, source="pod name")


def owner_from_metric(*, kind: str, name: str, pod: str) -> Owner:
    """The owner from kube-state-metrics' ``kube_pod_owner``: a ReplicaSet whose name is a
    Deployment's plus a pod-template hash is that Deployment."""
    if kind == "ReplicaSet":
        match = _REPLICASET.match(name)
        if match:
            return Owner(kind="Deployment", name=match["name"], source="kube_pod_owner")
        return Owner(kind="ReplicaSet", name=name, source="kube_pod_owner")
    if kind in ("StatefulSet", "DaemonSet", "Job"):
        return Owner(kind=kind, name=name, source="kube_pod_owner")  # type: ignore[arg-type]
    return Owner(kind="Pod", name=pod, source="kube_pod_owner")


@dataclass(frozen=True)
class ContainerHistory:
    """One container of one pod over the window, as the adapter read it (bytes, seconds)."""

    pod: str
    container: str
    peak: float
    quantiles: Mapping[float, float]
    """Working-set quantiles over the raw samples (``quantile_over_time``)."""
    samples: int
    hourly_peaks: Sequence[tuple[float, float]] = ()
    """(end of the hour, highest working set in it), oldest first."""
    oom_kills: int = 0
    restarts: int | None = None
    """None: unknown (no kube-state-metrics)."""


@dataclass(frozen=True)
class Selector:
    """Equality-based label selector (``app=web,tier!=cache,canary,!legacy``)."""

    equals: Mapping[str, str] = field(default_factory=dict)
    differs: Mapping[str, str] = field(default_factory=dict)
    exists: frozenset[str] = frozenset()
    absent: frozenset[str] = frozenset()

    @classmethod
    def parse(cls, text: str) -> Selector:
        """Raise ValueError naming ``--selector`` for what is not equality-based."""
        equals: dict[str, str] = {}
        differs: dict[str, str] = {}
        exists: set[str] = set()
        absent: set[str] = set()
        key_re = r"[A-Za-z0-9]([-A-Za-z0-9_./]*[A-Za-z0-9])?"
        for raw in text.split(","):
            term = raw.strip()
            if not term:
                continue
            if m := re.fullmatch(rf"({key_re})\s*!=\s*(\S*)", term):
                differs[m[1]] = m[3]
            elif m := re.fullmatch(rf"({key_re})\s*==?\s*(\S*)", term):
                equals[m[1]] = m[3]
            elif m := re.fullmatch(rf"!\s*({key_re})", term):
                absent.add(m[1])
            elif re.fullmatch(key_re, term):
                exists.add(term)
            else:
                raise ValueError(
                    f"--selector: {term!r} is not key=value, key!=value, key or !key"
                    " (set-based terms are not supported)"
                )
        return cls(
            equals=equals, differs=differs, exists=frozenset(exists), absent=frozenset(absent)
        )

    def matches(self, labels: Mapping[str, str]) -> bool:
        return (
            all(labels.get(k) == v for k, v in self.equals.items())
            and all(labels.get(k) != v for k, v in self.differs.items())
            and all(k in labels for k in self.exists)
            and not any(k in labels for k in self.absent)
        )

    @property
    def empty(self) -> bool:
        return not (self.equals or self.differs or self.exists or self.absent)


@dataclass(frozen=True)
class Incident:
    """The last MemoryIncident of a pod, for the note on a leaking workload."""

    name: str
    pod: str
    created: str
    summary: str | None = None


@dataclass(frozen=True)
class Options:
    """What the user chose (flags) and the cluster's kubelet profile."""

    namespace: str
    window: float
    """Seconds of history asked for."""
    scrape_interval: float = 30.0
    profile: KubeletProfile = field(default_factory=KubeletProfile)
    go: bool = True
    """Propose GOMEMLIMIT (``runtime.go.memoryLimit: 90%``)."""


# --------------------------------------------------------------------------- the math


def ceil_mib(value: float) -> int:
    """Round up to a whole MiB: quantities people read, never below the value."""
    return max(1, math.ceil(value / MIB)) * MIB


def krr_simple(peaks: Iterable[float]) -> int:
    """KRR simple strategy: the highest peak of any pod x (1 + 15 %), in bytes (rounded up)."""
    return math.ceil(max(peaks) * (1 + KRR_BUFFER))


def _vpa_bucket(value: float) -> int:
    count = (
        math.ceil(
            math.log(VPA_MAX_VALUE * (VPA_BUCKET_RATIO - 1) / VPA_FIRST_BUCKET + 1)
            / math.log(VPA_BUCKET_RATIO)
        )
        + 1
    )
    if value < VPA_FIRST_BUCKET:
        return 0
    bucket = int(
        math.log(value * (VPA_BUCKET_RATIO - 1) / VPA_FIRST_BUCKET + 1) / math.log(VPA_BUCKET_RATIO)
    )
    return min(bucket, count - 1)


def vpa_bucket_end(value: float) -> float:
    """The end of the VPA memory-histogram bucket holding ``value`` (what Percentile returns)."""
    bucket = _vpa_bucket(value) + 1
    return VPA_FIRST_BUCKET * (VPA_BUCKET_RATIO**bucket - 1) / (VPA_BUCKET_RATIO - 1)


def daily_peaks(hourly: Sequence[tuple[float, float]], *, end: float) -> list[tuple[float, float]]:
    """(interval end, peak) per 24 h interval counted back from ``end``, oldest first.

    VPA starts a container's intervals at its first sample; aligning them on ``end``
    instead is the one approximation of this anchor (docs/recommend.md).
    """
    peaks: dict[int, float] = {}
    for t, value in hourly:
        index = math.floor((end - t) / VPA_INTERVAL) if t < end else 0
        peaks[index] = max(peaks.get(index, 0.0), value)
    return [(end - i * VPA_INTERVAL, peaks[i]) for i in sorted(peaks, reverse=True)]


def vpa_target(
    daily: Iterable[Sequence[tuple[float, float]]], *, containers_in_pod: int = 1
) -> int:
    """VPA's memory target for one container name of a workload, in bytes.

    ``daily``: each pod's (interval end, peak) list for that container; every peak is one
    histogram sample weighted 2^((interval end - newest end) / 24 h). The weighted 90th
    percentile (the end of its bucket), plus 15 %, at least 250 MiB / containers.
    """
    samples = [(t, v) for pod in daily for t, v in pod if v > 0]
    floor = VPA_POD_MIN_BYTES / max(1, containers_in_pod)
    if not samples:
        return math.ceil(floor)
    newest = max(t for t, _ in samples)
    weights: dict[int, float] = defaultdict(float)
    for t, value in samples:
        weights[_vpa_bucket(value)] += 2.0 ** ((t - newest) / VPA_HALF_LIFE)
    total = sum(weights.values())
    threshold, partial = VPA_PERCENTILE * total, 0.0
    chosen = max(weights)
    for bucket in sorted(weights):
        partial += weights[bucket]
        if partial >= threshold:
            chosen = bucket
            break
    end = VPA_FIRST_BUCKET * (VPA_BUCKET_RATIO ** (chosen + 1) - 1) / (VPA_BUCKET_RATIO - 1)
    return math.ceil(max(end * (1 + VPA_MARGIN), floor))


@dataclass(frozen=True)
class Leak:
    """Steady growth found in a container's hourly peaks."""

    pod: str
    container: str
    bytes_per_hour: float
    r2: float
    hours: int


def _fit(points: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares slope (per second) and R² of the points."""
    n = len(points)
    mean_t = sum(t for t, _ in points) / n
    mean_v = sum(v for _, v in points) / n
    stt = sum((t - mean_t) ** 2 for t, _ in points)
    svv = sum((v - mean_v) ** 2 for _, v in points)
    stv = sum((t - mean_t) * (v - mean_v) for t, v in points)
    if stt == 0 or svv == 0:
        return 0.0, 0.0
    return stv / stt, (stv * stv) / (stt * svv)


def find_leak(history: ContainerHistory) -> Leak | None:
    """Steady growth (see the LEAK_* constants) in the newest stretch between restarts
    that is long enough to judge, or None. A leak OOM-killed every day or two is a
    sawtooth: its last stretch may be short, the one before it is judged."""
    points = list(history.hourly_peaks)
    cuts = [0]
    cuts += [i for i in range(1, len(points)) if points[i][1] < RESTART_DROP * points[i - 1][1]]
    cuts.append(len(points))
    segments = [points[a:b] for a, b in itertools.pairwise(cuts)]
    segment = next((s for s in reversed(segments) if len(s) >= LEAK_MIN_POINTS), None)
    if segment is None:
        return None
    slope, r2 = _fit(segment)
    first = segment[0][1]
    grown = slope * (segment[-1][0] - segment[0][0])
    if slope <= 0 or r2 < LEAK_MIN_R2 or first <= 0 or grown < LEAK_MIN_GROWTH * first:
        return None
    return Leak(
        pod=history.pod,
        container=history.container,
        bytes_per_hour=slope * HOUR,
        r2=r2,
        hours=len(segment),
    )


@dataclass(frozen=True)
class Basis:
    """What a container's numbers are based on, and how far to trust them."""

    pods: int
    samples: int
    expected_samples: int
    coverage: float
    """Share of the window's hours with data (the best-covered pod)."""
    confidence: Confidence
    peak: int
    request_quantile: int
    oom_kills: int
    restarts: int | None


def confidence(*, coverage: float, sample_ratio: float, window: float) -> Confidence:
    """high: 90 % of a 7-day window covered, samples at the expected rate; medium: half
    of the window and a day at least; else low."""
    if coverage >= 0.9 and sample_ratio >= 0.9 and window >= 7 * DAY:
        return "high"
    if coverage >= 0.5 and coverage * window >= DAY:
        return "medium"
    return "low"


@dataclass(frozen=True)
class ContainerRecommendation:
    container: str
    basis: Basis
    request: int | None
    limit: int | None
    memory: Mapping[str, str]
    """The policy's ``spec.memory``: request/limit, or intent (protect/high, high/max)."""
    memory_high: int | None
    gomemlimit: str | None
    gomemlimit_percent: int | None
    """``runtime.go.memoryLimit`` of the policy (percent of memory.high, else the limit)."""
    krr: int
    vpa: int
    leak: Leak | None
    notes: tuple[str, ...]


@dataclass(frozen=True)
class WorkloadRecommendation:
    owner: Owner
    pods: tuple[str, ...]
    containers: tuple[ContainerRecommendation, ...]
    governed: str
    """The container the proposed policy governs (the largest peak)."""
    selector: Mapping[str, str]
    selector_guessed: bool
    notes: tuple[str, ...]

    @property
    def leaking(self) -> bool:
        return any(c.leak is not None for c in self.containers)


def group_workloads(
    histories: Iterable[ContainerHistory], *, owners: Mapping[str, Owner]
) -> dict[Owner, list[ContainerHistory]]:
    """Histories by workload; a pod without a ``kube_pod_owner`` series goes by its name."""
    grouped: dict[Owner, list[ContainerHistory]] = defaultdict(list)
    for history in histories:
        owner = owners.get(history.pod) or owner_from_pod_name(history.pod)
        grouped[_key(owner)].append(history)
    return dict(grouped)


def _key(owner: Owner) -> Owner:
    """One workload whichever way its pods' owners were found."""
    return Owner(kind=owner.kind, name=owner.name, source="pod name")


def common_labels(pod_labels: Iterable[Mapping[str, str]]) -> dict[str, str]:
    """Labels every pod carries with the same value: a selector for the workload's pods.

    Keys with ``_`` are left out: kube-state-metrics writes ``.``, ``/`` and ``-`` of a
    key as ``_``, so such a key may not be the pod's (``app_kubernetes_io_name``); that
    also drops the per-pod controller labels (``pod_template_hash``).
    """
    items: set[tuple[str, str]] | None = None
    for labels in pod_labels:
        these = {(k, v) for k, v in labels.items() if "_" not in k}
        items = these if items is None else items & these
    return dict(sorted(items or ()))


def _recommend_container(
    histories: Sequence[ContainerHistory],
    *,
    options: Options,
    end: float,
    containers_in_pod: int,
    incidents: Mapping[str, Incident] | None,
) -> ContainerRecommendation:
    name = histories[0].container
    peak = max(h.peak for h in histories)
    quantile = max(h.quantiles.get(REQUEST_QUANTILE, h.peak) for h in histories)
    oom = sum(h.oom_kills for h in histories)
    known = [h.restarts for h in histories if h.restarts is not None]
    restarts = sum(known) if known else None
    hours = max(1, round(options.window / HOUR))
    coverage = min(1.0, max(len(h.hourly_peaks) for h in histories) / hours)
    expected = max(1, round(options.window / options.scrape_interval))
    best_samples = max(h.samples for h in histories)
    basis = Basis(
        pods=len(histories),
        samples=sum(h.samples for h in histories),
        expected_samples=expected * len(histories),
        coverage=coverage,
        confidence=confidence(
            coverage=coverage, sample_ratio=best_samples / expected, window=options.window
        ),
        peak=math.ceil(peak),
        request_quantile=math.ceil(quantile),
        oom_kills=oom,
        restarts=restarts,
    )
    krr = krr_simple(h.peak for h in histories)
    vpa = vpa_target(
        (daily_peaks(h.hourly_peaks, end=end) for h in histories),
        containers_in_pod=containers_in_pod,
    )
    leaks = [leak for h in histories if (leak := find_leak(h)) is not None]
    notes: list[str] = []
    if leaks:
        worst = max(leaks, key=lambda leak: leak.bytes_per_hour)
        notes.append(
            f"leak: {worst.pod} grows {format_bytes(ceil_mib(worst.bytes_per_hour))}/h"
            f" over {worst.hours} h (R² {worst.r2:.2f}): no bigger limit is proposed;"
            " a larger limit only postpones the OOM kill"
        )
        notes.append(_incident_note(leaks, incidents, namespace=options.namespace))
        return ContainerRecommendation(
            container=name,
            basis=basis,
            request=None,
            limit=None,
            memory={},
            memory_high=None,
            gomemlimit=None,
            gomemlimit_percent=None,
            krr=krr,
            vpa=vpa,
            leak=worst,
            notes=tuple(notes),
        )
    base = float(peak)
    if oom:
        base = max(peak * OOM_BUMP_RATIO, peak + OOM_BUMP_MIN)
        notes.append(
            f"oom: {oom} OOM kill(s) in the window: the peak is cut off at the old limit,"
            f" so it is bumped to {format_bytes(ceil_mib(base))} first (as VPA does)"
        )
    ceiling, percent = ceiling_for(base, go=options.go)
    request = min(ceil_mib(quantile), ceiling)
    memory, sized_notes, sizing = _size(
        request=request, ceiling=ceiling, percent=percent, name=name, options=options
    )
    notes.extend(sized_notes)
    if basis.confidence != "high":
        notes.append(
            f"confidence {basis.confidence}: {coverage:.0%} of the window's hours have data,"
            f" {basis.samples} of {basis.expected_samples} expected samples"
        )
    return ContainerRecommendation(
        container=name,
        basis=basis,
        request=sizing[0],
        limit=sizing[1],
        memory=memory,
        memory_high=sizing[2],
        gomemlimit=sizing[3],
        gomemlimit_percent=percent if sizing[3] is not None else None,
        krr=krr,
        vpa=vpa,
        leak=None,
        notes=tuple(notes),
    )


def ceiling_for(peak: float, *, go: bool) -> tuple[int, int | None]:
    """The ceiling (limit, or memory.high) for a peak, and GOMEMLIMIT's percentage of it.

    The peak plus 20 % (at least 32 MiB); for Go, GOMEMLIMIT 90 % of the ceiling. A small
    ceiling cannot leave the sizing rule's 32 MiB below it at 90 %: there the ceiling is
    raised to keep GOMEMLIMIT 8 % above the peak with 32 MiB above it, and the percentage
    is what leaves those 32 MiB (``64Mi`` peak: ``102Mi`` ceiling, ``68%``).
    """
    ceiling = ceil_mib(max(peak * (1 + CEILING_HEADROOM), peak + CEILING_HEADROOM_MIN))
    if not go:
        return ceiling, None
    if ceiling * (100 - GOMEMLIMIT_PERCENT) / 100 >= HEADROOM_MIN:
        return ceiling, GOMEMLIMIT_PERCENT
    heap = peak * (1 + CEILING_HEADROOM) * GOMEMLIMIT_PERCENT / 100
    ceiling = max(ceiling, ceil_mib(heap + HEADROOM_MIN))
    while True:  # a whole percentage: a MiB more until its floor still covers the heap
        percent = math.floor(100 * (ceiling - HEADROOM_MIN) / ceiling)
        if ceiling * percent / 100 >= heap:
            return ceiling, percent
        ceiling += MIB


def _size(
    *, request: int, ceiling: int, percent: int | None, name: str, options: Options
) -> tuple[dict[str, str], list[str], tuple[int | None, int | None, int | None, str | None]]:
    """The policy's memory section and what the sizing engine makes of it.

    The ceiling is the limit; when the kubelet writes memory.high it is memory.high
    instead (intent form), and the limit is solved above it.
    """
    profile = options.profile
    notes: list[str] = []
    rule = MemoryRule(request=request, limit=ceiling)
    memory = {"request": format_bytes(request), "limit": format_bytes(ceiling)}
    factor = profile.factor
    if profile.throttles and factor is not None and request < ceiling:
        # memory.high = request + factor x (limit - request): the limit that puts it at the
        # ceiling, whole MiB, rounded up (the engine's guarantee keeps high <= asked).
        limit = ceil_mib(request + float((ceiling - request) / factor))
        if profile.no_protection_reason() is None:
            rule = MemoryRule(protect=request, high=ceiling)
            memory = {"protect": format_bytes(request), "high": format_bytes(ceiling)}
        else:
            rule = MemoryRule(high=ceiling, max=limit)
            memory = {"high": format_bytes(ceiling), "max": format_bytes(limit)}
        notes.append(
            f"intent: the kubelet writes memory.high, so the ceiling {format_bytes(ceiling)}"
            " is memory.high (throttling starts above the peak plus headroom), not the limit"
        )
    runtime = None if percent is None else GoRuntimeRule(memory_limit_percent=percent)

    def size(rule: MemoryRule) -> PodSizing:
        return size_pod(
            pod=PodShape(containers=(ContainerResources(name=name),)),
            governed=[name],
            rule=rule,
            runtime=runtime,
            profile=profile,
        )

    sizing = size(rule)
    if sizing.infeasible is not None or not sizing.containers:
        # The intent does not fit this kubelet (rounding, too close): plain resources do.
        notes.append(f"intent refused ({sizing.infeasible}); plain request/limit proposed")
        memory = {"request": format_bytes(request), "limit": format_bytes(ceiling)}
        sizing = size(MemoryRule(request=request, limit=ceiling))
    sized = sizing.containers[0]
    notes.extend(n for n in sized.notes if "GOMEMLIMIT" in n and "leaves" in n)
    return (
        memory,
        notes,
        (sized.memory_request, sized.memory_limit, sized.cgroup.memory_high, sized.gomemlimit_env),
    )


def _incident_note(
    leaks: Sequence[Leak], incidents: Mapping[str, Incident] | None, *, namespace: str
) -> str:
    if incidents is None:
        return (
            f"see its last MemoryIncident: kubectl get memoryincidents -n {namespace}"
            f" (or memwarden incidents list -n {namespace}); no kubeconfig was reachable"
        )
    found = [incidents[leak.pod] for leak in leaks if leak.pod in incidents]
    if not found:
        return (
            "no MemoryIncident for its pods yet: a policy with oomRisk.timeToLimit opens one"
            " (with a heap profile) before the OOM kill"
        )
    last = max(found, key=lambda i: i.created)
    summary = f": {last.summary}" if last.summary else ""
    return (
        f"last incident {last.name} (pod {last.pod}, {last.created}){summary};"
        f" memwarden incidents get {namespace}/{last.name}"
    )


def last_incidents(objects: Iterable[Mapping[str, Any]]) -> dict[str, Incident]:
    """Pod -> its newest MemoryIncident (by creation time), with the heap analysis' top
    function when the incident has one."""
    newest: dict[str, Incident] = {}
    for obj in objects:
        metadata = obj.get("metadata") or {}
        pod = str((obj.get("spec") or {}).get("pod") or "")
        created = str(metadata.get("creationTimestamp") or "")
        if not pod or (pod in newest and newest[pod].created >= created):
            continue
        analysis = ((obj.get("status") or {}).get("analysis")) or {}
        top = (analysis.get("top") or [None])[0]
        summary = (
            f"top in-use {top.get('function')}"
            f" ({approximate_bytes(int(top.get('flatBytes') or 0))})"
            if isinstance(top, Mapping)
            else None
        )
        newest[pod] = Incident(
            name=str(metadata.get("name") or "?"), pod=pod, created=created, summary=summary
        )
    return newest


def recommend(
    histories: Iterable[ContainerHistory],
    *,
    options: Options,
    end: float,
    owners: Mapping[str, Owner] | None = None,
    pod_labels: Mapping[str, Mapping[str, str]] | None = None,
    selector: Selector | None = None,
    incidents: Mapping[str, Incident] | None = None,
) -> list[WorkloadRecommendation]:
    """Per workload (sorted by kind and name): memwarden's proposal and the anchors.

    ``owners``/``pod_labels`` come from kube-state-metrics when Prometheus has them;
    ``incidents`` (pod -> its last incident) is None when no cluster was reachable.
    """
    if selector is not None and not selector.empty:
        if pod_labels is None:
            raise ValueError(
                "--selector: Prometheus has no kube_pod_labels (kube-state-metrics) for"
                f" namespace {options.namespace}, so pods cannot be selected by label"
            )
        histories = [h for h in histories if selector.matches(pod_labels.get(h.pod, {}))]
    grouped = group_workloads(histories, owners=owners or {})
    result = []
    for owner, members in sorted(grouped.items(), key=lambda kv: (kv[0].kind, kv[0].name)):
        pods = tuple(sorted({h.pod for h in members}))
        by_container: dict[str, list[ContainerHistory]] = defaultdict(list)
        for h in members:
            by_container[h.container].append(h)
        source: OwnerSource = "pod name"
        if any(p in (owners or {}) for p in pods):
            source = "kube_pod_owner"
        per_pod = max(len({h.container for h in members if h.pod == p}) for p in pods)
        containers = tuple(
            _recommend_container(
                sorted(hs, key=lambda h: h.pod),
                options=options,
                end=end,
                containers_in_pod=per_pod,
                incidents=incidents,
            )
            for _, hs in sorted(by_container.items())
        )
        governed = max(containers, key=lambda c: (c.basis.peak, c.container)).container
        labels = common_labels(pod_labels[p] for p in pods if p in pod_labels) if pod_labels else {}
        notes = [f"owner: {owner.kind} {owner.name}, from {source}"]
        if len(containers) > 1:
            others = ", ".join(c.container for c in containers if c.container != governed)
            notes.append(
                f"containers: the policy governs {governed} (the largest peak); a policy sizes"
                f" every container it governs alike, so {others} keep their resources"
            )
        if not labels:
            notes.append(
                "selector: no pod labels in Prometheus (kube_pod_labels): guessed"
                f" app={owner.name}; check it against the workload's pod template"
            )
        result.append(
            WorkloadRecommendation(
                owner=Owner(kind=owner.kind, name=owner.name, source=source),
                pods=pods,
                containers=containers,
                governed=governed,
                selector=labels or {"app": owner.name},
                selector_guessed=not labels,
                notes=tuple(notes),
            )
        )
    return result


# --------------------------------------------------------------------------- outputs


def policy_name(owner: Owner) -> str:
    """A DNS-1123 name for the proposed policy (``web``, or ``db-statefulset`` for kinds
    other than Deployment, so two kinds of the same name do not collide)."""
    base = owner.name if owner.kind == "Deployment" else f"{owner.name}-{owner.kind.lower()}"
    return re.sub(r"[^a-z0-9.-]", "-", base.lower())[:253].strip("-.") or "workload"


def policy_document(workload: WorkloadRecommendation, *, namespace: str) -> dict[str, Any] | None:
    """The proposed MemoryPolicy, ready for ``kubectl apply``; None for a leaking workload."""
    governed = next(c for c in workload.containers if c.container == workload.governed)
    if governed.leak is not None or not governed.memory:
        return None
    spec: dict[str, Any] = {
        "selector": {"matchLabels": dict(workload.selector)},
        "containers": [governed.container],
        "mode": "Enforce",
        "update": "Initial",
        "memory": dict(governed.memory),
    }
    if governed.gomemlimit_percent is not None:
        spec["runtime"] = {"go": {"memoryLimit": f"{governed.gomemlimit_percent}%"}}
    return {
        "apiVersion": "memwarden.dev/v1alpha1",
        "kind": "MemoryPolicy",
        "metadata": {
            "name": policy_name(workload.owner),
            "namespace": namespace,
            "labels": {"app.kubernetes.io/managed-by": "memwarden-recommend"},
        },
        "spec": spec,
    }


def as_document(workload: WorkloadRecommendation, *, namespace: str) -> dict[str, Any]:
    """Everything about one workload, for ``-o json`` (exact bytes)."""
    return {
        "workload": {"kind": workload.owner.kind, "name": workload.owner.name},
        "ownerFrom": workload.owner.source,
        "pods": list(workload.pods),
        "leaking": workload.leaking,
        "policy": policy_document(workload, namespace=namespace),
        "containers": [
            {
                "name": c.container,
                "governed": c.container == workload.governed,
                "basis": {
                    "pods": c.basis.pods,
                    "samples": c.basis.samples,
                    "expectedSamples": c.basis.expected_samples,
                    "windowCoverage": round(c.basis.coverage, 4),
                    "confidence": c.basis.confidence,
                    "peakBytes": c.basis.peak,
                    f"p{round(REQUEST_QUANTILE * 100)}Bytes": c.basis.request_quantile,
                    "oomKills": c.basis.oom_kills,
                    "restarts": c.basis.restarts,
                },
                "memwarden": {
                    "requestBytes": c.request,
                    "limitBytes": c.limit,
                    "memoryHighBytes": c.memory_high,
                    "GOMEMLIMIT": c.gomemlimit,
                },
                "krrSimpleBytes": c.krr,
                "vpaTargetBytes": c.vpa,
                "leak": None
                if c.leak is None
                else {
                    "pod": c.leak.pod,
                    "bytesPerHour": round(c.leak.bytes_per_hour),
                    "r2": round(c.leak.r2, 4),
                    "hours": c.leak.hours,
                },
                "notes": list(c.notes),
            }
            for c in workload.containers
        ],
        "notes": list(workload.notes),
    }


__all__ = [
    "Basis",
    "ContainerHistory",
    "ContainerRecommendation",
    "Incident",
    "Leak",
    "Options",
    "Owner",
    "Selector",
    "WorkloadRecommendation",
    "as_document",
    "ceil_mib",
    "common_labels",
    "daily_peaks",
    "find_leak",
    "krr_simple",
    "last_incidents",
    "owner_from_metric",
    "owner_from_pod_name",
    "policy_document",
    "recommend",
    "vpa_bucket_end",
    "vpa_target",
]
