"""docs/settings.md's reference is the settings model's, and the environment names work."""

from __future__ import annotations

from pathlib import Path

import pytest
from settings_docs import reference_markdown

from memwarden.settings import (
    Settings,
    _FlatEnvironment,
    _NestedEnvironment,
    flat_env_name,
    nested_env_name,
    setting_names,
)

pytestmark = pytest.mark.unit

DOCS = Path(__file__).resolve().parents[2] / "docs" / "settings.md"


def test_the_reference_is_current() -> None:
    assert reference_markdown() in DOCS.read_text(), "run make crds (hack/settings_docs.py)"


def test_every_setting_documents_why() -> None:
    undocumented = [
        f"{section}.{name}" for section, name, field in setting_names() if not field.description
    ]
    assert not undocumented


def test_flat_and_nested_names_reach_every_setting() -> None:
    """Each name lands on its field (before validation); no two settings share a flat name."""
    flat = [flat_env_name(section, name) for section, name, _ in setting_names()]
    assert len(flat) == len(set(flat))
    for section, name, _ in setting_names():
        for env in (flat_env_name(section, name), nested_env_name(section, name)):
            source = _FlatEnvironment if env in flat else _NestedEnvironment
            found = source(Settings, {env: "given"})()
            landed = found.get(name) if section is None else found.get(section, {}).get(name)
            assert landed == "given", f"{env} does not set {section}.{name}: {found}"


def test_the_nested_name_wins_and_errors_name_the_setting() -> None:
    env = {"MEMWARDEN_WEBHOOK_PORT": "9444", "MEMWARDEN_WEBHOOK__PORT": "9445"}
    assert Settings.from_env(env).webhook.port == 9445
    with pytest.raises(ValueError, match=r"updates\.evictions_per_minute"):
        Settings.from_env({"MEMWARDEN_UPDATE_EVICTIONS_PER_MINUTE": "0"})
