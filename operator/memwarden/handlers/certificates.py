"""The webhook's own certificates: made at start, rotated before expiry, never silently expired.

Used unless ``webhook_cert_file``/``webhook_key_file`` are given (cert-manager mounts
them; the webhook server reloads them when they change). Otherwise memwarden:

- keeps its CA in a Secret of its own namespace (``webhook_ca_secret``), so replicas and
  restarts share one CA and the caBundle stays short;
- signs its own serving certificate with it into ``webhook_cert_dir`` (the webhook
  server reloads it in place, see ``webhook/tlsreload.py``);
- publishes the CA(s) in the ``webhook_configuration_name`` MutatingWebhookConfiguration,
  and keeps the bundle its clients trust (current, next, earlier CAs until they expire) in
  ``ca.crt`` beside the serving certificate and in the Secret's ``ca-bundle.crt``: the HTTP
  API serves the same certificate, debug containers and Alertmanager verify it with that;
- rotates both on a loop, as ``webhook/certrotation.py`` decides, logging each expiry.

The kubernetes client is synchronous: the loop runs each step in a worker thread.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import kopf
from kubernetes import client

from memwarden.handlers import background, state
from memwarden.kube import Conflict, Kube, KubeError, NotFound, Transient, call
from memwarden.observability import health, metrics
from memwarden.settings import Settings
from memwarden.webhook import certrotation, certs
from memwarden.webhook.certrotation import CaStep, Cert

logger = logging.getLogger(__name__)

CA_CERT, CA_KEY = "ca.crt", "ca.key"
NEXT_CERT, NEXT_KEY = "next-ca.crt", "next-ca.key"
#: The CAs a client of the HTTP API trusts (current, next, earlier ones until they expire).
#: Public; Alertmanager's configuration (the chart's AlertmanagerConfig) reads this one key.
TRUST_BUNDLE = "ca-bundle.crt"
#: When the next CA was first seen in the caBundle: it signs ``propagation`` after that.
PUBLISHED_ANNOTATION = "memwarden.dev/next-ca-published-at"
_TASK = "certificate_rotation"


def self_signed(settings: Settings) -> bool:
    """memwarden makes its certificates unless both files are given."""
    return not (settings.webhook.cert_file and settings.webhook.key_file)


def timing(settings: Settings) -> certrotation.Timing:
    """The rotation's timing. A new CA waits at least a capture's length (up to half the
    renew-before) before it signs: a debug container planned just before the new CA was
    published trusts only the current one, and must still verify the HTTP API when it
    uploads, up to ``capture_timeout_seconds`` later."""
    renew_before = settings.webhook.cert_renew_before_seconds
    propagation = max(
        settings.webhook.ca_propagation_seconds,
        min(settings.capture.timeout_seconds, renew_before / 2),
    )
    return certrotation.Timing(
        validity=dt.timedelta(seconds=settings.webhook.cert_validity_seconds),
        renew_before=dt.timedelta(seconds=renew_before),
        propagation=dt.timedelta(seconds=propagation),
    )


@dataclasses.dataclass(frozen=True)
class CaState:
    """What the CA Secret holds; ``resource_version`` None when it does not exist."""

    current: certs.KeyPair | None = None
    next: certs.KeyPair | None = None
    next_published_at: dt.datetime | None = None
    resource_version: str | None = None
    trust_bundle: bytes | None = None

    def wanted_trust_bundle(self, now: dt.datetime) -> bytes | None:
        """What a client of the HTTP API must trust through a rotation: as the caBundle,
        the current CA, the next one once prepared, and earlier ones until they expire
        (a server reloads its files a few seconds after they change)."""
        if self.current is None:
            return None
        bundle = certrotation.desired_bundle(
            current=Cert.parse(self.current.cert_pem),
            next_ca=Cert.parse(self.next.cert_pem) if self.next else None,
            published=certrotation.split_bundle(self.trust_bundle or b""),
            now=now,
        )
        return certrotation.join_bundle(bundle)


def _pair(data: dict[str, str], cert_key: str, key_key: str) -> certs.KeyPair | None:
    if cert_key not in data or key_key not in data:
        return None
    return certs.KeyPair(
        cert_pem=base64.b64decode(data[cert_key]), key_pem=base64.b64decode(data[key_key])
    )


def _write_atomically(path: Path, data: bytes, *, mode: int) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class CertificateRotation:
    """One operator's view of the CA Secret, the caBundle and its serving certificate."""

    def __init__(self, settings: Settings, api_client: client.ApiClient) -> None:
        self.settings = settings
        self.timing = timing(settings)
        self.directory = Path(settings.webhook.cert_dir)
        self.cert_path = self.directory / "tls.crt"
        self.key_path = self.directory / "tls.key"
        self._core = client.CoreV1Api(api_client)
        self._admission = client.AdmissionregistrationV1Api(api_client)
        self._missing_configuration_logged = False

    # -- the CA Secret ------------------------------------------------------------------

    def read_ca(self) -> CaState:
        name, namespace = self.settings.webhook.ca_secret, self.settings.namespace
        try:
            secret = call(
                f"read secret {namespace}/{name}",
                self._core.read_namespaced_secret,
                name,
                namespace,
            )
        except NotFound:
            return CaState()
        data = dict(secret.data or {})
        published = (secret.metadata.annotations or {}).get(PUBLISHED_ANNOTATION)
        return CaState(
            current=_pair(data, CA_CERT, CA_KEY),
            next=_pair(data, NEXT_CERT, NEXT_KEY),
            next_published_at=dt.datetime.fromisoformat(published) if published else None,
            resource_version=secret.metadata.resource_version,
            trust_bundle=base64.b64decode(data[TRUST_BUNDLE]) if TRUST_BUNDLE in data else None,
        )

    def write_ca(self, new: CaState) -> None:
        """Create or replace the Secret; ``Conflict`` when another replica wrote first."""
        name, namespace = self.settings.webhook.ca_secret, self.settings.namespace
        data: dict[str, str] = {}
        for pair, cert_key, key_key in (
            (new.current, CA_CERT, CA_KEY),
            (new.next, NEXT_CERT, NEXT_KEY),
        ):
            if pair is not None:
                data[cert_key] = base64.b64encode(pair.cert_pem).decode("ascii")
                data[key_key] = base64.b64encode(pair.key_pem).decode("ascii")
        if new.trust_bundle is not None:
            data[TRUST_BUNDLE] = base64.b64encode(new.trust_bundle).decode("ascii")
        annotations = {}
        if new.next_published_at is not None:
            annotations[PUBLISHED_ANNOTATION] = new.next_published_at.isoformat()
        body = client.V1Secret(
            metadata=client.V1ObjectMeta(
                name=name,
                namespace=namespace,
                labels={
                    "app.kubernetes.io/name": "memwarden",
                    "app.kubernetes.io/component": "webhook-ca",
                },
                annotations=annotations,
                resource_version=new.resource_version,
            ),
            type="Opaque",
            data=data,
        )
        if new.resource_version is None:
            call(
                f"create secret {namespace}/{name}",
                self._core.create_namespaced_secret,
                namespace,
                body,
            )
        else:
            call(
                f"update secret {namespace}/{name}",
                self._core.replace_namespaced_secret,
                name,
                namespace,
                body,
            )

    # -- the caBundle ---------------------------------------------------------------------

    def read_bundle(self) -> tuple[list[dict[str, Any]], tuple[Cert, ...]] | None:
        """The configuration's webhooks and the CAs they trust; None when it is missing."""
        name = self.settings.webhook.configuration_name
        try:
            configuration = call(
                f"read mutatingwebhookconfiguration {name}",
                self._admission.read_mutating_webhook_configuration,
                name,
            )
        except NotFound:
            if not self._missing_configuration_logged:
                logger.warning(
                    "MutatingWebhookConfiguration %s not found: the webhook CA is not published "
                    "(the chart creates it; set webhook_configuration_name)",
                    name,
                )
                self._missing_configuration_logged = True
            return None
        self._missing_configuration_logged = False
        webhooks: list[dict[str, Any]] = client.ApiClient().sanitize_for_serialization(  # type: ignore[no-untyped-call]
            configuration.webhooks or []
        )
        published: list[Cert] = []
        for webhook in webhooks:
            bundle = base64.b64decode(webhook.get("clientConfig", {}).get("caBundle") or "")
            for cert in certrotation.split_bundle(bundle):
                if cert.pem not in {c.pem for c in published}:
                    published.append(cert)
        return webhooks, tuple(published)

    def publish(self, webhooks: list[dict[str, Any]], bundle: tuple[Cert, ...]) -> None:
        """Set every webhook's caBundle; a JSON patch that fails if the list changed meanwhile."""
        encoded = base64.b64encode(certrotation.join_bundle(bundle)).decode("ascii")
        ops: list[dict[str, Any]] = []
        for index, webhook in enumerate(webhooks):
            ops.append({"op": "test", "path": f"/webhooks/{index}/name", "value": webhook["name"]})
            ops.append(
                {"op": "add", "path": f"/webhooks/{index}/clientConfig/caBundle", "value": encoded}
            )
        name = self.settings.webhook.configuration_name
        call(
            f"patch mutatingwebhookconfiguration {name}",
            self._admission.patch_mutating_webhook_configuration,
            name,
            ops,
            _content_type="application/json-patch+json",
        )

    # -- one step -------------------------------------------------------------------------

    def step(self, now: dt.datetime) -> None:
        """Advance the rotation by one step: CA, then caBundle, then serving certificate."""
        ca = self._publish(self._advance_ca(self.read_ca(), now), now)
        if ca.current is None:
            raise Transient("the webhook CA Secret has no CA; retrying")
        self._renew_leaf(ca.current, now)
        bundle = ca.wanted_trust_bundle(now)
        assert bundle is not None
        self._write_trust_bundle(bundle)
        if ca.trust_bundle != bundle:
            try:
                self.write_ca(dataclasses.replace(ca, trust_bundle=bundle))
            except Conflict:
                logger.info("webhook CA changed by another replica; trust bundle next time")

    def _write_trust_bundle(self, bundle: bytes) -> None:
        """``ca.crt`` beside the serving certificate: what debug containers are given to
        trust (see :meth:`CaState.wanted_trust_bundle`)."""
        path = self.directory / "ca.crt"
        if not path.exists() or path.read_bytes() != bundle:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            _write_atomically(path, bundle, mode=0o644)

    def _advance_ca(self, ca: CaState, now: dt.datetime) -> CaState:
        current = certrotation.Cert.parse(ca.current.cert_pem) if ca.current else None
        next_ca = certrotation.Cert.parse(ca.next.cert_pem) if ca.next else None
        decision = certrotation.ca_step(
            current=current,
            next_ca=next_ca,
            next_published_at=ca.next_published_at,
            now=now,
            timing=self.timing,
        )
        if decision is CaStep.KEEP:
            return ca
        if decision is CaStep.REPLACE:
            new = CaState(
                current=self._make_ca(now),
                resource_version=ca.resource_version,
                trust_bundle=ca.trust_bundle,
            )
        elif decision is CaStep.PREPARE:
            new = dataclasses.replace(ca, next=self._make_ca(now), next_published_at=None)
        else:  # PROMOTE
            new = CaState(
                current=ca.next,
                resource_version=ca.resource_version,
                trust_bundle=ca.trust_bundle,
            )
        try:
            self.write_ca(new)
        except Conflict:
            logger.info("webhook CA changed by another replica; using theirs")
            return self._must_read()
        assert new.current is not None
        logger.info(
            "webhook CA %s: current %s%s",
            decision.value,
            certrotation.describe_expiry(
                certrotation.Cert.parse(new.current.cert_pem), now=now, timing=self.timing
            ),
            "; next CA published, signs after propagation" if new.next else "",
        )
        metrics.WEBHOOK_CA_ROTATIONS.labels(step=decision.value).inc()
        return self._must_read()

    def _must_read(self) -> CaState:
        ca = self.read_ca()
        if ca.current is None:
            raise Transient("the webhook CA Secret vanished; retrying")
        return ca

    def _make_ca(self, now: dt.datetime) -> certs.KeyPair:
        return certs.make_ca(
            common_name=f"memwarden-webhook-ca-{int(now.timestamp())}",
            now=now,
            valid_for=self.timing.validity,
        )

    def _publish(self, ca: CaState, now: dt.datetime) -> CaState:
        assert ca.current is not None
        current = certrotation.Cert.parse(ca.current.cert_pem)
        next_ca = certrotation.Cert.parse(ca.next.cert_pem) if ca.next else None
        found = self.read_bundle()
        if found is not None:
            webhooks, published = found
            wanted = certrotation.desired_bundle(
                current=current, next_ca=next_ca, published=published, now=now
            )
            if [c.pem for c in wanted] != [c.pem for c in published]:
                self.publish(webhooks, wanted)
                logger.info(
                    "caBundle of %s: %s",
                    self.settings.webhook.configuration_name,
                    ", ".join(f"{c.subject} (until {c.not_after.isoformat()})" for c in wanted),
                )
        if ca.next is not None and ca.next_published_at is None:
            # Published now (or no configuration to publish in: nothing to wait for).
            updated = dataclasses.replace(ca, next_published_at=now)
            try:
                self.write_ca(updated)
            except Conflict:
                return self._must_read()
            return self._must_read()
        return ca

    def _renew_leaf(self, ca: certs.KeyPair, now: dt.datetime) -> None:
        leaf: Cert | None = None
        signed = False
        if self.cert_path.exists() and self.key_path.exists():
            try:
                leaf = Cert.parse(self.cert_path.read_bytes())
                signed = certrotation.signed_by(leaf.pem, ca.cert_pem)
            except ValueError:
                leaf = None
        ca_cert = Cert.parse(ca.cert_pem)
        why = certrotation.leaf_due(
            leaf=leaf, signed_by_current=signed, current_ca=ca_cert, now=now, timing=self.timing
        )
        if why is None:
            assert leaf is not None
            _record_expiry(leaf.not_after)
            return
        service = f"{self.settings.webhook.service_name}.{self.settings.namespace}"
        new = certs.issue(
            ca=ca,
            # The names that matter are the SANs; a CN is at most 64 characters.
            common_name=self.settings.webhook.service_name[:64],
            now=now,
            valid_for=certrotation.leaf_validity(ca=ca_cert, now=now, timing=self.timing),
            server_names=(
                service,
                f"{service}.svc",
                f"{service}.svc.cluster.local",
                "127.0.0.1",
                "localhost",
            ),
        )
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        # Key first: the server loads a pair only once the key matches the certificate.
        _write_atomically(self.key_path, new.key_pem, mode=0o600)
        _write_atomically(self.cert_path, new.cert_pem, mode=0o644)
        _record_expiry(new.not_after)
        logger.info(
            "webhook serving certificate renewed (%s): %s",
            why,
            certrotation.describe_expiry(Cert.parse(new.cert_pem), now=now, timing=self.timing),
        )


