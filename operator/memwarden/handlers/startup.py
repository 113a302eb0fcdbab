"""Operator start-up: kopf settings and the one settings log line."""

from __future__ import annotations

import importlib.metadata
import logging
from typing import Any

import aiohttp
import kopf

from memwarden.handlers import incidents, state
from memwarden.kube import EVENT_COMPONENT, EVENT_INSTANCE, user_agent

logger = logging.getLogger("memwarden")


class WaitsAreNotErrors(logging.Filter):
    """kopf logs every retry at ERROR, and posts it as an Error Event. A capture waiting for
    its pod to run is not an error: such retries (``incidents.WAITING``) become INFO, which
    also keeps them off the object's Events."""

    marker = f"failed temporarily: {incidents.WAITING}"

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.ERROR and self.marker in record.getMessage():
            record.levelno, record.levelname = logging.INFO, "INFO"
        return True


class RoutineSuccessIsDebug(logging.Filter):
    """kopf logs every handler run that succeeds at INFO ("Handler 'x' succeeded."): one
    line per pod event and per timer tick, hundreds a second in a large cluster, saying
    nothing. They become DEBUG; failures and memwarden's own news stay at INFO."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno == logging.INFO and record.getMessage().endswith(" succeeded."):
            if not logging.getLogger(record.name).isEnabledFor(logging.DEBUG):
                return False
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
        return True


@kopf.on.startup()
def configure(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    """Apply memwarden's settings to kopf and log them once."""
    ours = state.of(memo).settings
    if not state.served_elsewhere(memo):  # else logged at start, before the Lease
        logger.info("memwarden settings: %s", ours.for_log())
    # Keep kopf's bookkeeping under our own prefix, on our own objects only.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix="memwarden.dev")
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix="memwarden.dev", key="last-handled-configuration"
    )
    # Per-object warnings and errors become Events on the object (kopf 1.45 posts none
    # unless asked). Not INFO: kopf logs every timer run at INFO, and an Event each second
    # per policy would drown the ones that matter. memwarden's own news (status changes,
    # captures) is posted explicitly, with a reason.
    settings.posting.level = logging.WARNING
    settings.posting.loggers = True
    logging.getLogger("kopf.objects").addFilter(WaitsAreNotErrors())
    logging.getLogger("kopf.objects").addFilter(RoutineSuccessIsDebug())
    settings.posting.reporting_component = EVENT_COMPONENT
    settings.posting.reporting_instance = EVENT_INSTANCE
    settings.watching.server_timeout = 300
    # Least privilege: the CRDs are installed before the operator (chart crds/), so kopf
    # needs no list/watch on CustomResourceDefinitions to notice them at run time.
    settings.scanning.disabled = True
    # Admission is memwarden's own server (handlers/admission.py), not kopf's: kopf runs
    # no webhook server and manages no webhook configuration (it would set
    # timeoutSeconds to 30); the MutatingWebhookConfiguration is shipped by memwarden.
    settings.admission.server = None
    settings.admission.managed = None


@kopf.on.login()
async def login(**kwargs: Any) -> kopf.AiohttpSession | None:
    """kopf's own login (in-cluster ServiceAccount, else kubeconfig), in a session that
    says ``memwarden/VERSION kopf/VERSION``: the API server names the field manager of a
    write after the agent's first word, so what kopf patches (status, finalizers) is
    managed by ``memwarden``, as the adapter's writes are (``kube.FIELD_MANAGER``).

    kopf documents this way in (a custom session: its "Authentication" page) and refuses
    to start should it ever drop aiohttp, rather than silently log in without it.
    """
    info = kopf.login_via_client(**kwargs)
    if info is None:
        return None
    session = aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, ssl=info.as_ssl_context()),
        headers={
            **info.as_http_headers(),
            "User-Agent": f"{user_agent()} kopf/{importlib.metadata.version('kopf')}",
        },
        proxy=info.proxy_url,
        trust_env=info.trust_env,
    )
    return kopf.AiohttpSession(
        aiohttp_session=session,
        server=info.server,
        default_namespace=info.default_namespace,
        expiration=info.expiration,
        priority=info.priority,
    )
