"""Upload tokens: bound to one incident (namespace, name, UID), signed, expiring."""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable

import pytest

from memwarden.evidence.tokens import (
    TokenError,
    issue_upload_token,
    token_expiry,
    verify_upload_token,
)
from memwarden_testing.evidence import KEY, T0

UID = "5b0c7a52-63a3-4c4b-9d51-0e1f4c2a7d10"
EXPIRES = T0 + dt.timedelta(minutes=30)


def _token(**overrides: object) -> str:
    fields: dict[str, object] = {
        "key": KEY,
        "namespace": "shop",
        "incident": "checkout-1",
        "uid": UID,
        "expires_at": EXPIRES,
    }
    fields.update(overrides)
    return issue_upload_token(**fields)  # type: ignore[arg-type]


def _swap_part(index: int, value: str) -> Callable[[str], str]:
    def edit(token: str) -> str:
        parts = token.split(".")
        parts[index] = value
        return ".".join(parts)

    return edit


def _flip_last_char(token: str) -> str:
    return token[:-1] + ("A" if token[-1] != "A" else "B")


def test_a_token_verifies_and_yields_the_uid() -> None:
    token = _token()
    assert (
        verify_upload_token(key=KEY, token=token, namespace="shop", incident="checkout-1", now=T0)
        == UID
    )
    assert len(token) < 120, "tokens travel in env vars and headers: keep them compact"


def test_a_token_is_valid_until_the_second_before_expiry() -> None:
    token = _token()
    just_before = EXPIRES - dt.timedelta(microseconds=1)
    verify_upload_token(
        key=KEY, token=token, namespace="shop", incident="checkout-1", now=just_before
    )


REFUSALS = [
    pytest.param(_token(), {"namespace": "other"}, "signature", id="another-namespace"),
    pytest.param(_token(), {"incident": "checkout-2"}, "signature", id="another-incident"),
    pytest.param(_token(), {"key": b"x" * 32}, "signature", id="another-key"),
    pytest.param(_token(), {"now": EXPIRES}, "expired", id="expired-at-the-second"),
    pytest.param(_token(), {"now": EXPIRES + dt.timedelta(days=1)}, "expired", id="expired"),
    pytest.param(_swap_part(1, "b3RoZXItdWlk")(_token()), {}, "signature", id="tampered-uid"),
    pytest.param(
        _swap_part(2, str(int(EXPIRES.timestamp()) + 3600))(_token()),
        {},
        "signature",
        id="tampered-expiry",
    ),
    pytest.param(_flip_last_char(_token()), {}, "signature", id="tampered-mac"),
    pytest.param(
        _token(expires_at=T0 - dt.timedelta(seconds=1)), {}, "expired", id="issued-already-expired"
    ),
    pytest.param("", {}, "malformed", id="empty"),
    pytest.param("garbage", {}, "malformed", id="one-part"),
    pytest.param(_swap_part(0, "mw2")(_token()), {}, "malformed", id="unknown-version"),
    pytest.param(_token() + ".extra", {}, "malformed", id="five-parts"),
    pytest.param(_swap_part(2, "-5")(_token()), {}, "malformed", id="negative-expiry"),
    pytest.param(_swap_part(2, "١٢٣")(_token()), {}, "malformed", id="non-ascii-digits"),
    pytest.param(_swap_part(1, "a/b+c")(_token()), {}, "malformed", id="not-base64url"),
    pytest.param(_swap_part(1, "_w")(_token()), {}, "malformed", id="uid-not-utf8"),
    pytest.param(_token() + "A" * 2000, {}, "malformed", id="overlong"),
]


@pytest.mark.parametrize(("token", "overrides", "reason"), REFUSALS)
def test_a_token_is_refused(token: str, overrides: dict[str, object], reason: str) -> None:
    arguments: dict[str, object] = {
        "key": KEY,
        "token": token,
        "namespace": "shop",
        "incident": "checkout-1",
        "now": T0,
    }
    arguments.update(overrides)
    with pytest.raises(TokenError, match=reason):
        verify_upload_token(**arguments)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "overrides",
    [
        pytest.param({"key": b"short"}, id="short-key"),
        pytest.param({"expires_at": EXPIRES.replace(tzinfo=None)}, id="naive-expiry"),
        pytest.param({"uid": ""}, id="empty-uid"),
    ],
)
def test_issuing_refuses_programming_errors(overrides: dict[str, object]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011 - the message varies per case
        _token(**overrides)


def test_tokens_for_different_incidents_differ() -> None:
    assert _token() != _token(incident="checkout-2") != _token(uid="another")


def test_the_toolbox_reads_the_expiry_without_the_key() -> None:
    token = _token()
    assert token_expiry(token) == int(EXPIRES.timestamp())
    assert token_expiry("not.a.token") is None
    assert token_expiry("mw1.dWlk.soon.mac") is None
