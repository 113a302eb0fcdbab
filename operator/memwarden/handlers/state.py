"""The operator's process-wide state: the settings it was started with.

Set once by ``memwarden run`` (or a test) before kopf starts; handlers read it. Nothing
else lives here, so handlers stay functions of their inputs.
"""

from __future__ import annotations

from memwarden.settings import Settings

_settings: Settings | None = None


def configure(settings: Settings) -> None:
    global _settings
    _settings = settings


def settings() -> Settings:
    """The settings; built from the environment if ``configure`` was never called."""
    global _settings
    if _settings is None:
        _settings = Settings.from_env()
    return _settings
