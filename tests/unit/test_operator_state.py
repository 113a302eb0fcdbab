"""The operator state: built once from the settings at start-up, read from kopf's memo."""

from __future__ import annotations

from pathlib import Path

import kopf
import pytest
from kubernetes import client

from memwarden.handlers import state
from memwarden.kube import Kube
from memwarden.settings import Settings

pytestmark = pytest.mark.unit


def built(settings: Settings, namespaces: list[str] | None = None) -> state.OperatorState:
    return state.build(settings, namespaces=namespaces, kube=Kube(client.ApiClient()))


def test_the_state_follows_the_settings_it_was_built_from(tmp_path: Path) -> None:
    settings = Settings.model_validate(
        {
            "namespace": "ops",
            "evidence": {"dir": str(tmp_path)},
            "updates": {"interval_seconds": 7, "evictions_per_minute": 3},
        }
    )
    shared = built(settings, namespaces=["a"])
    assert shared.settings is settings
    assert shared.watched_namespaces == ["a"]
    assert shared.risk.prometheus is None, "no Prometheus URL: no risk evaluation"
    assert shared.updates.gate.per_minute == 3
    assert shared.evidence.store.root == tmp_path
    assert shared.evidence.base_url == "https://0.0.0.0:8443/evidence"


def test_a_prometheus_url_gives_one_client_for_risk_and_updates() -> None:
    shared = built(Settings.model_validate({"risk": {"prometheus_url": "http://prom:9090"}}))
    assert shared.risk.prometheus is not None


def test_two_builds_share_nothing() -> None:
    """Nothing lives at module level: a second operator in one process (a test) starts clean."""
    first, second = built(Settings()), built(Settings())
    first.analysing.add(("ns", "incident"))
    first.updates.told[("uid", "reason")] = None
    assert not second.analysing and not second.updates.told
    assert first.policies is not second.policies and first.pods is not second.pods


def test_handlers_read_it_from_the_memo() -> None:
    memo = kopf.Memo()
    with pytest.raises(RuntimeError, match="build_state runs first"):
        state.of(memo)
    shared = built(Settings())
    memo[state.STATE] = shared
    assert state.of(memo) is shared


def test_configured_settings_are_the_ones_built_from() -> None:
    saved = state._settings
    try:
        ours = Settings.model_validate({"dry_run": True})
        state.configure(ours)
        assert state.configured_settings() is ours
    finally:
        state._settings = saved
