"""certrotation.py: when to rotate the webhook's CA and serving certificate, and the caBundle."""

from __future__ import annotations

import datetime as dt

import pytest

from memwarden.webhook import certrotation, certs
from memwarden.webhook.certrotation import CaStep, Cert, Timing
from memwarden.webhook.tlsreload import matching_pair

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
DAY = dt.timedelta(days=1)
TIMING = Timing(validity=90 * DAY, renew_before=30 * DAY, propagation=dt.timedelta(minutes=1))


def fake(not_after: dt.datetime, name: str = "ca") -> Cert:
    """A Cert with only the fields the decisions read (no key generation)."""
    return Cert(
        pem=name.encode(), not_before=T0 - 90 * DAY, not_after=not_after, subject=f"CN={name}"
    )


@pytest.mark.parametrize(
    ("validity", "renew_before", "propagation", "message"),
    [
        pytest.param(90, 90, 0, "shorter than the validity", id="renew-before-equals-validity"),
        pytest.param(90, 0, 0, "must be positive", id="no-renew-before"),
        pytest.param(90, 30, 30, "propagation", id="propagation-as-long-as-renew-before"),
        pytest.param(0, 0, 0, "validity must be positive", id="no-validity"),
    ],
)
def test_timing_refuses_settings_that_would_let_a_certificate_expire(
    validity: int, renew_before: int, propagation: int, message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        Timing(
            validity=validity * DAY,
            renew_before=renew_before * DAY,
            propagation=propagation * DAY,
        )


@pytest.mark.parametrize(
    ("current", "next_ca", "published_at", "expected"),
    [
        pytest.param(None, None, None, CaStep.REPLACE, id="no-ca-yet"),
        pytest.param(T0 + 60 * DAY, None, None, CaStep.KEEP, id="fresh"),
        pytest.param(
            T0 + 30 * DAY + dt.timedelta(seconds=1),
            None,
            None,
            CaStep.KEEP,
            id="just-before-renewal",
        ),
        pytest.param(T0 + 30 * DAY, None, None, CaStep.PREPARE, id="renewal-starts"),
        pytest.param(T0 + 29 * DAY, T0 + 89 * DAY, None, CaStep.KEEP, id="next-not-yet-published"),
        pytest.param(
            T0 + 29 * DAY,
            T0 + 89 * DAY,
            T0 - dt.timedelta(seconds=30),
            CaStep.KEEP,
            id="propagating",
        ),
        pytest.param(
            T0 + 29 * DAY,
            T0 + 89 * DAY,
            T0 - dt.timedelta(minutes=1),
            CaStep.PROMOTE,
            id="propagated",
        ),
        pytest.param(T0, None, None, CaStep.REPLACE, id="expired-without-successor"),
        pytest.param(
            T0 - DAY, T0 + 89 * DAY, None, CaStep.PROMOTE, id="expired-successor-unpublished"
        ),
    ],
)
def test_ca_step(
    current: dt.datetime | None,
    next_ca: dt.datetime | None,
    published_at: dt.datetime | None,
    expected: CaStep,
) -> None:
    step = certrotation.ca_step(
        current=None if current is None else fake(current),
        next_ca=None if next_ca is None else fake(next_ca, "next"),
        next_published_at=published_at,
        now=T0,
        timing=TIMING,
    )
    assert step is expected


@pytest.mark.parametrize(
    ("leaf", "signed", "ca", "reason"),
    [
        pytest.param(None, False, T0 + 80 * DAY, "no serving certificate", id="missing"),
        pytest.param(
            T0 + 80 * DAY, False, T0 + 80 * DAY, "not signed by the current CA", id="old-ca"
        ),
        pytest.param(T0 + 80 * DAY, True, T0 + 80 * DAY, None, id="fresh"),
        pytest.param(
            T0 + 20 * DAY, True, T0 + 80 * DAY, "expires within", id="due-ca-can-do-better"
        ),
        pytest.param(T0 + 20 * DAY, True, T0 + 20 * DAY, None, id="due-but-ca-rotation-renews-it"),
        pytest.param(T0, True, T0 + 80 * DAY, "expired", id="expired"),
    ],
)
def test_leaf_due(
    leaf: dt.datetime | None, signed: bool, ca: dt.datetime, reason: str | None
) -> None:
    why = certrotation.leaf_due(
        leaf=None if leaf is None else fake(leaf, "leaf"),
        signed_by_current=signed,
        current_ca=fake(ca),
        now=T0,
        timing=TIMING,
    )
    if reason is None:
        assert why is None
    else:
        assert why is not None and reason in why


def test_bundle_keeps_earlier_cas_until_they_expire_current_first() -> None:
    current, nxt = fake(T0 + 60 * DAY, "current"), fake(T0 + 89 * DAY, "next")
    old, expired = fake(T0 + DAY, "old"), fake(T0, "expired")
    bundle = certrotation.desired_bundle(
        current=current, next_ca=nxt, published=[old, current, expired], now=T0
    )
    assert [c.subject for c in bundle] == ["CN=current", "CN=next", "CN=old"]


def test_leaf_never_outlives_its_ca() -> None:
    ca = fake(T0 + 10 * DAY)
    assert certrotation.leaf_validity(ca=ca, now=T0, timing=TIMING) == 10 * DAY
    assert certrotation.leaf_validity(ca=fake(T0 + 900 * DAY), now=T0, timing=TIMING) == 90 * DAY


def test_real_certificates_bundle_round_trip_and_signatures() -> None:
    one = certs.make_ca(common_name="ca-1", now=T0, valid_for=90 * DAY)
    two = certs.make_ca(common_name="ca-2", now=T0, valid_for=90 * DAY)
    leaf = certs.issue(
        ca=two, common_name="svc", now=T0, valid_for=DAY, server_names=("svc.ns.svc",)
    )
    bundle = certrotation.join_bundle([Cert.parse(one.cert_pem), Cert.parse(two.cert_pem)])
    assert [c.subject for c in certrotation.split_bundle(bundle)] == ["CN=ca-1", "CN=ca-2"]
    assert certrotation.split_bundle(b"") == ()
    assert certrotation.signed_by(leaf.cert_pem, two.cert_pem)
    assert not certrotation.signed_by(leaf.cert_pem, one.cert_pem)
    assert matching_pair(leaf.cert_pem, leaf.key_pem)
    assert not matching_pair(leaf.cert_pem, one.key_pem)  # a half-written rotation


def test_a_rotation_timeline_never_serves_a_certificate_the_api_server_cannot_verify() -> None:
    """Drive the decisions second by second through several rotations, as the handler
    does (CA step, publish, serving certificate), with an API server that sees each
    caBundle one second late and a server that reloads files one second late."""
    timing = Timing(
        validity=dt.timedelta(seconds=20),
        renew_before=dt.timedelta(seconds=10),
        propagation=dt.timedelta(seconds=2),
    )
    current: certs.KeyPair | None = None
    nxt: certs.KeyPair | None = None
    published_at: dt.datetime | None = None
    bundles: list[tuple[Cert, ...]] = [()]
    leaves: list[certs.KeyPair | None] = [None]
    rotations = 0
    for second in range(75):
        now = T0 + dt.timedelta(seconds=second)
        step = certrotation.ca_step(
            current=None if current is None else Cert.parse(current.cert_pem),
            next_ca=None if nxt is None else Cert.parse(nxt.cert_pem),
            next_published_at=published_at,
            now=now,
            timing=timing,
        )
        if step is CaStep.REPLACE:
            current = certs.make_ca(common_name=f"ca-{second}", now=now, valid_for=timing.validity)
        elif step is CaStep.PREPARE:
            nxt, published_at = (
                certs.make_ca(common_name=f"ca-{second}", now=now, valid_for=timing.validity),
                None,
            )
        elif step is CaStep.PROMOTE:
            current, nxt, published_at, rotations = nxt, None, None, rotations + 1
        assert current is not None
        ca = Cert.parse(current.cert_pem)
        bundle = certrotation.desired_bundle(
            current=ca,
            next_ca=None if nxt is None else Cert.parse(nxt.cert_pem),
            published=bundles[-1],
            now=now,
        )
        bundles.append(bundle)
        if nxt is not None and published_at is None:
            published_at = now
        leaf = leaves[-1]
        why = certrotation.leaf_due(
            leaf=None if leaf is None else Cert.parse(leaf.cert_pem),
            signed_by_current=leaf is not None
            and certrotation.signed_by(leaf.cert_pem, current.cert_pem),
            current_ca=ca,
            now=now,
            timing=timing,
        )
        if why is not None:
            leaf = certs.issue(
                ca=current,
                common_name="svc",
                now=now,
                valid_for=certrotation.leaf_validity(ca=ca, now=now, timing=timing),
                server_names=("127.0.0.1",),
            )
        leaves.append(leaf)
        if second < 2:
            continue  # first install: nothing was published before
        served = leaves[-2]  # the server reloads one check later
        seen = bundles[-2]  # the API server sees the bundle one second late
        assert served is not None
        assert Cert.parse(served.cert_pem).not_after > now, f"served an expired leaf at {second}s"
        assert any(
            c.not_after > now and certrotation.signed_by(served.cert_pem, c.pem) for c in seen
        ), f"at {second}s the API server could not verify the served certificate"
    assert rotations >= 5
    assert len({b[0].pem for b in bundles[1:]}) >= 6  # the caBundle changed with each one
