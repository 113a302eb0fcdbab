"""Option strings of JVM and Node.js runtimes: which flag a token sets, and merging ours in.

Pure: strings in, strings out. ``JAVA_TOOL_OPTIONS`` and ``NODE_OPTIONS`` hold many flags
in one variable, so memwarden cannot replace the variable as it does ``GOMEMLIMIT``: it
merges. The container's own text is kept byte for byte; our flags are appended only for
settings it does not make itself. With ``override`` the container's tokens for the
settings we make are cut out (only those tokens) and ours appended.

A *setting* is what several spellings share: ``-Xmx1g``, ``-XX:MaxHeapSize=1g`` and
``-XX:MaxRAMPercentage=75`` all choose the JVM's maximum heap (``-Xmx`` wins over the
percentage in the JVM), so a container that sets any of them keeps its heap.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

__all__ = [
    "JAVA_TOOL_OPTIONS",
    "NODE_OPTIONS",
    "Merge",
    "Token",
    "flag_values",
    "heap_limit",
    "jvm_setting",
    "merge_options",
    "node_setting",
    "tokens",
]

JAVA_TOOL_OPTIONS: Final = "JAVA_TOOL_OPTIONS"
NODE_OPTIONS: Final = "NODE_OPTIONS"

#: Setting names: what memwarden injects, and every spelling that makes the same choice.
HEAP: Final = "heap"
METASPACE: Final = "metaspace"
DIRECT: Final = "direct"
OLD_SPACE: Final = "old-space"

_JVM_PREFIXES: Final = (
    ("-Xmx", HEAP),
    ("-XX:MaxHeapSize=", HEAP),
    ("-XX:MaxRAMPercentage=", HEAP),
    ("-XX:MaxRAMFraction=", HEAP),
    ("-XX:MaxMetaspaceSize=", METASPACE),
    ("-XX:MaxDirectMemorySize=", DIRECT),
)
#: V8 accepts dashes or underscores, and the value after ``=`` or as the next token.
_NODE_OLD_SPACE: Final = re.compile(r"^--max[-_]old[-_]space[-_]size(=.*)?$")


@dataclass(frozen=True)
class Token:
    """One whitespace-separated token and where it lies in the text (quotes kept)."""

    text: str
    start: int
    end: int


def tokens(text: str) -> list[Token]:
    """Split as the JVM (9+) and Node.js do: on white space, except inside quotes."""
    found: list[Token] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        start = i
        quote: str | None = None
        while i < n and (quote is not None or not text[i].isspace()):
            if quote is None and text[i] in "\"'":
                quote = text[i]
            elif quote is not None and text[i] == quote:
                quote = None
            i += 1
        found.append(Token(text=text[start:i], start=start, end=i))
    return found


def jvm_setting(token: str) -> str | None:
    """The setting a JVM option token makes (``heap``...), None for any other option."""
    for prefix, setting in _JVM_PREFIXES:
        if token.startswith(prefix):
            return setting
    return None


def node_setting(token: str) -> str | None:
    """The setting a Node.js option token makes (``old-space``), None for others."""
    return OLD_SPACE if _NODE_OLD_SPACE.match(token) else None


_JVM_SIZE = re.compile(r"^([0-9]+)([kKmMgGtT]?)$")
_JVM_UNITS = {"": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


def heap_limit(flag: str) -> int | None:
    """The bytes an absolute heap flag sets (``-Xmx768m``, ``--max-old-space-size=512``);
    None for a percentage or anything unreadable."""
    for prefix in ("-Xmx", "-XX:MaxHeapSize="):
        if flag.startswith(prefix):
            match = _JVM_SIZE.match(flag[len(prefix) :])
            if match is None:
                return None
            return int(match.group(1)) * _JVM_UNITS[match.group(2).lower()]
    if node_setting(flag) == OLD_SPACE and "=" in flag:
        value = flag.split("=", 1)[1]
        return int(value) * 2**20 if value.isdigit() else None
    return None


def _takes_next(token: str, setting: str | None) -> bool:
    """``--max-old-space-size 512``: the value is the next token."""
    return setting == OLD_SPACE and "=" not in token


@dataclass(frozen=True)
class Merge:
    """The merged variable, and what happened to each of our settings."""

    value: str
    added: tuple[str, ...] = ()
    """Our flags that the value now carries and did not before."""
    kept: tuple[str, ...] = ()
    """The container's own tokens kept for settings we also make (no override)."""
    replaced: tuple[str, ...] = ()
    """The container's tokens cut out for ours (override)."""


def flag_values(text: str, *, setting_of: Callable[[str], str | None]) -> dict[str, str]:
    """Setting -> the token that makes it in ``text`` (the last one: the runtimes' rule)."""
    found: dict[str, str] = {}
    items = tokens(text)
    for i, token in enumerate(items):
        setting = setting_of(token.text)
        if setting is None:
            continue
        shown = token.text
        if _takes_next(token.text, setting) and i + 1 < len(items):
            shown = f"{token.text} {items[i + 1].text}"
        found[setting] = shown
    return found


def merge_options(
    existing: str | None,
    ours: Sequence[str],
    *,
    setting_of: Callable[[str], str | None],
    override: bool = False,
) -> Merge:
    """``existing`` with ``ours`` merged in (see the module docstring).

    Idempotent: merging into a value that already carries our flags changes nothing.
    Every token of ``existing`` survives unless ``override`` and it makes a setting of
    ``ours``; no setting ends up made twice by memwarden.
    """
    return _merge(existing or "", tuple(ours), setting_of, override)


@functools.lru_cache(maxsize=1024)
def _merge(
    text: str, ours: tuple[str, ...], setting_of: Callable[[str], str | None], override: bool
) -> Merge:
    """``merge_options``, cached: a workload's pods carry the same options."""
    wanted = {setting_of(flag): flag for flag in ours}
    if None in wanted:
        raise ValueError(f"not a flag memwarden injects: {wanted[None]!r}")
    items = tokens(text)
    theirs: dict[str, list[int]] = {}
    skip_next = False
    for i, token in enumerate(items):
        if skip_next:
            skip_next = False
            continue
        setting = setting_of(token.text)
        if setting is None:
            continue
        theirs.setdefault(setting, []).append(i)
        if _takes_next(token.text, setting) and i + 1 < len(items):
            theirs[setting].append(i + 1)
            skip_next = True
    cut: set[int] = set()
    added: list[str] = []
    kept: list[str] = []
    replaced: list[str] = []
    for setting, flag in wanted.items():
        assert setting is not None
        positions = theirs.get(setting, [])
        if [items[p].text for p in positions] == [flag]:
            continue  # already exactly ours (merged before)
        if positions and not override:
            kept.append(" ".join(items[p].text for p in positions))
            continue
        if positions:
            replaced.append(" ".join(items[p].text for p in positions))
            cut.update(positions)
        added.append(flag)
    if not cut and not added:
        return Merge(value=text, kept=tuple(kept))
    out, last = [], 0
    for p in sorted(cut):
        out.append(text[last : items[p].start])
        last = items[p + 1].start if p + 1 < len(items) else len(text)
    out.append(text[last:])
    base = "".join(out).strip()
    value = " ".join(part for part in (base, *added) if part)
    return Merge(value=value, added=tuple(added), kept=tuple(kept), replaced=tuple(replaced))
