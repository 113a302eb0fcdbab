"""Servers that take renewed certificates without ever closing their port (the webhook's
and the HTTP API's).

A server that restarts to take a new certificate closes its port for a moment and drops
keep-alive connections: with ``failurePolicy: Ignore`` the pods created in that moment
are admitted unmutated (kopf's ``WebhookServer`` does that). The webhook server keeps one
listening socket and one ``SSLContext``, and this loads the new certificate into that
context: connections made after the reload get the new certificate, established ones
carry on.

The files may be caught half-written (key renewed, certificate not yet): a pair whose key
does not match its certificate is not loaded, and the next check tries again.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import ssl
import tempfile
from pathlib import Path

logger = logging.getLogger(__name__)


def matching_pair(cert_pem: bytes, key_pem: bytes) -> bool:
    """Whether the key belongs to the (first) certificate."""
    # Imported here: the admission worker loads this module and would pay ~16 MiB for a
    # library it needs only when a certificate is renewed.
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

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


class CertificateReloader:
    """A server ``SSLContext`` whose certificate is renewed in place (see module doc)."""

    def __init__(
        self, *, certfile: str, keyfile: str, interval: float, name: str = "webhook"
    ) -> None:
        """``name`` says whose certificate it is in logs (the webhook, the HTTP API)."""
        self.certfile, self.keyfile, self.interval = certfile, keyfile, interval
        self.name = name
        first = self._read_pair()
        if first is None:
            raise OSError(f"{name} certificate {certfile} or key {keyfile} not readable")
        self._loaded, cert_pem, key_pem = first
        self.context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._load(self.context, cert_pem=cert_pem, key_pem=key_pem)

    def _read_pair(self) -> tuple[str, bytes, bytes] | None:
        """(digest, certificate, key) as the files are now; None if one is missing."""
        try:
            cert_pem = Path(self.certfile).read_bytes()
            key_pem = Path(self.keyfile).read_bytes()
        except OSError:
            return None
        return hashlib.sha256(cert_pem + b"\0" + key_pem).hexdigest(), cert_pem, key_pem

    def reload_once(self) -> bool:
        """Load the files if they changed and match; whether a new pair was loaded."""
        current = self._read_pair()
        if current is None or current[0] == self._loaded:
            return False
        digest, cert_pem, key_pem = current
        if not matching_pair(cert_pem, key_pem):
            logger.info("%s certificate files are being replaced; retrying the reload", self.name)
            return False
        self._load(self.context, cert_pem=cert_pem, key_pem=key_pem)
        self._loaded = digest
        from cryptography import x509

        not_after = x509.load_pem_x509_certificate(cert_pem).not_valid_after_utc
        logger.info(
            "%s serving certificate reloaded in place from %s (valid until %s)",
            self.name,
            self.certfile,
            not_after.isoformat(),
        )
        return True

    async def reload_forever(self) -> None:
        """Check the files every ``interval``; file reads happen in a worker thread, off
        the event loop that serves admission."""
        while True:
            await asyncio.sleep(self.interval)
            await asyncio.to_thread(self.reload_once)

    @staticmethod
    def _load(context: ssl.SSLContext, *, cert_pem: bytes, key_pem: bytes) -> None:
        """Load the checked pair from one private file: what was checked is what is loaded."""
        fd, name = tempfile.mkstemp(prefix="webhook-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(cert_pem + b"\n" + key_pem)
            context.load_cert_chain(name)
        finally:
            os.unlink(name)


__all__ = ["CertificateReloader", "matching_pair"]
