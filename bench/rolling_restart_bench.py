"""Benchmark: rolling restarts of two operator replicas while clients create pods.

The scenario of ``tests/integration/test_rolling_restart.py`` (``memwarden_testing.rolling``:
two ``memwarden run`` replicas behind ``servicelb``, the Service's stand-in, clients
creating pods with server-side dry-run), repeated for ``--rounds`` rolling restarts, for
each client count, with the drain on (``webhook.drain_seconds``) and off for contrast.
Measured per run: pods created, pods admitted unmutated, errors, create latency
p50/p99/max before the restarts, during them and after, connections the balancer sent to
a replica that no longer listened, and how long each replica took to stop and to be
ready again.

    .venv/bin/python bench/rolling_restart_bench.py   # -> bench/results/rolling_restart.json
    .venv/bin/python bench/rolling_restart_bench.py --clients 20 --rounds 1   # quicker
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "hack")]

import devcluster  # noqa: E402
from admission_bench import clear_foreign_webhooks  # noqa: E402
from kubernetes import client  # noqa: E402

from memwarden_testing.cluster import (  # noqa: E402
    api_client,
    delete_namespaces,
    ensure_namespace,
    kubectl,
    unique_name,
)
from memwarden_testing.rolling import Outcome, run_scenario  # noqa: E402


def measure(
    *, admin: Path, kube: client.ApiClient, clients: int, drain_seconds: float, rounds: int
) -> dict[str, Any]:
    """One run; a run that could not finish says why (where the load broke it), and its
    operators' logs are kept."""
    namespace = unique_name(f"roll-{clients}-{'drain' if drain_seconds else 'nodrain'}")
    ensure_namespace(client.CoreV1Api(kube), namespace)
    workdir = Path(tempfile.mkdtemp(prefix="rolling-bench-"))
    try:
        outcome = run_scenario(
            admin=admin,
            kube=kube,
            namespace=namespace,
            workdir=workdir,
            clients=clients,
            drain_seconds=drain_seconds,
            rounds=rounds,
        )
    except AssertionError as exc:
        return {
            "clients": clients,
            "drain_seconds": drain_seconds,
            "failed": str(exc),
            "logs": str(workdir),
        }
    finally:
        delete_namespaces(admin, namespace, check=False)
    shutil.rmtree(workdir, ignore_errors=True)
    return report(outcome, clients=clients, drain_seconds=drain_seconds, rounds=rounds)


def report(outcome: Outcome, *, clients: int, drain_seconds: float, rounds: int) -> dict[str, Any]:
    summary, stats = outcome.summary, outcome.stats
    during = summary.phases["during"]
    seconds = outcome.restarts[-1].ready - outcome.restarts[0].sigterm
    return {
        "clients": clients,
        "drain_seconds": drain_seconds,
        "rolling_restarts": rounds,
        "replica_restarts": len(outcome.restarts),
        "pods_created": summary.created,
        "unmutated": summary.unmutated,
        "errors": summary.errors,
        "first_errors": summary.first_errors,
        "creates_per_second_during": round(during["creates"] / seconds, 1) if seconds else 0.0,
        "latency": summary.phases,
        "balancer": {
            "connections": dict(stats.connections),
            "refused": dict(stats.refused),
            "no_backend": stats.no_backend,
        },
        "restart_seconds": [
            {
                "replica": r.replica,
                "stopped_after": round(r.exited - r.sigterm, 2),
                "ready_after": round(r.ready - r.sigterm, 2),
            }
            for r in outcome.restarts
        ],
    }


def line(result: dict[str, Any]) -> str:
    if "failed" in result:
        return (
            f"clients {result['clients']:>3}  drain {result['drain_seconds']:>3}s  "
            f"FAILED: {result['failed']} (logs in {result['logs']})"
        )
    before, during = result["latency"]["before"], result["latency"]["during"]
    return (
        f"clients {result['clients']:>3}  drain {result['drain_seconds']:>3}s  "
        f"created {result['pods_created']:>6}  unmutated {result['unmutated']:>4}  "
        f"errors {result['errors']:>3}  "
        f"p50/p99/max ms before {before['p50_ms']}/{before['p99_ms']}/{before['max_ms']}  "
        f"during {during['p50_ms']}/{during['p99_ms']}/{during['max_ms']}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--clients", type=int, action="append", help="client threads (repeatable; 20 50 100)"
    )
    parser.add_argument("--rounds", type=int, default=3, help="rolling restarts per run")
    parser.add_argument("--drain-seconds", type=float, default=5.0)
    parser.add_argument("--no-contrast", action="store_true", help="skip the drain-off runs")
    parser.add_argument("--out", default=str(HERE / "results" / "rolling_restart.json"))
    args = parser.parse_args()
    layout = devcluster.default_layout()
    devcluster.up(layout)
    admin = layout.kubeconfig
    kubectl(admin, "apply", "-f", str(REPO / "crds"))
    kubectl(
        admin,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        "crd/memorypolicies.memwarden.dev",
        "crd/memoryincidents.memwarden.dev",
    )
    clear_foreign_webhooks(admin)
    kube = api_client(admin)
    drains = [args.drain_seconds] if args.no_contrast else [args.drain_seconds, 0.0]
    runs = []
    for clients in args.clients or [20, 50, 100]:
        for drain in drains:
            result = measure(
                admin=admin, kube=kube, clients=clients, drain_seconds=drain, rounds=args.rounds
            )
            print(line(result), flush=True)
            runs.append(result)
            output = {
                "scenario": "2 replicas behind servicelb (probe 0.5 s, propagation 1 s), "
                "dry-run creates",
                "runs": runs,
                "python": platform.python_version(),
                "cpus": os.cpu_count(),
            }
            Path(args.out).parent.mkdir(exist_ok=True)
            Path(args.out).write_text(json.dumps(output, indent=2) + "\n")  # after each run
    print(json.dumps(runs, indent=2))


if __name__ == "__main__":
    main()
