"""How every ``memwarden`` command prints: ``-o table|wide|json|yaml``, as kubectl does.

``table`` is for people, ``wide`` adds the columns a command has beyond its table (a
command without any prints its table), ``json`` and ``yaml`` are the same document for
scripts. One flag, one set of choices, on every command that prints.

Standard library only (PyYAML imported when asked for): the toolbox image runs commands
that print too.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["FORMATS", "add_output_argument", "format_columns", "render"]

FORMATS = ("table", "wide", "json", "yaml")


def add_output_argument(parser: argparse.ArgumentParser, *, default: str = "table") -> None:
    """The ``-o/--output`` flag, the same on every command."""
    parser.add_argument(
        "-o",
        "--output",
        choices=FORMATS,
        default=default,
        help=f"output format: {', '.join(FORMATS)} (default %(default)s)",
    )


def render(document: Any, *, output: str, table: Callable[[bool], str]) -> str:
    """``document`` as JSON or YAML, else ``table(wide)``; always ends with a newline."""
    if output == "json":
        text = json.dumps(document, indent=2)
    elif output == "yaml":
        import yaml  # only here: the table and JSON forms need no third-party module

        text = yaml.safe_dump(document, sort_keys=False)
    elif output in ("table", "wide"):
        text = table(output == "wide")
    else:
        raise ValueError(f"output: {output!r} is not one of {', '.join(FORMATS)}")
    return text if text.endswith("\n") else text + "\n"


def format_columns(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A kubectl-like table: columns padded, three spaces apart, no trailing blanks."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]
    return "\n".join(
        "   ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in [header, *rows]
    )
