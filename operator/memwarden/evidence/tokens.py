"""Upload tokens: a capability to upload the bundle of one incident, and nothing else.

The operator issues a token when it starts a capture and hands it to the toolbox (in the
ephemeral container's environment); the evidence API checks it on upload. A token is
``mw1.<uid>.<expiry>.<mac>``: the incident's UID (base64url), the expiry (Unix seconds)
and an HMAC-SHA256 over the namespace, the incident's name, its UID and the expiry.
The namespace and name are not in the token (the URL says them), so a token presented for
another incident fails its MAC. The UID is, so the API can refuse a token minted for an
earlier incident of the same name.

The key is bytes from a Secret in production, so tokens outlive an operator restart.
Replay is stopped by the store (a token is accepted only while no bundle is stored for its
incident), not here.

Pure: no clock (``now`` is passed in), no I/O.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
import json
import re

__all__ = [
    "MIN_KEY_BYTES",
    "UPLOAD_SIZE_HEADER",
    "TokenError",
    "issue_upload_token",
    "token_expiry",
    "verify_upload_token",
]

_VERSION = "mw1"
#: The upload protocol's one header besides the token: the most bytes a chunked upload
#: will send, so the store can reserve that much before the first byte (and refuse more).
UPLOAD_SIZE_HEADER = "X-Bundle-Max-Bytes"
#: A shorter key would make the MAC guessable; 32 bytes is SHA-256's block-safe size.
MIN_KEY_BYTES = 32
#: Tokens are ~110 characters; anything much longer is not one of ours.
_MAX_TOKEN_CHARS = 1024
_B64URL = re.compile(r"[A-Za-z0-9_-]+")


class TokenError(Exception):
    """The token does not grant this upload: malformed, bad signature (including a token
    for another incident) or expired. The message is safe to return to the caller."""


def _b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _b64decode(text: str) -> bytes:
    if not _B64URL.fullmatch(text):
        raise TokenError("malformed token")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise TokenError("malformed token") from exc


def _check_key(key: bytes) -> None:
    if len(key) < MIN_KEY_BYTES:
        raise ValueError(f"the upload key must be at least {MIN_KEY_BYTES} bytes")


def _mac(*, key: bytes, namespace: str, incident: str, uid: str, expiry: int) -> bytes:
    # JSON of a list is an unambiguous encoding of the fields (no separator games).
    message = json.dumps(["memwarden-upload", _VERSION, namespace, incident, uid, expiry])
    return hmac.new(key, message.encode("utf-8"), hashlib.sha256).digest()


def issue_upload_token(
    *, key: bytes, namespace: str, incident: str, uid: str, expires_at: dt.datetime
) -> str:
    """A token for uploading the bundle of ``namespace/incident`` (UID ``uid``) until
    ``expires_at`` (aware; truncated to the second)."""
    _check_key(key)
    if expires_at.tzinfo is None:
        raise ValueError("expires_at must be timezone-aware")
    if not uid:
        raise ValueError("uid must not be empty")
    expiry = int(expires_at.timestamp())
    mac = _mac(key=key, namespace=namespace, incident=incident, uid=uid, expiry=expiry)
    return f"{_VERSION}.{_b64encode(uid.encode('utf-8'))}.{expiry}.{_b64encode(mac)}"


def token_expiry(token: str) -> int | None:
    """When ``token`` expires (Unix seconds), read without verifying it; None if it is not
    one of ours. For the toolbox, which holds no key: it retries an upload while the token
    is worth something."""
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _VERSION:
        return None
    text = parts[2]
    if not text.isascii() or not text.isdigit() or len(text) > 12:
        return None
    return int(text)


def verify_upload_token(
    *, key: bytes, token: str, namespace: str, incident: str, now: dt.datetime
) -> str:
    """The incident UID the token was issued for; :class:`TokenError` if it does not grant
    an upload to ``namespace/incident`` at ``now``. The caller compares the UID with the
    live incident's."""
    _check_key(key)
    if len(token) > _MAX_TOKEN_CHARS:
        raise TokenError("malformed token")
    parts = token.split(".")
    if len(parts) != 4 or parts[0] != _VERSION:
        raise TokenError("malformed token")
    _, uid_text, expiry_text, mac_text = parts
    if not expiry_text.isascii() or not expiry_text.isdigit() or len(expiry_text) > 12:
        raise TokenError("malformed token")
    try:
        uid = _b64decode(uid_text).decode("utf-8")
    except UnicodeDecodeError as exc:
        raise TokenError("malformed token") from exc
    expiry = int(expiry_text)
    presented = _b64decode(mac_text)
    expected = _mac(key=key, namespace=namespace, incident=incident, uid=uid, expiry=expiry)
    # The signature before the expiry: an attacker learns nothing from a forged expiry.
    if not hmac.compare_digest(presented, expected):
        raise TokenError("invalid token signature (or a token for another incident)")
    if now.timestamp() >= expiry:
        raise TokenError("token expired")
    return uid
