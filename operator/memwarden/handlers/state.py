"""The operator's one state object, built at start-up and handed to handlers through kopf's memo.

``memwarden run`` (or a test) gives the settings and the watched namespaces
(``configure``, ``watch_namespaces``) before kopf starts; the first ``on.startup``
handler (``build_state``, registered before any other because every handler module
imports this one first) builds an ``OperatorState`` from them and puts it in the memo
under ``STATE``. Handlers read it from the memo they are given (``of(memo)``); loops are
handed it when started; helpers take it as a parameter. Nothing is built at import time
and nothing is read from the environment after start-up.
"""

from __future__ import annotations

import asyncio
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import kopf

from memwarden.eviction_gate import EvictionGate
from memwarden.evidence.adapters.store import BundleStore, EvidenceStore
from memwarden.kube import Kube
from memwarden.mutation import PlanCache
from memwarden.podwatch import PodIndex
from memwarden.risk.adapters.prometheus import PrometheusClient
from memwarden.risk.cycle import Announcements
from memwarden.selection import PolicyIndex
from memwarden.settings import Settings
from memwarden.status import StatusBook
from memwarden.updates import RetryBook

if TYPE_CHECKING:
    from memwarden.handlers.risk import RecordingRules

#: The memo key of the ``OperatorState``.
STATE = "state"
#: Set in the memo of the serving part that ``memwarden run`` starts itself under leader
#: election (``handlers/serving.py``): webhook, HTTP API, policy watch, certificates.
SERVING = "serving"

_settings: Settings | None = None
_watched_namespaces: list[str] | None = None


@dataclass(frozen=True)
class Evidence:
    """The evidence store and the key that signs its upload tokens."""

    store: BundleStore
    upload_key: bytes
    base_url: str

    @classmethod
    def from_settings(cls, settings: Settings) -> Evidence:
        s = settings
        if s.evidence.key_file:
            key = Path(s.evidence.key_file).read_bytes().strip()
        else:  # development only: tokens do not survive a restart (settings.py says so)
            key = secrets.token_bytes(32)
        scheme = "http" if s.http.insecure else "https"
        base = s.evidence.base_url or f"{scheme}://{s.http.host}:{s.http.port}/evidence"
        return cls(store=make_store(settings), upload_key=key, base_url=base)


def make_store(settings: Settings) -> BundleStore:
    """The configured evidence store. The S3 one (and boto3) is imported only when chosen;
    it is not contacted here: a wrong key or an unreachable endpoint must not stop the
    operator (admission does not need it). The retention pass, first run at start-up,
    logs such a problem in one line, and each evidence request that needs the store gets
    a 503 naming it."""
    e = settings.evidence
    if e.backend == "pvc":
        return EvidenceStore(Path(e.dir))
    from memwarden.evidence.adapters.s3store import S3Config, S3EvidenceStore

    assert e.s3_bucket is not None  # EvidenceSettings refuses s3 without a bucket
    return S3EvidenceStore(
        S3Config(
            bucket=e.s3_bucket,
            endpoint_url=e.s3_endpoint_url,
            prefix=e.s3_prefix,
            region=e.s3_region,
            addressing_style=e.s3_addressing_style,
            ca_file=e.s3_ca_file,
            part_bytes=e.s3_part_bytes,
            presign_seconds=e.s3_presign_downloads_seconds,
        )
    )


@dataclass
class RiskMemory:
    """What the risk loop and incident opening remember between cycles."""

    prometheus: PrometheusClient | None
    recording_rules: RecordingRules
    #: Announcements already made (Events, log lines), so each is made once per interval.
    announcements: Announcements = field(default_factory=Announcements)
    #: Incidents this process created, until the incident index has them (risk.py).
    ledger: dict[str, tuple[float, dict[str, Any]]] = field(default_factory=dict)
    #: One opening decision at a time: the cluster-wide capture cap counts every one.
    opening: asyncio.Lock = field(default_factory=asyncio.Lock)


@dataclass
class UpdateMemory:
    """What the update loop remembers: backoff, the eviction gate, Events told, working sets."""

    retries: RetryBook
    gate: EvictionGate
    told: dict[tuple[str, str], None] = field(default_factory=dict)
    working_sets: dict[str, tuple[float, dict[str, dict[str, int]]]] = field(default_factory=dict)


