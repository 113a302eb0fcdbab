"""When to rotate the webhook's self-made certificates, and what the caBundle must hold.

Pure: certificates in, decisions out; the clock is passed in, nothing is read or written
here (``handlers/certificates.py`` acts on the decisions). The certificates themselves
are made with ``certs.py``.

The rotation never lets a request fail. A new CA is *published* first (added to the
webhook configuration's caBundle next to the current one), and signs the serving
certificate only once the API server has had ``propagation`` to see it. The old CA stays
in the bundle until it expires, so connections to a replica that has not yet switched
still verify. Every rotation makes a new CA: a CA key never outlives one validity period.

    t0            CA C1 created and published; serving certificate L1 signed by C1
    C1 - renew    CA C2 created and published: bundle [C1, C2]          (PREPARE)
    + propagation C2 becomes current; L2 signed by C2 replaces L1      (PROMOTE)
    C1 expires    bundle [C2]
"""

from __future__ import annotations

import datetime as dt
import enum
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization


@dataclass(frozen=True)
class Timing:
    """How long certificates live and how early they are replaced."""

    validity: dt.timedelta
    renew_before: dt.timedelta
    propagation: dt.timedelta

    def __post_init__(self) -> None:
        if self.validity <= dt.timedelta(0):
            raise ValueError("certificate validity must be positive")
        if not dt.timedelta(0) < self.renew_before < self.validity:
            raise ValueError(
                f"renew-before ({self.renew_before}) must be positive and shorter than the "
                f"validity ({self.validity}), or certificates would be renewed all the time"
            )
        if not dt.timedelta(0) <= self.propagation < self.renew_before:
            raise ValueError(
                f"CA propagation ({self.propagation}) must be shorter than renew-before "
                f"({self.renew_before}): the new CA must sign before the old one expires"
            )


@dataclass(frozen=True)
class Cert:
    """One certificate of a bundle: its PEM and the dates that matter here."""

    pem: bytes
    not_before: dt.datetime
    not_after: dt.datetime
    subject: str

    @classmethod
    def parse(cls, pem: bytes) -> Cert:
        cert = x509.load_pem_x509_certificate(pem)
        return cls.of(cert)

    @classmethod
    def of(cls, cert: x509.Certificate) -> Cert:
        return cls(
            pem=cert.public_bytes(serialization.Encoding.PEM),
            not_before=cert.not_valid_before_utc,
            not_after=cert.not_valid_after_utc,
            subject=cert.subject.rfc4514_string(),
        )


def split_bundle(pem: bytes) -> tuple[Cert, ...]:
    """The certificates of a PEM bundle (a caBundle), in order; empty for no bundle."""
    if not pem.strip():
        return ()
    return tuple(Cert.of(cert) for cert in x509.load_pem_x509_certificates(pem))


def join_bundle(certs: Sequence[Cert]) -> bytes:
    return b"".join(cert.pem for cert in certs)


def renewal_due(*, not_after: dt.datetime, now: dt.datetime, renew_before: dt.timedelta) -> bool:
    """True from ``renew_before`` ahead of expiry on: renew early, never expire."""
    return not_after - now <= renew_before


def signed_by(leaf_pem: bytes, ca_pem: bytes) -> bool:
    """Whether ``ca_pem`` signed ``leaf_pem`` (signature math; CA names may repeat)."""
    leaf = x509.load_pem_x509_certificate(leaf_pem)
    ca = x509.load_pem_x509_certificate(ca_pem)
    try:
        leaf.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


class CaStep(enum.Enum):
    """What to do with the CA pair (current, next) kept in the CA Secret."""

    KEEP = "keep"
    #: No CA yet, or the current one expired with no successor: make one, use it at once.
    REPLACE = "replace"
    #: The current CA is due: make the next one and publish it, but do not sign with it.
    PREPARE = "prepare"
    #: The next CA has been published for ``propagation``: it becomes the current one.
    PROMOTE = "promote"


def ca_step(
    *,
    current: Cert | None,
    next_ca: Cert | None,
    next_published_at: dt.datetime | None,
    now: dt.datetime,
    timing: Timing,
) -> CaStep:
    """The next step of the CA rotation."""
    if current is None or current.not_after <= now:
        # Nothing valid to serve with: waiting for propagation would only prolong the outage.
        return CaStep.PROMOTE if next_ca is not None else CaStep.REPLACE
    if next_ca is None:
        due = renewal_due(not_after=current.not_after, now=now, renew_before=timing.renew_before)
        return CaStep.PREPARE if due else CaStep.KEEP
    if next_published_at is not None and now - next_published_at >= timing.propagation:
        return CaStep.PROMOTE
    return CaStep.KEEP


def leaf_due(
    *,
    leaf: Cert | None,
    signed_by_current: bool,
    current_ca: Cert,
    now: dt.datetime,
    timing: Timing,
) -> str | None:
    """Why the serving certificate must be issued again, or None to keep it.

    A certificate due for renewal is re-issued only when the current CA can give it a
    later expiry; otherwise the CA rotation (``ca_step``) is what renews it.
    """
    if leaf is None:
        return "no serving certificate"
    if not signed_by_current:
        return "the serving certificate is not signed by the current CA"
    if leaf.not_after <= now:
        return "the serving certificate expired"
    if (
        renewal_due(not_after=leaf.not_after, now=now, renew_before=timing.renew_before)
        and current_ca.not_after > leaf.not_after
    ):
        return f"the serving certificate expires within {timing.renew_before}"
    return None


def leaf_validity(*, ca: Cert, now: dt.datetime, timing: Timing) -> dt.timedelta:
    """A serving certificate never outlives the CA that signed it."""
    return min(timing.validity, ca.not_after - now)


def desired_bundle(
    *, current: Cert, next_ca: Cert | None, published: Sequence[Cert], now: dt.datetime
) -> tuple[Cert, ...]:
    """The caBundle: the current CA, the next one, and earlier ones until they expire.

    Keeping an earlier CA until it expires is what makes a rotation safe: a replica (or
    an API server connection) still on the previous serving certificate keeps verifying.
    Its key is already gone, so it can sign nothing new.
    """
    wanted = [current, *([next_ca] if next_ca is not None else [])]
    seen = {cert.pem for cert in wanted}
    for cert in published:
        if cert.pem not in seen and cert.not_after > now:
            wanted.append(cert)
            seen.add(cert.pem)
    return tuple(wanted)


def describe_expiry(cert: Cert, *, now: dt.datetime, timing: Timing) -> str:
    """One log line: when it expires and when its renewal starts."""
    renew_at = cert.not_after - timing.renew_before
    left = cert.not_after - now
    return (
        f"valid until {cert.not_after.isoformat()} ({_human(left)} left), "
        f"renewal from {renew_at.isoformat()}"
    )


def _human(delta: dt.timedelta) -> str:
    seconds = int(delta.total_seconds())
    if abs(seconds) >= 2 * 86400:
        return f"{seconds // 86400}d"
    if abs(seconds) >= 2 * 3600:
        return f"{seconds // 3600}h"
    return f"{seconds}s"


__all__ = [
    "CaStep",
    "Cert",
    "Timing",
    "ca_step",
    "describe_expiry",
    "desired_bundle",
    "join_bundle",
    "leaf_due",
    "leaf_validity",
    "renewal_due",
    "signed_by",
    "split_bundle",
]
