"""Kubernetes quantities, Go byte sizes and durations: parsing and formatting.

Pure: no I/O, no Kubernetes client. Memory is always handled as an ``int`` of bytes
inside memwarden; strings exist only at the edges (CRD fields, env values, output).
"""

from __future__ import annotations

import math
import re
from decimal import Decimal, InvalidOperation

__all__ = [
    "DURATION_PATTERN",
    "QUANTITY_PATTERN",
    "QuantityError",
    "approximate_bytes",
    "format_bytes",
    "format_go_bytes",
    "parse_bytes",
    "parse_duration",
    "parse_millicores",
    "readable_bytes",
]

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50, "Ei": 2**60}
_DECIMAL = {
    "n": Decimal("1e-9"),
    "u": Decimal("1e-6"),
    "m": Decimal("1e-3"),
    "": Decimal(1),
    "k": Decimal("1e3"),
    "M": Decimal("1e6"),
    "G": Decimal("1e9"),
    "T": Decimal("1e12"),
    "P": Decimal("1e15"),
    "E": Decimal("1e18"),
}

#: The grammar of a Kubernetes resource quantity (apimachinery's ``resource.Quantity``),
#: used verbatim as the CRD ``pattern`` so ``kubectl apply`` rejects garbage early.
QUANTITY_PATTERN = r"^([+-]?[0-9.]+)([eE][+-]?[0-9]+|[numkMGTPE]|[KMGTPE]i)?$"
_QUANTITY_RE = re.compile(QUANTITY_PATTERN)

#: A Go/Prometheus style duration: one or more ``<int><unit>`` with s, m, h (and ms).
DURATION_PATTERN = r"^([0-9]+(ms|s|m|h))+$"
_DURATION_PART_RE = re.compile(r"([0-9]+)(ms|s|m|h)")
_DURATION_SECONDS = {"ms": Decimal("0.001"), "s": Decimal(1), "m": Decimal(60), "h": Decimal(3600)}

_GO_UNITS = (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10))


class QuantityError(ValueError):
    """A string that is not a valid quantity or duration; the message says which."""


def _parse_decimal(value: str | int) -> Decimal:
    """The exact value of a quantity, before any rounding."""
    if isinstance(value, bool):
        raise QuantityError(f"not a quantity: {value!r}")
    if isinstance(value, int):
        return Decimal(value)
    text = str(value).strip()
    match = _QUANTITY_RE.match(text)
    if not match:
        raise QuantityError(f"not a Kubernetes quantity: {value!r} (examples: 512Mi, 1Gi, 2G)")
    try:
        number = Decimal(match.group(1))
    except InvalidOperation as exc:
        raise QuantityError(f"not a Kubernetes quantity: {value!r}") from exc
    suffix = match.group(2) or ""
    if suffix in _BINARY:
        return number * _BINARY[suffix]
    if suffix in _DECIMAL:
        return number * _DECIMAL[suffix]
    return number * (Decimal(10) ** int(suffix[1:]))  # exponent form, e.g. 1e9


def parse_bytes(value: str | int) -> int:
    """Parse a Kubernetes memory quantity into bytes, rounding fractions up like the API."""
    scaled = _parse_decimal(value)
    if scaled < 0:
        raise QuantityError(f"negative quantity: {value!r}")
    return math.ceil(scaled)


def parse_millicores(value: str | int) -> int:
    """Parse a CPU quantity (``500m``, ``2``) into millicores, rounding up like the API."""
    scaled = _parse_decimal(value)
    if scaled < 0:
        raise QuantityError(f"negative quantity: {value!r}")
    return math.ceil(scaled * 1000)


def format_bytes(n: int) -> str:
    """Format bytes as the shortest exact binary quantity (``1Gi``), else plain bytes."""
    if n < 0:
        raise QuantityError(f"negative byte count: {n}")
    if n == 0:
        return "0"
    for suffix, size in sorted(_BINARY.items(), key=lambda item: -item[1]):
        if n % size == 0:
            return f"{n // size}{suffix}"
    return str(n)


def approximate_bytes(n: int) -> str:
    """Bytes for tables, in the largest binary unit they fill, to three significant figures
    as ``go tool pprof`` writes them (``2040107008`` -> ``1.90Gi``); signed, for growth.
    Not exact: JSON outputs and the cgroup files keep exact values."""
    size = float(abs(n))
    sign = "-" if n < 0 else ""
    if size < 1024:
        return f"{n}"
    for suffix in ("Ki", "Mi", "Gi", "Ti", "Pi", "Ei"):
        size /= 1024
        if size < 1023.5 or suffix == "Ei":  # what would round to 1024 takes the next unit
            break
    # Decided on the rounded value, so 9.996 gives 10.0, never 10.00.
    decimals = 2 if size < 9.995 else 1 if size < 99.95 else 0
    return f"{sign}{size:.{decimals}f}{suffix}"


def readable_bytes(n: int) -> str:
    """Bytes for people: the shortest exact quantity when it is a whole number of MiB or
    more (``1Gi``), else the byte count, as a cgroup file shows it, with an approximation
    (``2040107008 (~1.90Gi)`` rather than ``1992292Ki``)."""
    text = format_bytes(n)
    if n < 2**20 or text.endswith(("Mi", "Gi", "Ti", "Pi", "Ei")):
        return text
    return f"{n} (~{approximate_bytes(n)})"


def format_go_bytes(n: int) -> str:
    """Format bytes for ``GOMEMLIMIT`` with Go's suffixes (``1536MiB``); exact, never rounded."""
    if n < 0:
        raise QuantityError(f"negative byte count: {n}")
    for suffix, size in _GO_UNITS:
        if n and n % size == 0:
            return f"{n // size}{suffix}"
    return f"{n}B"


def parse_duration(value: str) -> float:
    """Parse ``90s``, ``10m``, ``1h30m`` into seconds."""
    text = value.strip()
    if not re.fullmatch(DURATION_PATTERN, text):
        raise QuantityError(f"not a duration: {value!r} (examples: 30s, 10m, 1h30m)")
    total = sum(
        (
            Decimal(number) * _DURATION_SECONDS[unit]
            for number, unit in _DURATION_PART_RE.findall(text)
        ),
        Decimal(0),
    )
    return float(total)
