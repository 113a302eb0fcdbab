"""The operator's own Prometheus metrics, in one registry.

Defined here, incremented by handlers, exposed by whoever serves ``/metrics``
(``prometheus_client.generate_latest(REGISTRY)``). A registry of our own keeps tests
and the benchmark from colliding with the process-wide default one.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import ParamSpec, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry(auto_describe=True)

SUPPRESSED_TRIGGERS = Counter(
    "memwarden_suppressed_triggers",
    "Findings that held but opened no incident, by reason (cooldown, budget, concurrency, "
    "capture disabled, no policy; for pushed alerts also alerts not accepted, namespace "
    "mismatch, unknown pod, ...).",
    ["reason"],
    registry=REGISTRY,
)
INCIDENTS_OPENED = Counter(
    "memwarden_incidents_opened",
    "MemoryIncidents opened by memwarden, by trigger source and signal.",
    ["source", "signal"],
    registry=REGISTRY,
)
RISK_QUERIES = Counter(
    "memwarden_risk_queries",
    "PromQL queries sent by the risk loop.",
    registry=REGISTRY,
)
RISK_RECORDED_QUERIES = Counter(
    "memwarden_risk_recorded_queries",
    "PromQL queries of the risk loop that read memwarden's recording rules, not the raw "
    "cAdvisor series (a part of memwarden_risk_queries).",
    registry=REGISTRY,
)
RISK_EVALUATION_FAILURES = Counter(
    "memwarden_risk_evaluation_failures",
    "Policy evaluation cycles that failed because Prometheus was unavailable.",
    registry=REGISTRY,
)
RISK_CYCLE_SECONDS = Histogram(
    "memwarden_risk_cycle_seconds",
    "Duration of one policy's risk evaluation cycle (queries, maths, incident creation).",
    buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
    registry=REGISTRY,
)

# -- admission, reconcile, certificates, captures (see docs/operations.md) -----------------

#: Outcomes of one pod admission (handlers/admission.py).
WEBHOOK_OUTCOMES = ("mutated", "unchanged", "audit", "infeasible", "error")
WEBHOOK_REQUESTS = Counter(
    "memwarden_webhook_requests",
    "Pod admission requests answered, by outcome: mutated, unchanged (no policy or nothing "
    "to change), audit (warnings only), infeasible (policy not applied), error (admitted "
    "unchanged because memwarden failed).",
    ["outcome"],
    registry=REGISTRY,
)
WEBHOOK_SECONDS = Histogram(
    "memwarden_webhook_duration_seconds",
    "Time memwarden's pod admission handler took; the API server waits at most the "
    "configuration's timeoutSeconds (3 s by default).",
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 3),
    registry=REGISTRY,
)
RECONCILES = Counter(
    "memwarden_reconciles",
    "Reconcile passes (status recomputations) by kind of object.",
    ["kind"],
    registry=REGISTRY,
)
RECONCILE_ERRORS = Counter(
    "memwarden_reconcile_errors",
    "Reconcile passes that failed, by kind of object.",
    ["kind"],
    registry=REGISTRY,
)
PROMETHEUS_QUERY_SECONDS = Histogram(
    "memwarden_prometheus_query_duration_seconds",
    "Duration of one PromQL instant query, by outcome (ok, error).",
    ["outcome"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
    registry=REGISTRY,
)
INCIDENT_PHASES = Counter(
    "memwarden_incident_phase_transitions",
    "MemoryIncidents entering a phase (Pending, Capturing, Collected, Failed, Skipped), by "
    "trigger source (prometheus, alertmanager, oomkilled, manual).",
    ["phase", "source"],
    registry=REGISTRY,
)
CAPTURE_SECONDS = Histogram(
    "memwarden_capture_duration_seconds",
    "From the ephemeral container's creation to the bundle stored (or the capture "
    "failing), by outcome.",
    ["outcome"],
    buckets=(1, 2.5, 5, 10, 20, 30, 60, 120, 300, 600),
    registry=REGISTRY,
)
BUNDLE_BYTES = Histogram(
    "memwarden_evidence_bundle_bytes",
    "Size of evidence bundles stored (tar.gz; a core dump dominates when taken).",
    buckets=tuple(float(2**n) for n in range(16, 36, 2)),  # 64 KiB .. 16 GiB
    registry=REGISTRY,
)
WEBHOOK_CERT_EXPIRY = Gauge(
    "memwarden_webhook_certificate_expiry_timestamp_seconds",
    "When the webhook's serving certificate expires (Unix time): alert well before.",
    registry=REGISTRY,
)
LEADER = Gauge(
    "memwarden_leader",
    "1 while this replica holds the leader Lease and reconciles (always 1 with leader "
    "election off); 0 on a follower, which serves admission and the HTTP API only.",
    registry=REGISTRY,
)
LEADER_TRANSITIONS = Counter(
    "memwarden_leader_transitions",
    "Leadership changes of this replica: acquired, released (on shutdown), lost (a "
    "renewal deadline missed or the Lease taken: the process exits).",
    ["transition"],
    registry=REGISTRY,
)
WEBHOOK_CA_ROTATIONS = Counter(
    "memwarden_webhook_ca_rotations",
    "Steps of the self-made webhook CA's rotation (replace, prepare, promote).",
    ["step"],
    registry=REGISTRY,
)

EVIDENCE_TOKEN_REVIEWS = Counter(
    "memwarden_evidence_token_reviews",
    "TokenReviews sent to the API server for evidence reads, by result (authenticated, "
    "unauthenticated, error). Cached answers send none.",
    ["result"],
    registry=REGISTRY,
)
EVIDENCE_AUTH_THROTTLED = Counter(
    "memwarden_evidence_auth_throttled",
    "Evidence reads answered without a review because the client started too many "
    "(reason rate: 429) or too many reviews were in flight (reason busy: 503).",
    ["reason"],
    registry=REGISTRY,
)

RESIZES = Counter(
    "memwarden_resizes",
    "In-place resizes of running pods (update InPlace, InPlaceOrRecreate) by outcome: "
    "accepted (the API server took it; the kubelet's conditions follow), refused (the API "
    "server said no: 4xx), failed (unreachable, 5xx: retried with backoff).",
    ["outcome"],
    registry=REGISTRY,
)
UPDATE_PASSES = Counter(
    "memwarden_update_passes",
    "Passes of the update loop over the namespaces whose policies have an update mode.",
    registry=REGISTRY,
)
EVICTIONS = Counter(
    "memwarden_evictions",
    "Evictions of running pods (update Recreate, InPlaceOrRecreate) by outcome: evicted, "
    "retry_later (429: a PodDisruptionBudget allows none now), gone, failed; and those the "
    "gate held back: rate_limited, workload_busy, no_controller, not_recreatable.",
    ["outcome"],
    registry=REGISTRY,
)

_P = ParamSpec("_P")
_R = TypeVar("_R")


def reconciled(kind: str) -> Callable[[Callable[_P, _R]], Callable[_P, _R]]:
    """Count a (sync) reconcile handler's passes and failures under ``kind``."""

    def decorate(fn: Callable[_P, _R]) -> Callable[_P, _R]:
        @functools.wraps(fn)
        def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
            RECONCILES.labels(kind=kind).inc()
            try:
                return fn(*args, **kwargs)
            except BaseException:
                RECONCILE_ERRORS.labels(kind=kind).inc()
                raise

        return wrapper

    return decorate


__all__ = [
    "BUNDLE_BYTES",
    "CAPTURE_SECONDS",
    "EVICTIONS",
    "EVIDENCE_AUTH_THROTTLED",
    "EVIDENCE_TOKEN_REVIEWS",
    "INCIDENTS_OPENED",
    "INCIDENT_PHASES",
    "PROMETHEUS_QUERY_SECONDS",
    "RECONCILES",
    "RECONCILE_ERRORS",
    "REGISTRY",
    "RESIZES",
    "RISK_CYCLE_SECONDS",
    "RISK_EVALUATION_FAILURES",
    "RISK_QUERIES",
    "SUPPRESSED_TRIGGERS",
    "UPDATE_PASSES",
    "WEBHOOK_CA_ROTATIONS",
    "WEBHOOK_CERT_EXPIRY",
    "WEBHOOK_OUTCOMES",
    "WEBHOOK_REQUESTS",
    "WEBHOOK_SECONDS",
    "reconciled",
]
