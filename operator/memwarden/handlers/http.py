"""The operator's HTTP API: one aiohttp server, sub-apps mounted under prefixes.

Started by an ``on.startup`` handler on ``settings.http.host:port`` and stopped by
``on.cleanup``. HTTPS unless ``http_insecure`` (an explicit opt-out), since bearer tokens,
upload tokens and core dumps cross it: with its own certificate files, else the webhook's
(self-made and rotated, or cert-manager's), reloaded in place as the webhook's are
(``webhook/tlsreload.py``). It shares kopf's event loop, so every sub-app must keep requests short
and push slow work (Kubernetes calls) to queues or threads: the admission webhook runs on
this loop too.

Mounted today: ``/metrics`` (memwarden's own registry), ``/healthz`` and ``/readyz``
(``observability/health.py``), and the Alertmanager receiver at
``/alertmanager`` (when ``alertmanager_token_file`` is set). Further sub-apps (the
evidence API) are added in :func:`operator_subapps`.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import ssl
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import kopf
import prometheus_client
from aiohttp import web

from memwarden.capture import incident as lifecycle
from memwarden.evidence.adapters.api import LiveIncident, make_evidence_app
from memwarden.evidence.adapters.auth import KubeAuthorizer
from memwarden.evidence.adapters.store import (
    BundleStore,
    DiskLimits,
    EvidenceStore,
    default_total_cap,
    volume_bytes,
)
from memwarden.handlers import alerts, background, certificates, incidents, state
from memwarden.handlers.risk import open_incidents
from memwarden.handlers.state import OperatorState
from memwarden.httpbody import SERVER_OPTIONS
from memwarden.kube import NotFound
from memwarden.observability import health, metrics
from memwarden.risk.adapters import receiver
from memwarden.settings import Settings
from memwarden.webhook.tlsreload import CertificateReloader

logger = logging.getLogger(__name__)

_RUNNER = "http_runner"
_INTAKE = "alert_intake"
_RELOAD = "http_certificate_reload"


def build_operator_app(subapps: Mapping[str, web.Application]) -> web.Application:
    """One application serving each sub-app under its prefix (``/alertmanager``...)."""
    root = web.Application()
    for prefix, app in subapps.items():
        root.add_subapp(prefix, app)
    return root


def metrics_app() -> web.Application:
    """``GET /metrics`` (mounted at ``/metrics``): memwarden's registry, text format."""

    async def serve(_: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(metrics.REGISTRY),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    app = web.Application()
    app.router.add_get("", serve)
    return app


def _certificates(shared: OperatorState) -> CertificateReloader | None:
    """The HTTP API's TLS, reloaded in place; None only when ``http.insecure``."""
    settings = shared.settings
    files = certificates.http_serving_files(settings, shared.kube)
    if files is None:
        return None
    return CertificateReloader(
        certfile=files[0],
        keyfile=files[1],
        interval=settings.webhook.file_check_seconds,
        name="HTTP API",
    )


def operator_subapps(
    shared: OperatorState, *, intake: alerts.Intake | None
) -> dict[str, web.Application]:
    """The sub-apps this operator serves, by prefix, as the settings enable them."""
    settings = shared.settings
    subapps: dict[str, web.Application] = {"/metrics": metrics_app(), **health.subapps()}
    if intake is not None and settings.http.alertmanager_token_file:
        subapps[receiver.PREFIX] = receiver.make_alertmanager_app(
            token=receiver.TokenFile(Path(settings.http.alertmanager_token_file)),
            on_findings=intake.submit,
            on_batch=intake.count_batch,
        )
    subapps["/evidence"] = evidence_app(shared)
    return subapps


def evidence_app(shared: OperatorState) -> web.Application:
    """The evidence API: uploads from debug containers, downloads for authorised users."""
    settings, evidence, kube = shared.settings, shared.evidence, shared.kube

    def incident(namespace: str, name: str) -> LiveIncident | None:
        try:
            obj = kube.get(incidents.INCIDENTS, namespace=namespace, name=name)
        except NotFound:
            return None
        uid = str((obj.get("metadata") or {}).get("uid") or "")
        if not uid:
            return None
        return LiveIncident(
            uid=uid,
            phase=(obj.get("status") or {}).get("phase"),
            pod=(obj.get("spec") or {}).get("pod"),
        )

    def pod_addresses(namespace: str, pod: str) -> frozenset[str]:
        try:
            return lifecycle.pod_ips(kube.read_pod(namespace=namespace, name=pod))
        except NotFound:
            return frozenset()

    return make_evidence_app(
        disk=disk_limits(settings, evidence.store),
        store=evidence.store,
        authorizer=KubeAuthorizer(kube.api_client, audiences=settings.evidence.token_audiences),
        upload_key=evidence.upload_key,
        max_bundle_bytes=settings.evidence.max_bundle_bytes,
        incident=incident,
        pod_addresses=pod_addresses if settings.evidence.upload_source_check else None,
        on_stored=functools.partial(incidents.on_stored, shared),
    )


def disk_limits(settings: Settings, store: BundleStore) -> DiskLimits:
    """The caps uploads must fit under: configured, else from the volume's size (a PVC);
    an object store has no size, so no total cap unless configured."""
    total = settings.evidence.max_total_bytes
    if total is None and isinstance(store, EvidenceStore):
        volume = volume_bytes(store.root)
        total = default_total_cap(volume)
        logger.info("evidence store cap: %d bytes (80%% of the %d-byte volume)", total, volume)
    return DiskLimits(total_bytes=total, namespace_bytes=settings.evidence.namespace_max_bytes)


@kopf.on.startup()
async def start_http(memo: kopf.Memo, **kwargs: Any) -> None:
    """Start the alert intake and the HTTP server; stop the operator if it cannot listen.

    Under leader election the serving part runs the server on every replica
    (``handlers/serving.py``); kopf, on the leader, only starts the intake and hands it
    to the receiver there (``alerts.LeaderIntake``)."""
    shared = state.of(memo)
    settings = shared.settings
    intake: alerts.AlertIntake | None = None
    if settings.http.alertmanager_token_file:
        intake = alerts.AlertIntake(
            policy_index=kwargs["policy_index"],
            pod_index=shared.pods,
            open_for_policy=functools.partial(
                open_incidents, shared, incident_index=kwargs["incident_index"]
            ),
        )
    elif not state.served_elsewhere(memo):
        logger.info("alertmanager receiver off: alertmanager_token_file is not set")
    if state.served_elsewhere(memo):
        if intake is not None:
            intake.start()
            memo[_INTAKE] = intake
            alerts.leader_intake(memo).attach(intake)
        return
    await serve(memo, intake=intake)


async def serve(memo: kopf.Memo, *, intake: alerts.Intake | None) -> None:
    """The HTTP server (and ``intake``'s consumer), its runner and tasks kept in ``memo``."""
    shared = state.of(memo)
    settings = shared.settings
    try:
        reloader = await asyncio.to_thread(_certificates, shared)
    except (OSError, ssl.SSLError) as exc:
        raise kopf.PermanentError(f"HTTP API certificate not loaded: {exc}") from exc
    tls = reloader.context if reloader is not None else None
    subapps = operator_subapps(shared, intake=intake)
    runner = web.AppRunner(
        build_operator_app(subapps), access_log=None, handle_signals=False, **SERVER_OPTIONS
    )
    await runner.setup()
    site = web.TCPSite(runner, settings.http.host, settings.http.port, ssl_context=tls)
    try:
        await site.start()
    except OSError as exc:  # a port in use will not free itself: say so and stop
        await runner.cleanup()
        raise kopf.PermanentError(
            f"HTTP API cannot listen on {settings.http.host}:{settings.http.port}: {exc}"
        ) from exc
    memo[_RUNNER] = runner
    if reloader is not None:
        background.start(memo, _RELOAD, reloader.reload_forever())
    else:
        logger.warning(
            "HTTP API in plain HTTP (http_insecure): tokens and bundles cross it in clear"
        )
    if intake is not None:
        intake.start()
        memo[_INTAKE] = intake
    logger.info(
        "HTTP API on %s://%s:%s serving %s",
        "https" if tls else "http",
        settings.http.host,
        settings.http.port,
        ", ".join(sorted(subapps)),
    )


@kopf.on.cleanup()
async def stop_http(memo: kopf.Memo, **_: Any) -> None:
    """Stop accepting requests first, then the intake (pending findings are dropped:
    Alertmanager re-sends firing alerts every repeat_interval)."""
    await background.stop(memo, _RELOAD)
    runner: web.AppRunner | None = memo.get(_RUNNER)
    if runner is not None:
        await runner.cleanup()
    intake: alerts.Intake | None = memo.get(_INTAKE)
    if intake is not None:
        await intake.stop()
