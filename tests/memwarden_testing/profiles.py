"""Test-side encoder for pprof's ``profile.proto``: builds small profiles by hand.

Independent of the decoder under test (``memwarden.capture.profile``), so a test states
its stacks and values, gets real wire bytes, and checks the numbers computed from them.

A stack is leaf first, like ``Sample.location_id``. Each frame is:
- ``"pkg.fn"``: a location with one line of that function;
- ``("inner", "outer")``: one location with inlined frames, innermost first;
- ``"0x4000"``: an unsymbolized location (an address and no lines).
Equal frames share one location, as in real profiles.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

Frame = str | tuple[str, ...]

HEAP_TYPES: tuple[tuple[str, str], ...] = (
    ("alloc_objects", "count"),
    ("alloc_space", "bytes"),
    ("inuse_objects", "count"),
    ("inuse_space", "bytes"),
)
GOROUTINE_TYPES: tuple[tuple[str, str], ...] = (("goroutine", "count"),)


def varint(n: int) -> bytes:
    """Unsigned LEB128; negative numbers as 64-bit two's complement, as protobuf does."""
    n &= (1 << 64) - 1
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def key(number: int, wire: int) -> bytes:
    return varint(number << 3 | wire)


def field_varint(number: int, value: int) -> bytes:
    return key(number, 0) + varint(value)


def field_bytes(number: int, data: bytes) -> bytes:
    return key(number, 2) + varint(len(data)) + data


def field_fixed64(number: int, value: int) -> bytes:
    return key(number, 1) + value.to_bytes(8, "little")


def field_fixed32(number: int, value: int) -> bytes:
    return key(number, 5) + value.to_bytes(4, "little")


def repeated(number: int, values: Iterable[int], *, packed: bool) -> bytes:
    values = list(values)
    if packed:
        return field_bytes(number, b"".join(varint(v) for v in values)) if values else b""
    return b"".join(field_varint(number, v) for v in values)


@dataclass
class ProfileBuilder:
    """Accumulates samples; :meth:`encode` returns the raw message, :meth:`gzip` the file."""

    sample_types: Sequence[tuple[str, str]] = (("inuse_space", "bytes"),)
    packed: bool = True
    time_nanos: int = 0
    default_sample_type: str = ""
    _strings: dict[str, int] = field(default_factory=lambda: {"": 0})
    _functions: dict[str, int] = field(default_factory=dict)
    _locations: dict[Frame, int] = field(default_factory=dict)
    _samples: list[bytes] = field(default_factory=list)

    def string(self, text: str) -> int:
        return self._strings.setdefault(text, len(self._strings))

    def function(self, name: str) -> int:
        return self._functions.setdefault(name, len(self._functions) + 1)

    def location(self, frame: Frame) -> int:
        if frame not in self._locations:
            names = () if _is_address(frame) else (frame,) if isinstance(frame, str) else frame
            for name in names:
                self.function(name)
            self._locations[frame] = len(self._locations) + 1
        return self._locations[frame]

    def sample(
        self, stack: Sequence[Frame], *values: int, labels: dict[str, str] | None = None
    ) -> ProfileBuilder:
        if len(values) != len(self.sample_types):
            raise ValueError(f"{len(values)} values for {len(self.sample_types)} sample types")
        body = repeated(1, (self.location(f) for f in stack), packed=self.packed)
        body += repeated(2, values, packed=self.packed)
        for k, v in (labels or {}).items():
            body += field_bytes(
                3, field_varint(1, self.string(k)) + field_varint(2, self.string(v))
            )
        self._samples.append(body)
        return self

    def _value_type(self, type_: str, unit: str) -> bytes:
        return field_varint(1, self.string(type_)) + field_varint(2, self.string(unit))

    def encode(self) -> bytes:
        out = b"".join(field_bytes(1, self._value_type(t, u)) for t, u in self.sample_types)
        out += b"".join(field_bytes(2, s) for s in self._samples)
        out += field_bytes(
            3,
            field_varint(1, 1)
            + field_varint(2, 0x400000)
            + field_varint(3, 0x800000)
            + field_varint(5, self.string("/app/leaky"))
            + field_varint(7, 1),
        )
        for frame, loc_id in self._locations.items():
            body = field_varint(1, loc_id) + field_varint(2, 1)
            if _is_address(frame):
                body += field_varint(3, int(str(frame), 16))
            else:
                body += field_varint(3, 0x400000 + 16 * loc_id)
                names = (frame,) if isinstance(frame, str) else frame
                for depth, name in enumerate(names):
                    line = field_varint(1, self.function(name)) + field_varint(2, 10 + depth)
                    body += field_bytes(4, line)
            out += field_bytes(4, body)
        for name, fn_id in self._functions.items():
            out += field_bytes(
                5,
                field_varint(1, fn_id)
                + field_varint(2, self.string(name))
                + field_varint(3, self.string(name))
                + field_varint(4, self.string(name.split(".")[0] + ".go"))
                + field_varint(5, 1),
            )
        out += field_varint(9, self.time_nanos) if self.time_nanos else b""
        out += field_bytes(11, self._value_type("space", "bytes")) + field_varint(12, 524288)
        if self.default_sample_type:
            out += field_varint(14, self.string(self.default_sample_type))
        # The string table last, once every string above has been interned.
        return out + b"".join(field_bytes(6, s.encode()) for s in self._strings)

    def gzip(self) -> bytes:
        return gzip.compress(self.encode(), mtime=0)


def _is_address(frame: Frame) -> bool:
    return isinstance(frame, str) and frame.startswith("0x")


def make_profile(
    samples: Iterable[tuple[Sequence[Frame], int]],
    *,
    sample_type: tuple[str, str] = ("inuse_space", "bytes"),
    time_nanos: int = 0,
) -> bytes:
    """A gzip-compressed one-type profile from ``(stack, value)`` pairs."""
    builder = ProfileBuilder(sample_types=(sample_type,), time_nanos=time_nanos)
    for stack, value in samples:
        builder.sample(stack, value)
    return builder.gzip()


def make_goroutine_profile(stacks: Iterable[tuple[Sequence[Frame], int]]) -> bytes:
    """A goroutine profile: each stack with the number of goroutines parked on it."""
    return make_profile(stacks, sample_type=GOROUTINE_TYPES[0])


# --- hostile profiles: what a tenant's own process could serve at /debug/pprof/heap ----


def sample_flood(samples: int, *, function: str = "main.flood") -> bytes:
    """A heap profile of ``samples`` identical one-frame samples, gzip-compressed: tens of
    KiB on the wire, one Python object (and more) per sample once decoded."""
    builder = ProfileBuilder(sample_types=HEAP_TYPES)
    builder.sample([function], 1, 1024, 1, 1024)
    sample = field_bytes(2, builder._samples.pop())  # repeated below; the rest is the head
    head = builder.encode()
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    out = [compressor.compress(head)]
    block = sample * 65536
    for _ in range(samples // 65536):
        out.append(compressor.compress(block))
    out.append(compressor.compress(sample * (samples % 65536)))
    out.append(compressor.flush())
    return b"".join(out)


def gzip_bomb(decompressed: int) -> bytes:
    """gzip of ``decompressed`` zero bytes (about 1000:1): not a profile, but a reader must
    inflate it to find out."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    zeros = bytes(2**20)
    out = [compressor.compress(zeros) for _ in range(decompressed // len(zeros))]
    out.append(compressor.compress(bytes(decompressed % len(zeros))))
    out.append(compressor.flush())
    return b"".join(out)