def _record_expiry(not_after: dt.datetime) -> None:
    metrics.WEBHOOK_CERT_EXPIRY.set(not_after.timestamp())
    health.record_certificate(not_after.timestamp())


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def serving_files(settings: Settings, kube: Kube | None = None) -> tuple[str, str]:
    """The webhook's certificate and key files, ready before the server starts.

    Self-made: one rotation step now (CA Secret, caBundle, serving certificate), so the
    server starts with a certificate the API server can verify. Given files: logged with
    their expiry, and reloaded by the server when they change. ``kube`` (the operator
    state's adapter) is needed only for self-made certificates.
    """
    if not self_signed(settings):
        assert settings.webhook.cert_file and settings.webhook.key_file
        cert = Cert.parse(Path(settings.webhook.cert_file).read_bytes())
        _record_expiry(cert.not_after)
        logger.info(
            "webhook serving certificate %s (given, renewed by its issuer): valid until %s",
            settings.webhook.cert_file,
            cert.not_after.isoformat(),
        )
        return settings.webhook.cert_file, settings.webhook.key_file
    if kube is None:
        raise ValueError("self-made webhook certificates need the Kubernetes adapter")
    rotation = CertificateRotation(settings, kube.api_client)
    try:
        rotation.step(_now())
    except KubeError as exc:
        raise kopf.TemporaryError(f"webhook certificates: {exc}", delay=5) from exc
    cert = Cert.parse(rotation.cert_path.read_bytes())
    logger.info(
        "webhook serving certificate %s (self-made, rotated by memwarden): %s",
        rotation.cert_path,
        certrotation.describe_expiry(cert, now=_now(), timing=rotation.timing),
    )
    return str(rotation.cert_path), str(rotation.key_path)


