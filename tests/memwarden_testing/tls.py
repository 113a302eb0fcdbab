"""Certificates for servers that tests and benchmarks run on loopback."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from memwarden.webhook import certs


def loopback_certificates(*, ca_name: str, ca_file: Path, cert_file: Path, key_file: Path) -> bytes:
    """A day-long CA (written to ``ca_file``) and a serving certificate for 127.0.0.1 and
    localhost signed by it; returns the CA's PEM."""
    now = dt.datetime.now(dt.UTC)
    ca = certs.make_ca(common_name=ca_name, now=now, valid_for=dt.timedelta(days=1))
    leaf = certs.issue(
        ca=ca,
        common_name="127.0.0.1",
        now=now,
        valid_for=dt.timedelta(days=1),
        server_names=("127.0.0.1", "localhost"),
    )
    certs.write_pem(leaf, cert_path=cert_file, key_path=key_file)
    ca_file.write_bytes(ca.cert_pem)
    return ca.cert_pem
