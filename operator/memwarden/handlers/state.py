"""The operator's process-wide state: its settings and the admission policy index.

Settings are set once by ``memwarden run`` (or a test) before kopf starts. The policy
index is kept current by a watch handler (handlers/indexes.py); admission reads it.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

from memwarden.evidence.adapters.store import EvidenceStore
from memwarden.kube import Kube
from memwarden.mutation import PlanCache
from memwarden.podwatch import PodIndex
from memwarden.selection import PolicyIndex
from memwarden.settings import Settings
from memwarden.status import StatusBook

_settings: Settings | None = None
_policies = PolicyIndex()
_status_book = StatusBook()
_pods: PodIndex | None = None
_watched_namespaces: list[str] | None = None
_kube: Kube | None = None
_evidence: Evidence | None = None
#: Plans of pod views by shape, shared by the status and update loops.
_plans = PlanCache()


@dataclass(frozen=True)
class Evidence:
    """The evidence store and the key that signs its upload tokens."""

    store: EvidenceStore
    upload_key: bytes
    base_url: str


def configure(settings: Settings) -> None:
    global _settings
    _settings = settings


def settings() -> Settings:
    """The settings; built from the environment if ``configure`` was never called."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings


def policies() -> PolicyIndex:
    """Every valid MemoryPolicy, label-anchored for admission's per-pod look-up."""
    return _policies


def plans() -> PlanCache:
    """Plans of pod views by shape: a namespace's pass re-plans only pods unlike the others."""
    return _plans


def status_book() -> StatusBook:
    """Which namespaces' policy statuses are due (see handlers/policies.py)."""
    return _status_book


def pods() -> PodIndex:
    """Every running pod of the governed namespaces, as policies see it (podwatch.py)."""
    global _pods
    if _pods is None:
        _pods = PodIndex(book=_status_book, governed=lambda ns: ns not in settings().never_governed)
    return _pods


def watch_namespaces(namespaces: list[str] | None) -> None:
    """The namespaces the operator watches (None: the whole cluster), as kopf is told."""
    global _watched_namespaces
    _watched_namespaces = namespaces


def watched_namespaces() -> list[str] | None:
    return _watched_namespaces


def kube() -> Kube:
    """The operator's Kubernetes adapter (in-cluster credentials, else the kubeconfig)."""
    global _kube
    if _kube is None:
        _kube = Kube.from_environment()
    return _kube


def evidence() -> Evidence:
    """The evidence store, built from the settings on first use."""
    global _evidence
    if _evidence is None:
        s = settings()
        if s.evidence_key_file:
            key = Path(s.evidence_key_file).read_bytes().strip()
        else:  # development only: tokens do not survive a restart (settings.py says so)
            key = secrets.token_bytes(32)
        scheme = "http" if s.http_insecure else "https"
        base = s.evidence_base_url or f"{scheme}://{s.http_host}:{s.http_port}/evidence"
        _evidence = Evidence(
            store=EvidenceStore(Path(s.evidence_dir)), upload_key=key, base_url=base
        )
    return _evidence
