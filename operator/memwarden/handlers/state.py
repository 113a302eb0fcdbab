"""The operator's process-wide state: its settings and the admission policy index.

Settings are set once by ``memwarden run`` (or a test) before kopf starts. The policy
index is kept current by a watch handler (handlers/indexes.py); admission reads it.
"""

from __future__ import annotations

from memwarden.selection import PolicyIndex
from memwarden.settings import Settings

_settings: Settings | None = None
_policies = PolicyIndex()


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