@dataclass
class OperatorState:
    """Everything the handlers share, built once at start-up (``build``)."""

    settings: Settings
    kube: Kube
    #: Every valid MemoryPolicy, label-anchored for admission's per-pod look-up.
    policies: PolicyIndex
    #: Which namespaces' policy statuses are due (see handlers/policies.py).
    status_book: StatusBook
    #: Every running pod of the governed namespaces, as policies see it (podwatch.py).
    pods: PodIndex
    #: Plans of pod views by shape, shared by the status and update loops.
    plans: PlanCache
    evidence: Evidence
    #: The namespaces the operator watches (None: the whole cluster), as kopf is told.
    watched_namespaces: list[str] | None
    risk: RiskMemory
    updates: UpdateMemory
    #: Incidents whose bundle is being analysed (handlers/incidents.py), never twice at once.
    analysing: set[tuple[str, str]] = field(default_factory=set)
    #: Invalid policies already told of (InvalidSpec Event), by generation.
    invalid_policies: dict[tuple[str, str], int | None] = field(default_factory=dict)
    #: Whether the first policy event has replaced the admission index from kopf's index.
    mirrored: bool = False
    #: Whether this replica reconciles: always with leader election off; under election,
    #: only while it holds the Lease (``handlers/serving.py``). Followers store uploaded
    #: bundles but leave completing the incident to the leader (``incidents.on_stored``).
    leading: bool = True


def configure(settings: Settings) -> None:
    """The settings the next ``build_state`` uses (``memwarden run``, tests)."""
    global _settings
    _settings = settings


def watch_namespaces(namespaces: list[str] | None) -> None:
    """The namespaces the operator watches (None: the whole cluster), as kopf is told."""
    global _watched_namespaces
    _watched_namespaces = namespaces


def configured_settings() -> Settings:
    """The settings given by ``configure``; built from the environment if it was never called."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def build(settings: Settings, *, namespaces: list[str] | None, kube: Kube) -> OperatorState:
    """The operator's state for these settings: indexes empty, clients ready."""
    from memwarden.handlers.risk import RecordingRules  # the class lives with its loop

    book = StatusBook()
    never = settings.never_governed
    prometheus = (
        None
        if settings.risk.prometheus_url is None
        else PrometheusClient(
            settings.risk.prometheus_url, timeout=settings.risk.prometheus_timeout_seconds
        )
    )
    return OperatorState(
        settings=settings,
        kube=kube,
        policies=PolicyIndex(),
        status_book=book,
        pods=PodIndex(book=book, governed=lambda ns: ns not in never),
        plans=PlanCache(),
        evidence=Evidence.from_settings(settings),
        watched_namespaces=namespaces,
        risk=RiskMemory(prometheus=prometheus, recording_rules=RecordingRules(settings)),
        updates=UpdateMemory(
            retries=RetryBook(
                base=settings.updates.interval_seconds, cap=settings.updates.retry_max_seconds
            ),
            gate=EvictionGate.from_settings(settings),
        ),
    )


def served_elsewhere(memo: kopf.Memo) -> bool:
    """Whether this is kopf's memo under leader election: then the webhook, the HTTP API,
    the admission policy index and the certificates are the serving part's, started on
    every replica before kopf (``handlers/serving.py``), and kopf's start-up handlers
    leave them alone; kopf runs on the leader only."""
    return of(memo).settings.leader.election and not memo.get(SERVING)


def of(memo: kopf.Memo) -> OperatorState:
    """The state in a handler's memo (put there by ``build_state``)."""
    found = memo.get(STATE)
    if not isinstance(found, OperatorState):
        raise RuntimeError("the operator state is not built: build_state runs first at start-up")
    return found


@kopf.on.startup()
def build_state(memo: kopf.Memo, **_: Any) -> None:
    """Build the one state object before any other start-up handler runs (unless
    ``memwarden run`` built it already, for the serving part: leader election)."""
    if isinstance(memo.get(STATE), OperatorState):
        return
    memo[STATE] = build(
        configured_settings(), namespaces=_watched_namespaces, kube=Kube.from_environment()
    )
