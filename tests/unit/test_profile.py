"""The profile.proto reader: decoding what the test encoder wrote, and refusing garbage."""

from __future__ import annotations

import contextlib
import gzip

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from memwarden.capture.profile import (
    Profile,
    ProfileError,
    ProfileTooLarge,
    ValueType,
    decode_profile,
    parse_profile,
)
from memwarden_testing.profiles import (
    HEAP_TYPES,
    ProfileBuilder,
    field_bytes,
    field_fixed32,
    field_fixed64,
    field_varint,
    key,
    make_profile,
    sample_flood,
    varint,
)

pytestmark = pytest.mark.unit


def _heap(*, packed: bool = True) -> bytes:
    builder = ProfileBuilder(sample_types=HEAP_TYPES, packed=packed, time_nanos=1_700_000_000)
    builder.sample(["main.leak", "main.main"], 3, 3072, 2, 2048, labels={"pool": "sessions"})
    builder.sample([("bytes.growSlice", "main.grow"), "main.main"], 1, 512, 0, 0)
    return builder.gzip()


@pytest.mark.parametrize(
    "packed", [pytest.param(True, id="packed"), pytest.param(False, id="unpacked")]
)
def test_decodes_samples_stacks_and_metadata(packed: bool) -> None:
    profile = parse_profile(_heap(packed=packed))

    assert profile.sample_types == tuple(ValueType(t, u) for t, u in HEAP_TYPES)
    assert [s.values for s in profile.samples] == [(3, 3072, 2, 2048), (1, 512, 0, 0)]
    first, second = profile.samples
    assert [loc.lines[0].function.name for loc in first.locations if loc.lines[0].function] == [
        "main.leak",
        "main.main",
    ]
    assert first.location_ids == (1, 2)
    assert [(lb.key, lb.value) for lb in first.labels] == [("pool", "sessions")]
    inlined = second.locations[0]
    assert [ln.function.name for ln in inlined.lines if ln.function] == [
        "bytes.growSlice",
        "main.grow",
    ]
    assert inlined.lines[0].line == 10
    assert profile.time_nanos == 1_700_000_000
    assert profile.period_type == ValueType("space", "bytes")
    assert profile.period == 524288
    assert profile.mappings[0].filename == "/app/leaky"
    assert {f.name for f in profile.functions} >= {"main.leak", "bytes.growSlice"}


def test_negative_values_decode_as_signed_64_bit() -> None:
    # Diff profiles (pprof -diff_base) carry negative values as 10-byte varints.
    profile = parse_profile(make_profile([(["main.freed"], -4096)]))
    assert profile.samples[0].values == (-4096,)


def test_unknown_fields_of_every_wire_type_are_skipped() -> None:
    unknown = (
        field_varint(100, 7)
        + field_fixed64(101, 2**63)
        + field_fixed32(102, 9)
        + field_bytes(103, b"future")
    )
    raw = ProfileBuilder().sample(["main.leak"], 5).encode()
    profile = decode_profile(unknown + raw + unknown)
    assert profile.samples[0].values == (5,)


def _string_table(*strings: str) -> bytes:
    return b"".join(field_bytes(6, s.encode()) for s in ("", *strings))


_UNKNOWN = field_bytes(15, b"new") + field_varint(14, 1) + field_fixed32(13, 0)


@pytest.mark.parametrize(
    "where",
    [
        pytest.param("sample", id="in-sample"),
        pytest.param("location", id="in-location"),
        pytest.param("line", id="in-line"),
        pytest.param("function", id="in-function"),
        pytest.param("value_type", id="in-value-type"),
    ],
)
def test_unknown_fields_in_nested_messages_are_skipped(where: str) -> None:
    def extra(name: str) -> bytes:
        return _UNKNOWN if name == where else b""

    raw = (
        field_bytes(1, field_varint(1, 1) + field_varint(2, 2) + extra("value_type"))
        + field_bytes(2, field_varint(1, 1) + field_varint(2, 5) + extra("sample"))
        + field_bytes(
            4,
            field_varint(1, 1)
            + field_bytes(4, field_varint(1, 1) + field_varint(2, 7) + extra("line"))
            + extra("location"),
        )
        + field_bytes(5, field_varint(1, 1) + field_varint(2, 3) + extra("function"))
        + _string_table("inuse_space", "bytes", "main.leak")
    )
    profile = decode_profile(raw)
    assert profile.sample_types == (ValueType("inuse_space", "bytes"),)
    sample = profile.samples[0]
    assert sample.values == (5,)
    line = sample.locations[0].lines[0]
    assert line.function is not None
    assert (line.function.name, line.line) == ("main.leak", 7)


def test_concatenated_gzip_members_are_one_profile() -> None:
    raw = ProfileBuilder().sample(["main.leak"], 5).encode()
    half = len(raw) // 2
    profile = parse_profile(gzip.compress(raw[:half]) + gzip.compress(raw[half:]))
    assert profile.samples[0].values == (5,)


