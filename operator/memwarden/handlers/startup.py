"""Operator start-up: kopf settings, the webhook server, and the one settings log line."""

from __future__ import annotations

import logging
from typing import Any

import kopf

from memwarden.handlers import state
from memwarden.webhook import StrictWebhookServer, ensure_serving_certificate

logger = logging.getLogger("memwarden")


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, **_: Any) -> None:
    """Apply memwarden's settings to kopf and log them once."""
    ours = state.settings()
    logger.info("memwarden settings: %s", ours.for_log())
    # Keep kopf's bookkeeping under our own prefix, on our own objects only.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="memwarden.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="memwarden.dev", key="last-handled-configuration"
    )
    settings.posting.level = logging.INFO
    settings.watching.server_timeout = 300
    cert_file, key_file = ensure_serving_certificate(ours)
    settings.admission.server = StrictWebhookServer(
        addr=ours.webhook_host,
        port=ours.webhook_port,
        certfile=cert_file,
        pkeyfile=key_file,
    )
    # The MutatingWebhookConfiguration is shipped by memwarden (chart / manifests.py),
    # never managed by kopf: kopf would set timeoutSeconds to 30.
    settings.admission.managed = None
