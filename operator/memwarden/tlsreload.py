"""The webhook server that takes renewed certificates without ever closing its port.

kopf's ``WebhookServer`` notices changed certificate files (every ``file_check_interval``)
by stopping its server and starting a new one. Between the two the port is closed and
keep-alive connections are dropped: with ``failurePolicy: Ignore`` the pods created in
that moment are admitted unmutated. This server keeps one listening socket and one
``SSLContext`` and loads the new certificate into that context: connections made after
the reload get the new certificate, established ones carry on.

The files may be caught half-written (key renewed, certificate not yet): a pair whose key
does not match its certificate is not loaded, and the next check tries again.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import logging
import os
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp.web
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from kopf._cogs.structs import reviews  # WebhookClientConfig, what kopf expects back

from memwarden.webhook import StrictWebhookServer

logger = logging.getLogger(__name__)


def matching_pair(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the key belongs to the (first) certificate."""
    try:
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
    except ValueError:
        return False
    spki = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    return bool(
        cert.public_key().public_bytes(der, spki) == key.public_key().public_bytes(der, spki)
    )


class ReloadingWebhookServer(StrictWebhookServer):
    """``StrictWebhookServer`` whose certificate is renewed in place (see module doc)."""

    async def __call__(self, fn: Any) -> AsyncIterator[reviews.WebhookClientConfig]:
        async def _serve_fn(request: aiohttp.web.Request) -> aiohttp.web.Response:
            return await self._serve(fn, request)

        cadata, context = self._build_ssl()
        path = self.path.rstrip("/") if self.path else ""
        app = aiohttp.web.Application()
        app.add_routes([aiohttp.web.post(f"{path}/{{id:.*}}", _serve_fn)])
        runner = aiohttp.web.AppRunner(app, handle_signals=False, access_log=None)
        await runner.setup()
        try:
            addr = self.addr or None
            port = self.port or self._allocate_free_port()
            site = aiohttp.web.TCPSite(runner, addr, port, ssl_context=context, reuse_address=True)
            await site.start()
            schema = "http" if context is None else "https"
            host = self.host or self.DEFAULT_HOST or self._get_accessible_addr(self.addr)
            client_config = reviews.WebhookClientConfig(
                url=self._build_url(schema, host, port, self.path or "")
            )
            if cadata is not None:
                client_config["caBundle"] = base64.b64encode(cadata).decode("ascii")
            yield client_config
            await self._reload_forever(context)
        finally:
            await runner.cleanup()

    def _read_pair(self) -> tuple[str, bytes, bytes] | None:
        """(digest, certificate, key) as the files are now; None if one is missing."""
        if self.certfile is None or self.pkeyfile is None:
            return None
        try:
            cert_pem = Path(self.certfile).read_bytes()
            key_pem = Path(self.pkeyfile).read_bytes()
        except OSError:
            return None
        return hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest(), cert_pem, key_pem

    async def _reload_forever(self, context: Any) -> None:
        first = self._read_pair()
        if context is None or first is None:
            await asyncio.Event().wait()  # plain HTTP (tests): nothing to reload, ever
            return
        loaded = first[0]
        while True:
            await asyncio.sleep(self.file_check_interval)
            current = self._read_pair()
            if current is None or current[0] == loaded:
                continue
            digest, cert_pem, key_pem = current
            if not matching_pair(cert_pem, key_pem):
                logger.info("webhook certificate files are being replaced; retrying the reload")
                continue
            self._load(context, cert_pem=cert_pem, key_pem=key_pem)
            loaded = digest
            not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
            logger.info(
                "webhook serving certificate reloaded in place from %s (valid until %s)",
                self.certfile,
                not_after.isoformat(),
            )

    @staticmethod
    def _load(context: Any, *, cert_pem: bytes, key_pem: bytes) -> None:
        """Load the checked pair from one private file: what was checked is what is loaded."""
        fd, name = tempfile.mkstemp(prefix="webhook-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(cert_pem + b"\n" + key_pem)
            context.load_cert_chain(name)
        finally:
            os.unlink(name)


__all__ = ["ReloadingWebhookServer", "matching_pair"]