_RAW = ProfileBuilder().sample(["main.leak", "main.main"], 5).encode()
_GZ = gzip.compress(_RAW, mtime=0)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"\x0a\x02hello, not a profile", "not gzip", id="not-gzip"),
        pytest.param(_GZ[: len(_GZ) // 2], "truncated gzip", id="truncated-gzip"),
        pytest.param(b"\x1f\x8b" + b"\xff" * 20, "corrupt gzip", id="corrupt-gzip"),
        pytest.param(gzip.compress(_RAW[:-3]), "runs past", id="truncated-message"),
        pytest.param(gzip.compress(key(1, 3) + _RAW), "wire type 3", id="bad-wire-type-group"),
        pytest.param(gzip.compress(key(1, 7) + _RAW), "wire type 7", id="bad-wire-type-7"),
        pytest.param(gzip.compress(b"\xff" * 11), "varint", id="overlong-varint"),
        pytest.param(gzip.compress(b"\x0a\x80\x80\x80"), "truncated varint", id="truncated-len"),
        pytest.param(gzip.compress(b"\x0a\x7f\x08"), "runs past", id="length-past-end"),
        pytest.param(gzip.compress(field_varint(1, 5)), "expected a message", id="scalar-as-msg"),
        pytest.param(gzip.compress(b"\x00\x01"), "field number 0", id="field-zero"),
        pytest.param(
            gzip.compress(field_bytes(1, field_varint(1, 9)) + field_bytes(6, b"")),
            "string index 9",
            id="string-index-out-of-range",
        ),
        pytest.param(
            gzip.compress(field_bytes(6, b"x")), "start with the empty string", id="bad-table"
        ),
        pytest.param(
            gzip.compress(field_bytes(6, b"") + field_bytes(6, b"\xff\xfe")),
            "UTF-8",
            id="string-not-utf8",
        ),
        pytest.param(
            gzip.compress(field_bytes(2, field_varint(1, 42) + field_varint(2, 1))),
            "0 sample types",
            id="value-count-mismatch",
        ),
        pytest.param(
            gzip.compress(
                field_bytes(1, b"")
                + field_bytes(2, field_varint(1, 42) + field_varint(2, 1))
                + field_bytes(6, b"")
            ),
            "unknown location id 42",
            id="unknown-location",
        ),
        pytest.param(
            gzip.compress(field_bytes(4, field_varint(1, 1) + field_bytes(4, field_varint(1, 9)))),
            "unknown function id 9",
            id="unknown-function",
        ),
        pytest.param(
            gzip.compress(field_bytes(5, field_varint(1, 1)) * 2),
            "duplicated",
            id="duplicate-function-id",
        ),
    ],
)
def test_garbage_raises_profile_error(data: bytes, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        parse_profile(data)


def test_decompression_is_capped() -> None:
    with pytest.raises(ProfileTooLarge, match="larger than"):
        parse_profile(gzip.compress(b"\x00" * 10_000), max_bytes=1000)


def test_entries_are_capped_before_they_are_decoded() -> None:
    flood = sample_flood(5000)
    assert len(flood) < 2000, "a few KiB of gzip..."
    assert len(parse_profile(flood, max_entries=5000).samples) == 5000
    with pytest.raises(ProfileTooLarge, match="more than 4999 samples"):
        parse_profile(flood, max_entries=4999)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape_as_other_errors(data: bytes) -> None:
    with contextlib.suppress(ProfileError):
        decode_profile(data)


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_mutated_real_profiles_never_escape_as_other_errors(data: st.DataObject) -> None:
    raw = bytearray(_heap_raw())
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)))
    with contextlib.suppress(ProfileError):
        decode_profile(bytes(raw[:cut]))


def _heap_raw() -> bytes:
    return gzip.decompress(_heap())


def _types(*names: str, default: str = "") -> Profile:
    builder = ProfileBuilder(sample_types=[(n, "x") for n in names], default_sample_type=default)
    return parse_profile(builder.sample(["f"], *range(len(names))).gzip())


@pytest.mark.parametrize(
    ("profile", "asked", "expected"),
    [
        pytest.param(_types(*(t for t, _ in HEAP_TYPES)), None, 3, id="heap-default-inuse-space"),
        pytest.param(_types("samples", "cpu"), None, 1, id="default-is-last-type"),
        pytest.param(_types("samples", "cpu", default="samples"), None, 0, id="default-from-file"),
        pytest.param(_types(*(t for t, _ in HEAP_TYPES)), "alloc_space", 1, id="by-name"),
        pytest.param(_types(*(t for t, _ in HEAP_TYPES)), "2", 2, id="by-index-string"),
        pytest.param(_types(*(t for t, _ in HEAP_TYPES)), 0, 0, id="by-index-int"),
    ],
)
def test_sample_index_resolution(profile: Profile, asked: str | int | None, expected: int) -> None:
    assert profile.sample_index(asked) == expected


@pytest.mark.parametrize(
    ("asked", "message"),
    [
        pytest.param("inuse_bytes", "not in profile", id="unknown-name"),
        pytest.param("4", "out of range", id="index-too-big"),
        pytest.param(-1, "out of range", id="negative-index"),
    ],
)
def test_sample_index_errors(asked: str | int, message: str) -> None:
    with pytest.raises(ProfileError, match=message):
        _types(*(t for t, _ in HEAP_TYPES)).sample_index(asked)


def test_varint_helper_matches_protobuf_examples() -> None:
    # Sanity of the test encoder itself, from the protobuf encoding guide.
    assert varint(1) == b"\x01"
    assert varint(150) == b"\x96\x01"
    assert varint(-1) == b"\xff" * 9 + b"\x01"
