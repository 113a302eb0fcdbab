"""``memwarden run``: start the operator (kopf, run by module so handlers register once)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys

from memwarden.settings import Settings

#: How long a thread may keep the GIL once the event loop asks for it (Python's default
#: is 5 ms): admission answers in ~1.5 ms, so a 5 ms wait was a review's p99.
SWITCH_INTERVAL_SECONDS = 0.0005


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--namespace",
        action="append",
        dest="namespaces",
        default=None,
        help="watch only this namespace (repeatable); default: the cluster",
    )
    parser.add_argument("--verbose", action="store_true", help="debug logging")
    parser.add_argument(
        "--dry-run", action="store_true", help="compute and log; never mutate pods or write status"
    )
    parser.add_argument(
        "--liveness", default=None, help="kopf liveness endpoint, e.g. http://0.0.0.0:8080/healthz"
    )


def run(args: argparse.Namespace) -> int:
    import kopf
    import uvloop

    import memwarden.handlers  # noqa: F401  (registers every handler, once)
    from memwarden.handlers import state

    settings = Settings.from_env()
    if args.dry_run:
        settings = settings.model_copy(update={"dry_run": True})
    state.configure(settings)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    namespaces = args.namespaces or []
    state.watch_namespaces(namespaces or None)
    # Work sent to threads (evidence retention, the Kubernetes client) still holds the
    # GIL: each time the event loop wants it back it waits up to the switch interval,
    # 5 ms by default, and a review waits several times (bench/admission_busy_bench.py).
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    # uvloop: the loop that kopf's watches and the admission webhook share answers
    # reviews about twice as fast as asyncio's own (bench/admission_bench.py).
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(
            kopf.operator(
                clusterwide=not namespaces,
                namespaces=namespaces,
                liveness_endpoint=args.liveness,
                standalone=True,
            )
        )
    return 0
