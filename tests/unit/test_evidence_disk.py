"""Disk accounting of the evidence store: which uploads fit, and the reservations of
uploads in flight (pure: sizes in, a refusal or None out)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from memwarden.evidence.adapters.store import (
    DiskLimits,
    EvidenceStore,
    Reservations,
    admit_upload,
    default_total_cap,
)
from memwarden.settings import Settings

CAP = DiskLimits(total_bytes=1000, namespace_bytes=600)

ADMISSIONS = [
    pytest.param({}, {}, "shop", 1000, DiskLimits(1000), None, id="empty-store-fits-exactly"),
    pytest.param({}, {}, "shop", 1001, DiskLimits(1000), "is full", id="one-byte-over-the-cap"),
    pytest.param({"a": 500}, {"b": 400}, "c", 100, DiskLimits(1000), None, id="fits-beside"),
    pytest.param(
        {"a": 500}, {"b": 400}, "c", 101, DiskLimits(1000), "is full", id="in-flight-counts"
    ),
    pytest.param({}, {"b": 900}, "c", 101, DiskLimits(1000), "is full", id="reserved-only"),
    pytest.param({"shop": 500}, {}, "shop", 100, CAP, None, id="quota-fits-exactly"),
    pytest.param({"shop": 500}, {}, "shop", 101, CAP, "over its evidence quota", id="quota"),
    pytest.param(
        {"shop": 500, "bank": 500},
        {},
        "shop",
        200,
        CAP,
        "over its evidence quota",
        id="quota-named-first",
    ),
    pytest.param(
        {"shop": 300}, {"shop": 300}, "shop", 1, CAP, "over its evidence quota", id="own-inflight"
    ),
    pytest.param({"shop": 600}, {}, "bank", 400, CAP, None, id="another-namespace-still-fits"),
    pytest.param(
        {"shop": 600},
        {"bank": 300},
        "bank",
        101,
        CAP,
        "is full",
        id="another-namespace-limited-by-the-total",
    ),
]


@pytest.mark.parametrize(
    ("stored", "in_flight", "namespace", "size", "limits", "refusal"), ADMISSIONS
)
def test_admit_upload(
    stored: dict[str, int],
    in_flight: dict[str, int],
    namespace: str,
    size: int,
    limits: DiskLimits,
    refusal: str | None,
) -> None:
    why = admit_upload(
        namespace=namespace, size=size, stored=stored, in_flight=in_flight, limits=limits
    )
    if refusal is None:
        assert why is None
    else:
        assert why is not None and refusal in why
        assert str(size) in why, "the message says how much was asked"


def test_reservations_are_held_until_released() -> None:
    held = Reservations()
    first = held.hold("shop", 300)
    second = held.hold("shop", 200)
    third = held.hold("bank", 100)
    assert held.by_namespace() == {"shop": 500, "bank": 100}
    assert held.by_namespace(excluding=second) == {"shop": 300, "bank": 100}
    held.release(first)
    held.release(first)  # releasing twice is harmless (a failure path and a finally)
    held.release(third)
    assert held.by_namespace() == {"shop": 200}


def test_concurrent_uploads_cannot_together_overrun_the_cap() -> None:
    """Each upload checks the others' reservations: of three 400-byte uploads started at
    once under a 1000-byte cap, the third is refused."""
    held = Reservations()
    outcomes = []
    for namespace in ("a", "b", "c"):
        ticket = held.hold(namespace, 400)
        why = admit_upload(
            namespace=namespace,
            size=400,
            stored={},
            in_flight=held.by_namespace(excluding=ticket),
            limits=DiskLimits(1000),
        )
        if why is not None:
            held.release(ticket)
        outcomes.append(why is None)
    assert outcomes == [True, True, False]


def test_the_default_cap_is_80_percent_of_the_volume() -> None:
    assert default_total_cap(20 * 2**30) == 16 * 2**30


def test_the_operator_derives_its_caps_from_settings_and_the_volume(tmp_path: Path) -> None:
    from memwarden.handlers.http import disk_limits

    store = EvidenceStore(tmp_path)
    derived = disk_limits(
        Settings.model_validate({"evidence": {"namespace_max_bytes": "2Gi"}}), store
    )
    stats = os.statvfs(tmp_path)
    assert derived.total_bytes == int(stats.f_blocks * stats.f_frsize * 0.8)
    assert derived.namespace_bytes == 2 * 2**30
    configured = disk_limits(
        Settings.from_env({"MEMWARDEN_EVIDENCE_MAX_TOTAL_BYTES": "16Gi"}), store
    )
    assert configured == DiskLimits(total_bytes=16 * 2**30, namespace_bytes=None)


def test_an_object_store_has_no_total_cap_unless_configured() -> None:
    """A bucket has no size to take 80% of: no total cap, the namespace quota still holds."""
    from memwarden.evidence.adapters.s3store import S3Config, S3EvidenceStore
    from memwarden.handlers.http import disk_limits

    store = S3EvidenceStore(S3Config(bucket="b", endpoint_url="http://127.0.0.1:1"))
    settings = Settings.from_env(
        {
            "MEMWARDEN_EVIDENCE_BACKEND": "s3",
            "MEMWARDEN_EVIDENCE_S3_BUCKET": "b",
            "MEMWARDEN_EVIDENCE_NAMESPACE_MAX_BYTES": "1Gi",
        }
    )
    assert disk_limits(settings, store) == DiskLimits(total_bytes=None, namespace_bytes=2**30)
    limits = DiskLimits(total_bytes=None, namespace_bytes=2**30)
    assert (
        admit_upload(namespace="a", size=2**29, stored={"b": 2**40}, in_flight={}, limits=limits)
        is None
    )
    refused = admit_upload(
        namespace="a", size=2**29, stored={"a": 2**29 + 1}, in_flight={}, limits=limits
    )
    assert refused is not None and "namespace a is over its evidence quota" in refused
