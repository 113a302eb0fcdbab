"""``memwarden crds``: print the CRDs generated from the API models, or write them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

from memwarden.api import all_crds

HEADER = "# Generated from operator/memwarden/api.py by `memwarden crds`. Do not edit.\n"


def render(document: dict[str, object]) -> str:
    """One CRD as YAML, in the models' field order, with the do-not-edit header."""
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write", metavar="DIR", type=Path, help="write one file per CRD into DIR instead"
    )


def run(args: argparse.Namespace) -> int:
    documents = all_crds()
    if args.write is None:
        sys.stdout.write("---\n".join(render(doc) for doc in documents.values()))
        return 0
    args.write.mkdir(parents=True, exist_ok=True)
    for file_name, document in documents.items():
        (args.write / file_name).write_text(render(document))
        print(f"wrote {args.write / file_name}")
    return 0
