#!/usr/bin/env python3
"""Rewrite the generated field reference inside docs/api.md (dev-only; ``make crds``).

The reference is generated from the same pydantic models as the CRDs
(``memwarden.commands.crds.reference_markdown``), between the markers ``DOC_BEGIN`` and
``DOC_END``; tests/unit/test_api.py fails when it drifts. Users never run this, so it is
no sub-command of the ``memwarden`` CLI.

    PYTHONPATH=operator .venv/bin/python hack/crd_docs.py docs/api.md
"""

from __future__ import annotations

import sys
from pathlib import Path

from memwarden.commands.crds import DOC_BEGIN, DOC_END, reference_markdown


def rewrite_between(path: Path, begin: str, end: str, generated: str) -> None:
    """Replace what lies between the markers ``begin`` and ``end`` (``generated`` holds both)."""
    text = path.read_text()
    try:
        first, last = text.index(begin), text.index(end) + len(end) + 1
    except ValueError:
        sys.exit(f"{path}: the markers {begin!r} and {end!r} are missing")
    path.write_text(text[:first] + generated + text[last:])
    print(f"wrote the generated reference into {path}")


def rewrite(path: Path) -> None:
    rewrite_between(path, DOC_BEGIN, DOC_END, reference_markdown())


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    rewrite(Path(sys.argv[1]))
