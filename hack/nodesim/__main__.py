"""Command line of the node simulator (test infrastructure, not a kubelet).

    .venv/bin/python -m nodesim --kubeconfig .devcluster/kubeconfig   # PYTHONPATH=hack
    .venv/bin/python hack/nodesim/__main__.py --node-name memwarden-sim-1 --metrics-port 0

Runs until SIGTERM or SIGINT, then stops every container process and marks the Node
NotReady (or deletes it with --delete-node-on-exit).
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run by path: import the package from hack/, and keep this directory off sys.path
    # (its module names, such as ``status``, must not shadow anything).
    sys.path[0] = str(Path(__file__).resolve().parents[1])

import argparse
import logging
import os
import shlex
import signal
import threading
from dataclasses import replace

from nodesim.settings import (
    REPO,
    ImageRule,
    NodeResources,
    Settings,
    default_images,
    find_leaky,
    find_memwarden,
)
from nodesim.simulator import Simulator

log = logging.getLogger("nodesim")


def _pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"want KEY=VALUE, got {text!r}")
    return key, value


def _taint(text: str) -> tuple[str, str, str]:
    pair, sep, effect = text.rpartition(":")
    if not sep or effect not in ("NoSchedule", "PreferNoSchedule", "NoExecute"):
        raise argparse.ArgumentTypeError(f"want KEY=VALUE:EFFECT, got {text!r}")
    key, _, value = pair.partition("=")
    return key, value, effect


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nodesim",
        description="memwarden's node simulator: TEST INFRASTRUCTURE standing in for a "
        "kubelet (no container runtime, no isolation).",
    )
    default_kubeconfig = os.environ.get("KUBECONFIG", str(REPO / ".devcluster" / "kubeconfig"))
    defaults = Settings(kubeconfig=Path(default_kubeconfig))
    p.add_argument("--kubeconfig", type=Path, default=Path(default_kubeconfig))
    p.add_argument("--node-name", default=defaults.node_name)
    p.add_argument("--state-dir", type=Path, default=defaults.state_dir)
    p.add_argument("--metrics-host", default=defaults.metrics_host)
    p.add_argument("--metrics-port", type=int, default=defaults.metrics_port, help="0: free port")
    p.add_argument("--pod-cidr", default=defaults.pod_cidr, help="loopback range for pod IPs")
    p.add_argument("--cpu", default=defaults.resources.cpu, help="capacity = allocatable")
    p.add_argument("--memory", default=defaults.resources.memory)
    p.add_argument("--pods", type=int, default=defaults.resources.pods)
    p.add_argument(
        "--image",
        type=_pair,
        action="append",
        default=[],
        metavar="PATTERN=PROGRAM",
        help="run images containing PATTERN with PROGRAM (shell words) as entrypoint; "
        "checked before the built-in rules (memwarden/leaky, memwarden/toolbox)",
    )
    p.add_argument("--leaky-bin", help="default: $MEMWARDEN_LEAKY_BIN or hack/build-leaky.sh")
    p.add_argument("--memwarden-bin", help="default: .venv/bin/memwarden")
    p.add_argument("--label", type=_pair, action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--taint", type=_taint, action="append", default=[], metavar="KEY=VALUE:EFFECT")
    p.add_argument("--delete-node-on-exit", action="store_true")
    p.add_argument(
        "--exit-with-parent",
        action="store_true",
        help="stop (cleanly) when the process that started the simulator goes away: "
        "a killed test run leaves no node behind",
    )
    p.add_argument("--backoff-base", type=float, default=defaults.backoff_base_seconds)
    p.add_argument("--backoff-max", type=float, default=defaults.backoff_max_seconds)
    p.add_argument("--sample-interval", type=float, default=defaults.sample_seconds)
    p.add_argument("--log-level", default="INFO")
    return p


def settings_from(args: argparse.Namespace) -> Settings:
    leaky = args.leaky_bin or find_leaky()
    memwarden = args.memwarden_bin or find_memwarden()
    custom = tuple(
        ImageRule(pattern=pattern, entrypoint=tuple(shlex.split(program)))
        for pattern, program in args.image
    )
    return replace(
        Settings(kubeconfig=args.kubeconfig),
        node_name=args.node_name,
        state_dir=args.state_dir.resolve(),
        metrics_host=args.metrics_host,
        metrics_port=args.metrics_port,
        pod_cidr=args.pod_cidr,
        resources=NodeResources(cpu=args.cpu, memory=args.memory, pods=args.pods),
        images=custom + default_images(leaky=leaky, memwarden=memwarden),
        delete_node_on_exit=args.delete_node_on_exit,
        labels=tuple(args.label),
        taints=tuple(args.taint),
        backoff_base_seconds=args.backoff_base,
        backoff_max_seconds=args.backoff_max,
        sample_seconds=args.sample_interval,
    )


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=args.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    settings = settings_from(args)
    log.info("node simulator (test infrastructure) starting with:\n%s", settings.describe())
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("got signal %d", signum)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    if args.exit_with_parent:
        threading.Thread(
            target=_watch_parent, args=(os.getppid(), stop), name="parent", daemon=True
        ).start()
    return Simulator(settings).run(stop)


def _watch_parent(parent: int, stop: threading.Event) -> None:
    # An orphan is re-parented (to init or a subreaper): the parent pid changes.
    while not stop.wait(1.0):
        if os.getppid() != parent:
            log.warning("parent process %d is gone: stopping", parent)
            stop.set()


if __name__ == "__main__":
    sys.exit(main())
