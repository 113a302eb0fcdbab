"""``memwarden capture``'s arguments and run: collect, bundle, deliver, summarise."""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import FrameType

from memwarden.capture.plan import (
    ALL_ARTIFACTS,
    ENV_TARGET_PID,
    ENV_UPLOAD_CA,
    ENV_UPLOAD_TOKEN,
    ENV_UPLOAD_URL,
    PTRACE_SKIPPED_REASON,
)
from memwarden.capture.toolbox.bundle import bundle_size_bound, iter_bundle
from memwarden.capture.toolbox.delivery import Delivery, deliver
from memwarden.capture.toolbox.model import DEFAULT_TERMINATION_LOG, MANIFEST_MEMBER, Options, log
from memwarden.capture.toolbox.steps import Collection, build_manifest, collect
from memwarden.capture.toolbox.summary import render_summary, summarize
from memwarden.quantity import QuantityError, parse_bytes

# --- command --------------------------------------------------------------------------


def _artifact_list(text: str) -> tuple[str, ...]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = sorted(set(names) - set(ALL_ARTIFACTS))
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"unknown artifacts {unknown} (choose from {', '.join(ALL_ARTIFACTS)})"
        )
    return tuple(a for a in ALL_ARTIFACTS if a in names)


def _byte_size(text: str) -> int:
    try:
        return parse_bytes(text)
    except QuantityError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def _default_termination_log() -> Path | None:
    configured = os.environ.get("MEMWARDEN_TERMINATION_LOG")
    if configured:
        return Path(configured)
    if DEFAULT_TERMINATION_LOG.exists() and os.access(DEFAULT_TERMINATION_LOG, os.W_OK):
        return DEFAULT_TERMINATION_LOG
    return None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register ``memwarden capture`` arguments on the dispatcher's sub-parser."""
    parser.add_argument(
        "--pid",
        type=int,
        default=int(os.environ.get(ENV_TARGET_PID) or 1),
        help=f"target process (default ${ENV_TARGET_PID}, else 1: the target container's "
        "first process in a shared PID namespace)",
    )
    parser.add_argument(
        "--pprof",
        default=None,
        help="net/http/pprof base URL (default http://$MEMWARDEN_PPROF_HOST:PORT, "
        "host 127.0.0.1: the pod shares one network namespace)",
    )
    parser.add_argument("--pprof-port", type=int, default=6060, help="default %(default)s")
    parser.add_argument(
        "--artifacts",
        type=_artifact_list,
        default=ALL_ARTIFACTS,
        help=f"comma-separated subset of {','.join(ALL_ARTIFACTS)} (default: all)",
    )
    parser.add_argument("--trace-seconds", type=int, default=5, help="default %(default)s")
    parser.add_argument(
        "--max-core-bytes",
        type=_byte_size,
        default=2 << 30,
        help="skip gcore above this VmRSS; bytes or a quantity like 2Gi (default 2Gi)",
    )
    parser.add_argument(
        "--ephemeral-storage-allowance",
        type=_byte_size,
        default=None,
        help="skip gcore when the core (about VmSize) and the capture's other files would "
        "pass this many bytes: the pod's ephemeral-storage limit less its containers' "
        "requests (default: no pod limit)",
    )
    parser.add_argument(
        "--no-ptrace",
        dest="ptrace",
        action="store_false",
        help=f"record gcore as skipped: {PTRACE_SKIPPED_REASON}",
    )
    parser.add_argument(
        "--cgroup-dir", type=Path, default=None, help="the target's cgroup v2 directory"
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=None,
        help="temp files go in a fresh directory under this (on disk, not tmpfs: a core "
        "in tmpfs is memory); removed at the end",
    )
    parser.add_argument("--out", type=Path, default=None, help="write the bundle to this file")
    parser.add_argument(
        "--upload",
        default=os.environ.get(ENV_UPLOAD_URL) or None,
        help=f"PUT the bundle here (default ${ENV_UPLOAD_URL}); bearer token from "
        f"${ENV_UPLOAD_TOKEN}, CA (a file path or PEM text) from ${ENV_UPLOAD_CA}",
    )
    parser.add_argument(
        "--termination-log",
        type=Path,
        default=_default_termination_log(),
        help="write the JSON summary here too (default $MEMWARDEN_TERMINATION_LOG, "
        "else /dev/termination-log when writable)",
    )
    parser.add_argument(
        "--timeout", type=float, default=30.0, help="seconds per step (default %(default)s)"
    )
    parser.add_argument(
        "--gcore-timeout", type=float, default=300.0, help="seconds for gcore (default %(default)s)"
    )
    parser.add_argument("--incident", default=None, help="recorded in the manifest")


def _options(args: argparse.Namespace) -> Options:
    host = os.environ.get("MEMWARDEN_PPROF_HOST") or "127.0.0.1"
    return Options(
        pid=args.pid,
        pprof=args.pprof or f"http://{host}:{args.pprof_port}",
        artifacts=tuple(args.artifacts),
        trace_seconds=args.trace_seconds,
        max_core_bytes=args.max_core_bytes,
        ephemeral_storage_allowance=args.ephemeral_storage_allowance,
        ptrace=args.ptrace,
        cgroup_dir=args.cgroup_dir,
        timeout=args.timeout,
        gcore_timeout=args.gcore_timeout,
        incident=args.incident,
    )


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through `finally`: temp files are removed


def _succeeded(collection: Collection, options: Options, delivery: Delivery) -> bool:
    """The heap profile is the evidence that matters; without it asked for, any artifact."""
    if delivery.error is not None:
        return False
    ok = {e.artifact for e in collection.entries if e.status == "ok"}
    return "heap" in ok if "heap" in options.artifacts else bool(ok)


def run(args: argparse.Namespace) -> int:
    """Collect, bundle, deliver, report; 0 when the heap profile got delivered, else 1."""
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="capture: %(message)s", stream=sys.stderr)
    if args.out is None and args.upload is None:
        print(
            f"memwarden capture: give --out FILE or --upload URL (${ENV_UPLOAD_URL})",
            file=sys.stderr,
        )
        return 2
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _on_sigterm)
    options = _options(args)
    if args.workdir is not None:
        args.workdir.mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="memwarden-capture-", dir=args.workdir))
    try:
        log.info(
            "pid %d, pprof %s, artifacts %s",
            options.pid,
            options.pprof,
            ",".join(options.artifacts),
        )
        collection = collect(options, workdir=workdir)
        manifest = workdir / MANIFEST_MEMBER
        manifest.write_text(json.dumps(build_manifest(options, collection), indent=2) + "\n")
        mtime = int(time.time())
        delivery = deliver(
            lambda: iter_bundle(manifest, collection.entries, mtime=mtime),
            out=args.out,
            upload=args.upload,
            token=os.environ.get(ENV_UPLOAD_TOKEN) or None,
            ca_file=os.environ.get(ENV_UPLOAD_CA) or None,
            timeout=max(args.timeout, 60.0),
            size_bound=bundle_size_bound(manifest, collection.entries, mtime=mtime),
        )
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    code = 0 if _succeeded(collection, options, delivery) else 1
    text = render_summary(summarize(collection, delivery, exit_code=code, pid=options.pid))
    print(text)
    if args.termination_log is not None:
        try:
            args.termination_log.write_text(text)
        except OSError as exc:
            log.warning("cannot write the termination message to %s: %s", args.termination_log, exc)
    return code
