"""Kubernetes quantities and durations: parsed as the API server does, written exactly."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from memwarden.quantity import (
    QuantityError,
    approximate_bytes,
    format_bytes,
    format_go_bytes,
    parse_bytes,
    parse_duration,
    parse_millicores,
    readable_bytes,
)

pytestmark = pytest.mark.unit

GI = 2**30


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param("0", 0, id="zero"),
        pytest.param("512Mi", 512 * 2**20, id="binary"),
        pytest.param("1Gi", GI, id="gibi"),
        pytest.param("1.5Gi", 3 * GI // 2, id="binary-fraction"),
        pytest.param("2G", 2_000_000_000, id="decimal"),
        pytest.param("128974848", 128974848, id="plain-bytes"),
        pytest.param("129e6", 129_000_000, id="exponent"),
        pytest.param("1E3", 1000, id="exponent-upper"),
        pytest.param("100m", 1, id="milli-rounds-up"),
        pytest.param("0.5", 1, id="half-byte-rounds-up"),
        pytest.param(" 1Ki ", 1024, id="surrounding-space"),
        pytest.param(4096, 4096, id="int"),
    ],
)
def test_parse_bytes(text: str | int, expected: int) -> None:
    assert parse_bytes(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        pytest.param("lots", "not a Kubernetes quantity: 'lots'", id="word"),
        pytest.param("1GB", "not a Kubernetes quantity", id="unit-not-kubernetes"),
        pytest.param("1gi", "not a Kubernetes quantity", id="wrong-case"),
        pytest.param("", "not a Kubernetes quantity", id="empty"),
        pytest.param("1..2Mi", "not a Kubernetes quantity", id="two-points"),
        pytest.param("-1Mi", "negative quantity", id="negative"),
        pytest.param(True, "not a quantity", id="bool"),
    ],
)
def test_parse_bytes_refuses_with_a_message(text: str | bool, message: str) -> None:
    with pytest.raises(QuantityError, match=message.replace("(", r"\(")):
        parse_bytes(text)


@pytest.mark.parametrize(
    ("text", "expected"), [("500m", 500), ("2", 2000), ("0.1", 100), ("1u", 1)]
)
def test_parse_millicores_rounds_up(text: str, expected: int) -> None:
    assert parse_millicores(text) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        pytest.param(0, "0", id="zero"),
        pytest.param(GI, "1Gi", id="gibi"),
        pytest.param(1536 * 2**20, "1536Mi", id="not-whole-gibi"),
        pytest.param(2040107008, "1992292Ki", id="page-multiple"),
        pytest.param(1000, "1000", id="plain"),
        pytest.param(2**60, "1Ei", id="largest-unit"),
    ],
)
def test_format_bytes_is_the_shortest_exact_form(n: int, expected: str) -> None:
    assert format_bytes(n) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        pytest.param(921 * 2**20, "921MiB", id="mebi"),
        pytest.param(2 * GI, "2GiB", id="gibi"),
        pytest.param(1000, "1000B", id="bytes"),
        pytest.param(0, "0B", id="zero"),
    ],
)
def test_format_go_bytes_uses_go_suffixes(n: int, expected: str) -> None:
    assert format_go_bytes(n) == expected


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        pytest.param(0, "0", id="zero"),
        pytest.param(1023, "1023", id="bytes"),
        pytest.param(1536, "1.50Ki", id="kibi"),
        pytest.param(2040107008, "1.90Gi", id="memory-high"),
        pytest.param(45 * 2**20 + 2**19, "45.5Mi", id="two-digits"),
        pytest.param(300 * 2**20, "300Mi", id="three-digits"),
        pytest.param(1023 * 2**20, "1023Mi", id="under-a-gibi"),
        pytest.param(1023 * 2**20 + 2**19, "1.00Gi", id="rounds-to-a-gibi"),
        pytest.param(10235, "10.0Ki", id="rounds-to-ten"),
        pytest.param(102349, "100Ki", id="rounds-to-a-hundred"),
        pytest.param(3 * 2**50, "3.00Pi", id="pebi"),
        pytest.param(2**62, "4.00Ei", id="largest-unit"),
        pytest.param(-3 * 2**20, "-3.00Mi", id="negative-growth"),
    ],
)
def test_approximate_bytes(n: int, expected: str) -> None:
    assert approximate_bytes(n) == expected


@pytest.mark.parametrize("fn", [format_bytes, format_go_bytes])
def test_negative_byte_counts_are_refused(fn: object) -> None:
    with pytest.raises(QuantityError, match="negative byte count: -1"):
        fn(-1)  # type: ignore[operator]


@given(st.integers(min_value=0, max_value=2**62))
def test_written_quantities_read_back_exactly(n: int) -> None:
    assert parse_bytes(format_bytes(n)) == n


@given(st.integers(min_value=1, max_value=2**50))
def test_go_quantities_are_exact(n: int) -> None:
    text = format_go_bytes(n)
    number, unit = text.rstrip("KMGTiB"), text[len(text.rstrip("KMGTiB")) :]
    scale = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40}[unit]
    assert int(number) * scale == n


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        pytest.param("90s", 90.0, id="seconds"),
        pytest.param("10m", 600.0, id="minutes"),
        pytest.param("1h30m", 5400.0, id="compound"),
        pytest.param("250ms", 0.25, id="millis-not-minutes"),
        pytest.param("1m500ms", 60.5, id="minutes-then-millis"),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["", "10", "1.5m", "1d", "m", "10m-"])
def test_parse_duration_refuses_with_examples(text: str) -> None:
    with pytest.raises(QuantityError, match=r"not a duration: .* \(examples: 30s, 10m, 1h30m\)"):
        parse_duration(text)


@given(st.integers(min_value=1024, max_value=2**62))
def test_approximations_have_three_significant_figures_and_are_close(n: int) -> None:
    number = approximate_bytes(n).rstrip("KMGTPEi")
    digits = number.replace(".", "")
    assert len(digits) == 3 or (len(digits) == 4 and "." not in number)  # 1000..1023
    assert abs(parse_bytes(approximate_bytes(n)) - n) <= n / 200 + 1


@pytest.mark.parametrize(
    ("n", "expected"),
    [
        pytest.param(2 * GI, "2Gi", id="whole-unit"),
        pytest.param(1536 * 2**20, "1536Mi", id="whole-mebi"),
        pytest.param(2040107008, "2040107008 (~1.90Gi)", id="cgroup-value"),
        pytest.param(2 * GI - 100, "2147483548 (~2.00Gi)", id="just-under"),
        pytest.param(4096, "4Ki", id="small-stays-exact"),
        pytest.param(1000, "1000", id="bytes"),
    ],
)
def test_readable_bytes(n: int, expected: str) -> None:
    assert readable_bytes(n) == expected
