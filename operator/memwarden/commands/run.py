"""``memwarden run``: start the operator (kopf, run by module so handlers register once)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
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
        if settings.leader.election:
            if args.liveness:
                logging.getLogger("memwarden").warning(
                    "--liveness is kopf's endpoint, which runs on the leader only under "
                    "leader election: probe the HTTP API's /healthz instead"
                )
            return runner.run(_run_elected(settings, namespaces))
        runner.run(
            kopf.operator(
                clusterwide=not namespaces,
                namespaces=namespaces,
                liveness_endpoint=args.liveness,
                standalone=True,
            )
        )
    return 0


#: The exit code of a replica that lost the Lease: not 0, so its restart is visible in
#: ``kubectl get pods`` (RESTARTS) and a Job-like supervisor does not take it for success.
LOST_LEADERSHIP_EXIT = 3


async def _run_elected(settings: Settings, namespaces: list[str]) -> int:
    """Serve on every replica; reconcile (kopf) only while holding the Lease (docs/ha.md).

    Following: waits for the Lease, serving admission and the HTTP API meanwhile. Leading:
    kopf runs, and the Lease is renewed beside it. SIGTERM: kopf stops, the Lease is
    released (the next replica takes over at its next retry), then serving stops. Losing
    the Lease (a renewal deadline missed, the Lease taken): the process exits at once,
    before the Lease can expire for the others, as client-go's controllers do; the
    kubelet restarts it as a follower.
    """
    import signal

    import kopf

    from memwarden.handlers import alerts, serving, state
    from memwarden.kube import Kube
    from memwarden.observability import health, metrics

    logger = logging.getLogger("memwarden.leader")
    shared = state.build(settings, namespaces=namespaces or None, kube=Kube.from_environment())
    shared.leading = False
    metrics.LEADER.set(0)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(signum: int) -> None:
        logger.info("%s received: stopping", signal.Signals(signum).name)
        # Out of the Service at once (/readyz 503); the webhook answers on until its drain.
        health.start_draining()
        stopping.set()

    def handle_signals() -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(signum, on_signal, signum)

    handle_signals()
    logger.info("memwarden settings: %s", settings.for_log())
    try:
        serving_memo = await serving.start_serving(shared)
    except kopf.PermanentError as exc:  # a port in use, an unreadable certificate
        logger.error("not serving: %s", exc)
        return 1
    elector = serving.LeaseElector(
        shared.kube,
        namespace=settings.namespace,
        settings=settings.leader,
        identity=serving.identity(settings.leader),
    )
    logger.info(
        "leader election on: Lease %s, identity %s; serving admission and the HTTP API, "
        "reconciling only while leading",
        elector.lease,
        elector.identity,
    )
    try:
        if not await elector.acquire(stopping):
            return 0
        shared.leading = True
        memo = kopf.Memo()
        memo[state.STATE] = shared
        memo[alerts.LEADER_INTAKE] = serving_memo.get(alerts.LEADER_INTAKE) or alerts.LeaderIntake()
        operator = asyncio.create_task(
            serving.run_kopf(memo=memo, namespaces=namespaces, stop_flag=stopping),
            name="kopf (leader)",
        )
        holding = asyncio.create_task(elector.hold(), name="lease renewal")
        done, _ = await asyncio.wait({operator, holding}, return_when=asyncio.FIRST_COMPLETED)
        if holding in done:
            failed = holding.exception()  # a bug in renewing is a loss too: stop leading
            logger.error(
                "leader: this replica (%s) lost Lease %s: %s; exiting so that it stops "
                "reconciling before another replica starts",
                elector.identity,
                elector.lease,
                repr(failed) if failed is not None else holding.result(),
            )
            logging.shutdown()
            os._exit(LOST_LEADERSHIP_EXIT)
        holding.cancel()
        handle_signals()  # kopf replaced them with its own while it ran
        try:
            operator.result()  # kopf's own failure, if any, is this process's
        finally:
            # kopf has stopped (cleanly or not): nothing reconciles here any more, so the
            # next replica may start at once rather than after the Lease expires.
            await elector.release()
        return 0
    finally:
        shared.leading = False
        await serving.stop_serving(serving_memo)
