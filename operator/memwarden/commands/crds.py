"""``memwarden crds``: print the CRDs generated from the API models, or write them.

A user command, not a dev tool: Helm never upgrades CRDs, so after an upgrade
``memwarden crds | kubectl apply --server-side -f -`` applies the installed version's
(docs/chart.md); ``make crds`` writes ``crds/`` with it. The field reference in
docs/api.md comes from the same models through the dev-only ``hack/crd_docs.py``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

import yaml

from memwarden.crdgen import all_crds
from memwarden.output import add_output_argument, format_columns
from memwarden.output import render as render_output

HEADER = "# Generated from operator/memwarden/api.py by `memwarden crds`. Do not edit.\n"


def render(document: dict[str, object]) -> str:
    """One CRD as YAML, in the models' field order, with the do-not-edit header."""
    return HEADER + yaml.safe_dump(document, sort_keys=False, width=100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--write", metavar="DIR", type=Path, help="write one file per CRD into DIR instead"
    )
    add_output_argument(parser, default="yaml")


def crd_table(documents: list[dict[str, Any]], *, wide: bool) -> str:
    """One row per CRD; ``wide`` adds the short names and the printer columns."""
    header = ["NAME", "KIND", "SCOPE", "VERSIONS"] + (["SHORT NAMES", "COLUMNS"] if wide else [])
    rows = []
    for doc in documents:
        spec = doc["spec"]
        row = [
            doc["metadata"]["name"],
            spec["names"]["kind"],
            spec["scope"],
            ",".join(v["name"] for v in spec["versions"]),
        ]
        if wide:
            printer = [c for v in spec["versions"] for c in v.get("additionalPrinterColumns", [])]
            short_names = ",".join(spec["names"].get("shortNames", []))
            columns = ",".join(sorted({c["name"] for c in printer}))
            row += [short_names or "<none>", columns or "<none>"]
        rows.append(row)
    return format_columns(header, rows)


def run(args: argparse.Namespace) -> int:
    documents = all_crds()
    if args.write is not None:
        args.write.mkdir(parents=True, exist_ok=True)
        for file_name, document in documents.items():
            (args.write / file_name).write_text(render(document))
            print(f"wrote {args.write / file_name}")
        return 0
    if args.output == "yaml":  # with the do-not-edit header, ready for kubectl apply -f -
        sys.stdout.write("---\n".join(render(doc) for doc in documents.values()))
        return 0
    items = [dict(doc) for doc in documents.values()]
    listed = {"apiVersion": "v1", "kind": "List", "items": items}
    sys.stdout.write(
        render_output(listed, output=args.output, table=lambda wide: crd_table(items, wide=wide))
    )
    return 0
