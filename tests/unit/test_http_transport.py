"""Which certificate the operator's HTTP API serves, which CA debug containers trust, and
which token audiences readers need: decisions from the settings alone."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest
from kubernetes import client

from memwarden.handlers.certificates import (
    CaState,
    CertificateRotation,
    http_serving_files,
    timing,
    upload_ca_file,
)
from memwarden.settings import Settings, WebhookSettings
from memwarden.webhook import certs
from memwarden_testing.tls import loopback_certificates

GIVEN_WEBHOOK = {"webhook": {"cert_file": "/w/tls.crt", "key_file": "/w/tls.key"}}
GIVEN_HTTP = {"http": {"cert_file": "/h/tls.crt", "key_file": "/h/tls.key"}}

SERVING = [
    pytest.param({"http": {"insecure": True}}, None, id="insecure-is-an-explicit-opt-out"),
    pytest.param({**GIVEN_HTTP, **GIVEN_WEBHOOK}, ("/h/tls.crt", "/h/tls.key"), id="own-files"),
]


@pytest.mark.parametrize(("fields", "expected"), SERVING)
def test_the_http_api_is_https_unless_told_otherwise(
    fields: dict[str, object], expected: tuple[str, str] | None
) -> None:
    assert http_serving_files(Settings.model_validate(fields)) == expected


def test_by_default_the_http_api_serves_the_webhooks_certificate(tmp_path: Path) -> None:
    """One Service carries both, so the webhook's names fit the HTTP API too."""
    cert, key = tmp_path / "tls.crt", tmp_path / "tls.key"
    loopback_certificates(
        ca_name="webhook-ca", ca_file=tmp_path / "ca.crt", cert_file=cert, key_file=key
    )
    settings = Settings(webhook=WebhookSettings(cert_file=str(cert), key_file=str(key)))
    assert http_serving_files(settings) == (str(cert), str(key))


UPLOAD_CA = [
    pytest.param({"evidence": {"upload_ca_file": "/ca.pem"}}, "/ca.pem", id="configured"),
    pytest.param(
        {"webhook": {"cert_dir": "/certs"}}, "/certs/ca.crt", id="self-made-certificates-their-ca"
    ),
    pytest.param(GIVEN_WEBHOOK, None, id="given-files-the-system-store-unless-configured"),
    pytest.param(GIVEN_HTTP, None, id="own-http-files"),
    pytest.param({"http": {"insecure": True}}, None, id="insecure"),
]


@pytest.mark.parametrize(("fields", "expected"), UPLOAD_CA)
def test_the_ca_debug_containers_trust(fields: dict[str, object], expected: str | None) -> None:
    assert upload_ca_file(Settings.model_validate(fields)) == expected


def test_readers_tokens_are_for_memwarden_unless_configured() -> None:
    assert Settings().evidence.token_audiences == ("memwarden",)
    env = {"MEMWARDEN_EVIDENCE_TOKEN_AUDIENCES": "memwarden, https://kubernetes.default.svc"}
    assert Settings.from_env(env).evidence.token_audiences == (
        "memwarden",
        "https://kubernetes.default.svc",
    )
    assert Settings().http.insecure is False


@pytest.mark.parametrize(
    ("fields", "seconds"),
    [
        pytest.param({}, 300, id="defaults-a-capture-length"),
        pytest.param({"webhook": {"ca_propagation_seconds": 900}}, 900, id="configured-longer"),
        pytest.param(
            {
                "webhook": {
                    "cert_validity_seconds": 20,
                    "cert_renew_before_seconds": 10,
                    "ca_propagation_seconds": 2,
                }
            },
            5,
            id="short-lived-half-renew-before",
        ),
    ],
)
def test_a_new_ca_waits_a_capture_length_before_it_signs(
    fields: dict[str, object], seconds: float
) -> None:
    """A debug container given the CA bundle just before a new CA was published must
    still trust the HTTP API when it uploads, up to the capture timeout later."""
    assert timing(Settings.model_validate(fields)).propagation == dt.timedelta(seconds=seconds)


def test_the_trust_bundle_follows_the_rotation(tmp_path: Path) -> None:
    """Clients (debug containers, Alertmanager) trust the next CA as soon as it is prepared
    and an earlier one until it expires: a certificate served a few seconds before or
    after a promotion (servers reload their files periodically) always verifies."""
    now = dt.datetime.now(dt.UTC)
    first, second = (
        certs.make_ca(common_name=name, now=now, valid_for=dt.timedelta(days=1))
        for name in ("first", "second")
    )
    expired = certs.make_ca(
        common_name="old", now=now - dt.timedelta(days=2), valid_for=dt.timedelta(days=1)
    )

    alone = CaState(current=first).wanted_trust_bundle(now)
    assert alone == first.cert_pem
    prepared = CaState(current=first, next=second, trust_bundle=alone).wanted_trust_bundle(now)
    assert prepared == first.cert_pem + second.cert_pem
    promoted = CaState(current=second, trust_bundle=prepared).wanted_trust_bundle(now)
    assert promoted == second.cert_pem + first.cert_pem, "the earlier CA stays until it expires"
    later = CaState(current=second, trust_bundle=expired.cert_pem).wanted_trust_bundle(now)
    assert later == second.cert_pem, "an expired CA leaves the bundle"

    rotation = CertificateRotation(
        Settings(webhook=WebhookSettings(cert_dir=str(tmp_path))), client.ApiClient()
    )
    rotation._write_trust_bundle(promoted)
    assert (tmp_path / "ca.crt").read_bytes() == promoted
