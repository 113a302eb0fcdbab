"""A reader for pprof's ``profile.proto`` (gzip-compressed), with its own wire decoder.

Pure: bytes in, frozen dataclasses out; no I/O and no ``google.protobuf`` (the toolbox
image and ``memwarden analyze`` stay dependency-free). Garbage input of any kind raises
:class:`ProfileError`, never an ``IndexError`` or a zlib error.

Schema: https://github.com/google/pprof/blob/main/proto/profile.proto
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field

__all__ = [
    "DEFAULT_MAX_BYTES",
    "Function",
    "Label",
    "Line",
    "Location",
    "Mapping",
    "Profile",
    "ProfileError",
    "ProfileTooLarge",
    "Sample",
    "ValueType",
    "decode_profile",
    "parse_profile",
]

#: Largest decompressed profile accepted: real heap profiles are a few MiB; a bigger
#: payload is a decompression bomb or not a profile, and would cost the operator memory.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024

_VARINT, _FIXED64, _LEN, _FIXED32 = 0, 1, 2, 5
_U64 = 1 << 64
_I64_MIN_UNSIGNED = 1 << 63


class ProfileError(ValueError):
    """The input is not a readable pprof profile; the message says why."""


class ProfileTooLarge(ProfileError):
    """The profile exceeds a size limit (decompressed bytes, entries of a table): refused
    unread, since decoding it would cost more memory or time than any real profile."""


@dataclass(frozen=True, slots=True)
class ValueType:
    """What a sample value measures, e.g. ``inuse_space`` in ``bytes``."""

    type: str
    unit: str


@dataclass(frozen=True, slots=True)
class Function:
    id: int
    name: str
    system_name: str
    filename: str
    start_line: int


@dataclass(frozen=True, slots=True)
class Line:
    """One frame of a location; ``function`` is None only for a ``function_id`` of 0."""

    function: Function | None
    line: int
    column: int = 0


@dataclass(frozen=True, slots=True)
class Mapping:
    id: int
    memory_start: int
    memory_limit: int
    file_offset: int
    filename: str
    build_id: str
    has_functions: bool = False
    has_filenames: bool = False
    has_line_numbers: bool = False
    has_inline_frames: bool = False


@dataclass(frozen=True, slots=True)
class Location:
    """A program counter; with inlining, ``lines[0]`` is the innermost (leaf) frame."""

    id: int
    mapping_id: int
    address: int
    lines: tuple[Line, ...]
    is_folded: bool = False


@dataclass(frozen=True, slots=True)
class Label:
    """A sample label: a string ``value`` or a number ``num`` (in ``num_unit``)."""

    key: str
    value: str = ""
    num: int = 0
    num_unit: str = ""


@dataclass(frozen=True, slots=True)
class Sample:
    """One stack, leaf first, with one value per sample type of the profile."""

    locations: tuple[Location, ...]
    values: tuple[int, ...]
    labels: tuple[Label, ...] = ()

    @property
    def location_ids(self) -> tuple[int, ...]:
        return tuple(loc.id for loc in self.locations)


@dataclass(frozen=True, slots=True)
class Profile:
    """A decoded profile, with every id reference resolved to its object."""

    sample_types: tuple[ValueType, ...]
    samples: tuple[Sample, ...]
    mappings: tuple[Mapping, ...] = ()
    locations: tuple[Location, ...] = ()
    functions: tuple[Function, ...] = ()
    drop_frames: str = ""
    keep_frames: str = ""
    time_nanos: int = 0
    duration_nanos: int = 0
    period_type: ValueType | None = None
    period: int = 0
    comments: tuple[str, ...] = ()
    default_sample_type: str = ""
    doc_url: str = ""

    def sample_index(self, name_or_index: str | int | None = None) -> int:
        """Resolve a sample type name (or index) like ``go tool pprof -sample_index``.

        With None: the profile's ``default_sample_type``, else ``inuse_space`` when present
        (heap profiles), else the last type, which is pprof's own default.
        """
        names = [st.type for st in self.sample_types]
        if not names:
            raise ProfileError("profile has no sample types")
        if name_or_index is None:
            for candidate in (self.default_sample_type, "inuse_space"):
                if candidate in names:
                    return names.index(candidate)
            return len(names) - 1
        if isinstance(name_or_index, int) or name_or_index.isdigit():
            index = int(name_or_index)
            if 0 <= index < len(names):
                return index
            raise ProfileError(f"sample index {index} out of range (0..{len(names) - 1})")
        if name_or_index in names:
            return names.index(name_or_index)
        raise ProfileError(
            f"sample type {name_or_index!r} not in profile (have: {', '.join(names)})"
        )


def parse_profile(
    data: bytes, *, max_bytes: int = DEFAULT_MAX_BYTES, max_entries: int | None = None
) -> Profile:
    """Decode a gzip-compressed profile, as served by ``/debug/pprof/*`` with ``debug=0``.

    ``max_entries`` bounds every table (samples, locations, functions, mappings, strings):
    a few KiB of gzip can hold millions of tiny samples, each a Python object here.
    """
    return decode_profile(_gunzip(data, max_bytes=max_bytes), max_entries=max_entries)


def decode_profile(raw: bytes, *, max_entries: int | None = None) -> Profile:
    """Decode an uncompressed ``profile.proto`` message."""
    try:
        return _decode_profile(memoryview(raw), max_entries=max_entries)
    except ProfileError:
        raise
    except (ValueError, IndexError, KeyError, UnicodeError) as exc:  # defence in depth
        raise ProfileError(f"malformed profile: {exc}") from exc


def _gunzip(data: bytes, *, max_bytes: int) -> bytes:
    """Decompress one or more gzip members, refusing more than ``max_bytes`` of output."""
    if not data:
        raise ProfileError("empty input: not a gzip-compressed profile")
    if data[:2] != b"\x1f\x8b":
        raise ProfileError("not gzip-compressed (a pprof profile starts with 1f 8b)")
    out = bytearray()
    rest = data
    while rest:
        inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
        try:
            out += inflater.decompress(rest, max_bytes + 1 - len(out))
        except zlib.error as exc:
            raise ProfileError(f"corrupt gzip stream: {exc}") from exc
        if len(out) > max_bytes:
            raise ProfileTooLarge(f"profile larger than {max_bytes} bytes once decompressed")
        if not inflater.eof:
            raise ProfileError("truncated gzip stream")
        rest = inflater.unused_data
        if rest and rest[:2] != b"\x1f\x8b":
            break  # trailing padding after the last member, as gzip(1) tolerates
    return bytes(out)


# --- protobuf wire format -------------------------------------------------------------

_Value = int | memoryview


def _varint(buf: memoryview, pos: int) -> tuple[int, int]:
    result = 0
    shift = 0
    end = len(buf)
    while True:
        if pos >= end:
            raise ProfileError("truncated varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result & (_U64 - 1), pos
        shift += 7
        if shift >= 70:
            raise ProfileError("varint longer than 10 bytes")


def _fields(buf: memoryview) -> Iterator[tuple[int, _Value]]:
    """Yield ``(field number, value)``: integers, or views for length-delimited values."""
    pos = 0
    end = len(buf)
    while pos < end:
        key, pos = _varint(buf, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise ProfileError("field number 0")
        value: _Value
        if wire == _VARINT:
            value, pos = _varint(buf, pos)
        elif wire == _LEN:
            length, pos = _varint(buf, pos)
            if pos + length > end:
                raise ProfileError(f"field {number}: length {length} runs past the message")
            value = buf[pos : pos + length]
            pos += length
        elif wire == _FIXED64:
            if pos + 8 > end:
                raise ProfileError(f"field {number}: truncated fixed64")
            value = int.from_bytes(buf[pos : pos + 8], "little")
            pos += 8
        elif wire == _FIXED32:
            if pos + 4 > end:
                raise ProfileError(f"field {number}: truncated fixed32")
            value = int.from_bytes(buf[pos : pos + 4], "little")
            pos += 4
        else:  # 3/4 are proto2 groups, which profile.proto never uses; 6/7 do not exist
            raise ProfileError(f"field {number}: unsupported wire type {wire}")
        yield number, value


def _uint(number: int, value: _Value) -> int:
    """A scalar integer field (varint or fixed); a view means the wrong wire type."""
    if isinstance(value, memoryview):
        raise ProfileError(f"field {number}: expected an integer, got a length-delimited value")
    return value


def _int(number: int, value: _Value) -> int:
    """A scalar ``int64`` field: two's complement, so diff profiles keep their sign."""
    raw = _uint(number, value)
    return raw - _U64 if raw >= _I64_MIN_UNSIGNED else raw


def _repeated_ints(number: int, value: _Value, *, signed: bool) -> list[int]:
    """A repeated integer field: packed (one length-delimited run) or one element."""
    if not isinstance(value, memoryview):
        return [_int(number, value) if signed else value]
    out: list[int] = []
    pos = 0
    while pos < len(value):
        item, pos = _varint(value, pos)
        out.append(item - _U64 if signed and item >= _I64_MIN_UNSIGNED else item)
    return out


def _message(number: int, value: _Value) -> memoryview:
    if not isinstance(value, memoryview):
        raise ProfileError(f"field {number}: expected a message, got a scalar")
    return value


# --- profile.proto ----------------------------------------------------------------------


@dataclass(slots=True)
class _RawLine:
    function_id: int = 0
    line: int = 0
    column: int = 0


@dataclass(slots=True)
class _RawLocation:
    id: int = 0
    mapping_id: int = 0
    address: int = 0
    lines: list[_RawLine] = field(default_factory=list)
    is_folded: bool = False


@dataclass(slots=True)
class _RawSample:
    location_ids: list[int]
    values: list[int]
    labels: list[tuple[int, int, int, int]]


def _decode_value_type(buf: memoryview) -> tuple[int, int]:
    type_ = unit = 0
    for number, value in _fields(buf):
        if number == 1:
            type_ = _int(number, value)
        elif number == 2:
            unit = _int(number, value)
    return type_, unit


def _decode_sample(buf: memoryview) -> _RawSample:
    sample = _RawSample([], [], [])
    for number, value in _fields(buf):
        if number == 1:
            sample.location_ids += _repeated_ints(number, value, signed=False)
        elif number == 2:
            sample.values += _repeated_ints(number, value, signed=True)
        elif number == 3:
            key = str_ = num = num_unit = 0
            for lnum, lvalue in _fields(_message(number, value)):
                if lnum == 1:
                    key = _int(lnum, lvalue)
                elif lnum == 2:
                    str_ = _int(lnum, lvalue)
                elif lnum == 3:
                    num = _int(lnum, lvalue)
                elif lnum == 4:
                    num_unit = _int(lnum, lvalue)
            sample.labels.append((key, str_, num, num_unit))
    return sample


def _decode_location(buf: memoryview) -> _RawLocation:
    loc = _RawLocation()
    for number, value in _fields(buf):
        if number == 1:
            loc.id = _uint(number, value)
        elif number == 2:
            loc.mapping_id = _uint(number, value)
        elif number == 3:
            loc.address = _uint(number, value)
        elif number == 4:
            line = _RawLine()
            for lnum, lvalue in _fields(_message(number, value)):
                if lnum == 1:
                    line.function_id = _uint(lnum, lvalue)
                elif lnum == 2:
                    line.line = _int(lnum, lvalue)
                elif lnum == 3:
                    line.column = _int(lnum, lvalue)
            loc.lines.append(line)
        elif number == 5:
            loc.is_folded = bool(_uint(number, value))
    return loc


def _decode_ints(buf: memoryview, *, known: range, signed: tuple[int, ...] = ()) -> dict[int, int]:
    """A flat message of integer fields (Function, Mapping): field number -> value.

    Fields outside ``known`` are skipped, whatever their type: newer pprof versions add
    fields, and an old reader must still read the rest.
    """
    out: dict[int, int] = {}
    for number, value in _fields(buf):
        if number in known:
            out[number] = _int(number, value) if number in signed else _uint(number, value)
    return out


#: Names of the repeated top-level fields of profile.proto, for limit messages.
_TABLES = {
    1: "sample types",
    2: "samples",
    3: "mappings",
    4: "locations",
    5: "functions",
    6: "strings",
    13: "comments",
}


def _decode_profile(buf: memoryview, *, max_entries: int | None) -> Profile:
    sample_types: list[tuple[int, int]] = []
    raw_samples: list[_RawSample] = []
    raw_mappings: list[dict[int, int]] = []
    raw_locations: list[_RawLocation] = []
    raw_functions: list[dict[int, int]] = []
    strings: list[str] = []
    scalars: dict[int, int] = {}
    comments: list[int] = []
    period_type: tuple[int, int] | None = None

    counts = [0] * 16
    for number, value in _fields(buf):
        if max_entries is not None and number < len(counts):
            # Counted before decoding: the refusal costs no object of the oversized table.
            counts[number] += 1
            if counts[number] > max_entries:
                what = _TABLES.get(number, f"field {number}")
                raise ProfileTooLarge(f"more than {max_entries} {what}")
        if number == 1:
            sample_types.append(_decode_value_type(_message(number, value)))
        elif number == 2:
            raw_samples.append(_decode_sample(_message(number, value)))
        elif number == 3:
            raw_mappings.append(_decode_ints(_message(number, value), known=range(1, 11)))
        elif number == 4:
            raw_locations.append(_decode_location(_message(number, value)))
        elif number == 5:
            raw_functions.append(
                _decode_ints(_message(number, value), known=range(1, 6), signed=(5,))
            )
        elif number == 6:
            try:
                strings.append(str(_message(number, value), "utf-8"))
            except UnicodeDecodeError as exc:
                raise ProfileError(f"string table entry {len(strings)} is not UTF-8") from exc
        elif number in (7, 8, 9, 10, 12, 14, 15):
            scalars[number] = _int(number, value)
        elif number == 11:
            period_type = _decode_value_type(_message(number, value))
        elif number == 13:
            comments += _repeated_ints(number, value, signed=True)

    if strings and strings[0] != "":
        raise ProfileError("string table must start with the empty string")

    def s(index: int) -> str:
        if not 0 <= index < max(len(strings), 1):
            raise ProfileError(f"string index {index} out of range ({len(strings)} strings)")
        return strings[index] if strings else ""

    functions: dict[int, Function] = {}
    for f in raw_functions:
        fid = f.get(1, 0)
        if fid == 0 or fid in functions:
            raise ProfileError(f"function id {fid} is zero or duplicated")
        functions[fid] = Function(
            id=fid,
            name=s(f.get(2, 0)),
            system_name=s(f.get(3, 0)),
            filename=s(f.get(4, 0)),
            start_line=f.get(5, 0),
        )

    mappings: dict[int, Mapping] = {}
    for m in raw_mappings:
        mid = m.get(1, 0)
        if mid == 0 or mid in mappings:
            raise ProfileError(f"mapping id {mid} is zero or duplicated")
        mappings[mid] = Mapping(
            id=mid,
            memory_start=m.get(2, 0),
            memory_limit=m.get(3, 0),
            file_offset=m.get(4, 0),
            filename=s(m.get(5, 0)),
            build_id=s(m.get(6, 0)),
            has_functions=bool(m.get(7)),
            has_filenames=bool(m.get(8)),
            has_line_numbers=bool(m.get(9)),
            has_inline_frames=bool(m.get(10)),
        )

    locations: dict[int, Location] = {}
    for raw in raw_locations:
        if raw.id == 0 or raw.id in locations:
            raise ProfileError(f"location id {raw.id} is zero or duplicated")
        if raw.mapping_id and raw.mapping_id not in mappings:
            raise ProfileError(f"location {raw.id}: unknown mapping id {raw.mapping_id}")
        lines = []
        for rl in raw.lines:
            if rl.function_id and rl.function_id not in functions:
                raise ProfileError(f"location {raw.id}: unknown function id {rl.function_id}")
            fn = functions[rl.function_id] if rl.function_id else None
            lines.append(Line(function=fn, line=rl.line, column=rl.column))
        locations[raw.id] = Location(
            id=raw.id,
            mapping_id=raw.mapping_id,
            address=raw.address,
            lines=tuple(lines),
            is_folded=raw.is_folded,
        )

    types = tuple(ValueType(type=s(t), unit=s(u)) for t, u in sample_types)
    samples = []
    for i, rs in enumerate(raw_samples):
        if len(rs.values) != len(types):
            raise ProfileError(
                f"sample {i} has {len(rs.values)} values for {len(types)} sample types"
            )
        try:
            stack = tuple(locations[lid] for lid in rs.location_ids)
        except KeyError as exc:
            raise ProfileError(f"sample {i}: unknown location id {exc.args[0]}") from exc
        labels = tuple(
            Label(key=s(k), value=s(v), num=n, num_unit=s(u)) for k, v, n, u in rs.labels
        )
        samples.append(Sample(locations=stack, values=tuple(rs.values), labels=labels))

    return Profile(
        sample_types=types,
        samples=tuple(samples),
        mappings=tuple(mappings.values()),
        locations=tuple(locations.values()),
        functions=tuple(functions.values()),
        drop_frames=s(scalars.get(7, 0)),
        keep_frames=s(scalars.get(8, 0)),
        time_nanos=scalars.get(9, 0),
        duration_nanos=scalars.get(10, 0),
        period_type=ValueType(type=s(period_type[0]), unit=s(period_type[1]))
        if period_type
        else None,
        period=scalars.get(12, 0),
        comments=tuple(s(c) for c in comments),
        default_sample_type=s(scalars.get(14, 0)),
        doc_url=s(scalars.get(15, 0)),
    )