def http_serving_files(settings: Settings, kube: Kube | None = None) -> tuple[str, str] | None:
    """The HTTP API's certificate and key, or None for plain HTTP (``http_insecure``).

    Its own files when given; else the webhook's (the Service names both), made first if
    memwarden makes them. Either way the server reloads them in place."""
    if settings.http.insecure:
        return None
    if settings.http.cert_file and settings.http.key_file:
        return settings.http.cert_file, settings.http.key_file
    return serving_files(settings, kube)


def upload_ca_file(settings: Settings) -> str | None:
    """The CA bundle debug containers trust for uploads: configured, else the rotation's
    trust bundle when the HTTP API serves the self-made certificate."""
    if settings.evidence.upload_ca_file:
        return settings.evidence.upload_ca_file
    if settings.http.insecure or settings.http.cert_file or not self_signed(settings):
        return None
    return str(Path(settings.webhook.cert_dir) / "ca.crt")


async def _rotate_forever(rotation: CertificateRotation, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await asyncio.to_thread(rotation.step, _now())
        except KubeError as exc:
            # Renewal starts renew_before ahead of expiry: retried each interval till then.
            logger.warning(
                "webhook certificate rotation failed, retrying in %ss: %s", interval, exc
            )
        except Exception:  # A bug in one step must not end rotation for good: log, retry.
            logger.exception("webhook certificate rotation failed, retrying in %ss", interval)


@kopf.on.startup()
async def start_rotation(memo: kopf.Memo, **_: Any) -> None:
    """Rotate self-made certificates in the background; nothing to do for given ones.

    Under leader election every replica's serving part rotates (not kopf, which runs on
    the leader only): each replica renews its own serving certificate, and the shared CA
    Secret and caBundle are written at a resourceVersion, so replicas never clash."""
    if state.served_elsewhere(memo):
        return
    shared = state.of(memo)
    settings = shared.settings
    if not self_signed(settings):
        return
    rotation = CertificateRotation(settings, shared.kube.api_client)
    memo[_TASK] = asyncio.create_task(
        _rotate_forever(rotation, settings.webhook.cert_check_seconds),
        name="webhook certificate rotation",
    )


@kopf.on.cleanup()
async def stop_rotation(memo: kopf.Memo, **_: Any) -> None:
    await background.stop(memo, _TASK)
