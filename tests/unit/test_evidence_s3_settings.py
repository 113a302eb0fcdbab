"""The S3 store's pure parts: its settings, and the keys it builds (no server here; the
store against a real S3 server is tests/integration/test_evidence_s3.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from memwarden.evidence.adapters.s3store import S3Config, S3EvidenceStore
from memwarden.evidence.adapters.store import EvidenceStore, InvalidName
from memwarden.settings import Settings


def _store(prefix: str = "memwarden/") -> S3EvidenceStore:
    # No request is made until a method is called: the endpoint need not exist.
    return S3EvidenceStore(S3Config(bucket="b", endpoint_url="http://127.0.0.1:1", prefix=prefix))


def test_the_s3_backend_needs_a_bucket_and_names_the_field() -> None:
    with pytest.raises(ValidationError, match=r"evidence\.s3_bucket is required"):
        Settings.from_env({"MEMWARDEN_EVIDENCE_BACKEND": "s3"})
    settings = Settings.from_env(
        {
            "MEMWARDEN_EVIDENCE_BACKEND": "s3",
            "MEMWARDEN_EVIDENCE_S3_BUCKET": "evidence",
            "MEMWARDEN_EVIDENCE_S3_PART_BYTES": "16Mi",
        }
    )
    assert (settings.evidence.s3_bucket, settings.evidence.s3_part_bytes) == ("evidence", 2**24)
    assert Settings.from_env({}).evidence.backend == "pvc", "the PVC stays the default"


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MEMWARDEN_EVIDENCE_S3_PREFIX": "memwarden"}, "s3_prefix must end with '/'"),
        ({"MEMWARDEN_EVIDENCE_S3_ENDPOINT_URL": "minio:9000"}, "s3_endpoint_url must be"),
        ({"MEMWARDEN_EVIDENCE_S3_ENDPOINT_URL": "https://m/bucket"}, "s3_endpoint_url must be"),
        ({"MEMWARDEN_EVIDENCE_S3_PART_BYTES": "1Mi"}, "s3_part_bytes"),
        ({"MEMWARDEN_EVIDENCE_S3_ADDRESSING_STYLE": "sideways"}, "s3_addressing_style"),
        ({"MEMWARDEN_EVIDENCE_BACKEND": "nfs"}, "backend"),
    ],
)
def test_bad_s3_settings_are_refused_naming_the_field(env: dict[str, str], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        Settings.from_env({"MEMWARDEN_EVIDENCE_S3_BUCKET": "b", **env})


def test_a_part_smaller_than_s3_allows_is_refused() -> None:
    with pytest.raises(ValueError, match="at least"):
        S3EvidenceStore(S3Config(bucket="b", part_bytes=2**20))


@pytest.mark.parametrize(
    ("namespace", "incident", "name"),
    [
        ("shop", "../other/x", "meta.json"),
        ("shop/../other", "x", "meta.json"),
        ("..", "x", "meta.json"),
        ("shop", "x/meta.json", "meta.json"),
        ("Shop", "x", "meta.json"),
        ("shop", "x", "../../other/x/meta.json"),
        ("shop", "x", "bundle-zz.tar.gz"),
        ("shop", "", "meta.json"),
    ],
)
def test_keys_come_from_validated_names_only(namespace: str, incident: str, name: str) -> None:
    """No name reaches a key unless it is a Kubernetes name (no ``/``, no ``..``), and the
    object's own name is one of the store's two shapes: a tenant cannot point the store
    at another namespace's objects."""
    with pytest.raises(InvalidName):
        _store().key(namespace, incident, name)


def test_keys_and_their_parsing_agree() -> None:
    store = _store("team-a/memwarden/")
    key = store.key("shop", "checkout-1.oom", "bundle-0123456789abcdef.tar.gz")
    assert key == "team-a/memwarden/shop/checkout-1.oom/bundle-0123456789abcdef.tar.gz"
    assert store._parse(key) == ("shop", "checkout-1.oom", "bundle-0123456789abcdef.tar.gz")
    for foreign in (
        "other/shop/x/meta.json",  # outside the prefix: a shared bucket's other objects
        "team-a/memwarden/shop/x/y/meta.json",
        "team-a/memwarden/shop/x/notes.txt",
        "team-a/memwarden/../x/meta.json",
    ):
        assert store._parse(foreign) is None, foreign


@pytest.mark.parametrize("seconds", ["0", "61", "3600"])
def test_presigned_urls_live_a_minute_at_most(seconds: str) -> None:
    """A presigned URL is a bearer credential: the setting refuses more than 60 s."""
    with pytest.raises(ValidationError, match="s3_presign_downloads_seconds"):
        Settings.from_env(
            {
                "MEMWARDEN_EVIDENCE_S3_BUCKET": "b",
                "MEMWARDEN_EVIDENCE_S3_PRESIGN_DOWNLOADS_SECONDS": seconds,
            }
        )
    with pytest.raises(ValueError, match="between 1 and 60"):
        S3EvidenceStore(S3Config(bucket="b", presign_seconds=int(seconds)))


def test_the_pvc_store_never_redirects(tmp_path: Path) -> None:
    assert EvidenceStore(tmp_path).download_url("shop", "x") is None
