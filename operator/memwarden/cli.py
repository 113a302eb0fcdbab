"""The ``memwarden`` command line: one sub-command per job, each in its own module.

Every command module exposes ``add_arguments(parser)`` and ``run(args) -> int``; this file
only dispatches, and imports a command's module only when that command runs (so
``memwarden analyze`` does not pay for kopf, and the toolbox image needs no kopf).
Conventions shared by every command (docs/cli.md): ``-o table|wide|json|yaml`` on each
that prints (memwarden.output), ``--version``, and the same CLI as a kubectl plugin
(``kubectl memwarden ...``, the ``kubectl-memwarden`` entry point).
"""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata
import sys
from collections.abc import Sequence

#: name -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "run": ("memwarden.commands.run", "run the operator (kopf, by module)"),
    "crds": ("memwarden.commands.crds", "print or write the CRDs generated from the API models"),
    "recording-rules": (
        "memwarden.commands.recording_rules",
        "print or write the risk queries' recording rules (a Prometheus rules file)",
    ),
    "explain": ("memwarden.commands.explain", "offline: what a policy does to a pod, and why"),
    "recommend": (
        "memwarden.commands.recommend",
        "propose a MemoryPolicy per workload from Prometheus history (KRR and VPA beside)",
    ),
    "capture": ("memwarden.capture.toolbox", "collect evidence from a Go process (the toolbox)"),
    "analyze": (
        "memwarden.commands.analyze",
        "summarise a heap profile or an evidence bundle",
    ),
    "incidents": ("memwarden.commands.incidents", "list, inspect and download incident evidence"),
}


def version() -> str:
    """The installed distribution's version (the image tag and the chart's appVersion)."""
    try:
        return importlib.metadata.version("memwarden")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree, not installed
        return "0+unknown"


def build_parser(only: str | None = None, *, prog: str = "memwarden") -> argparse.ArgumentParser:
    """Build the parser; with ``only``, import just that command's module (fast start)."""
    parser = argparse.ArgumentParser(prog=prog, description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"memwarden {version()}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        if only is not None and name != only:
            continue
        command_parser = sub.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(command_parser)
        command_parser.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None, *, prog: str = "memwarden") -> int:
    """Parse ``argv`` and run the chosen command; the return value is the exit code."""
    args_list = list(sys.argv[1:] if argv is None else argv)
    chosen = next((a for a in args_list if not a.startswith("-")), None)
    if chosen is None and "--version" in args_list:
        chosen = ""  # no command module to import: --version answers at once
    parser = build_parser(only=chosen if chosen in (*COMMANDS, "") else None, prog=prog)
    args = parser.parse_args(args_list)
    result: int = args._run(args)
    return result


def kubectl_plugin() -> int:
    """``kubectl memwarden ...``: kubectl runs ``kubectl-memwarden`` found on PATH."""
    return main(prog="kubectl memwarden")


if __name__ == "__main__":
    sys.exit(main())
