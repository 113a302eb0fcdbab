"""``memwarden recommend``: a MemoryPolicy per workload from its working-set history.

Reads Prometheus (four queries per namespace, not per workload: ``history.py``), groups
pods by owner, and prints memwarden's proposal beside KRR's and VPA's on the same data
(``recommend.py``). ``-o yaml`` is ready for ``kubectl apply``: each policy preceded by
comments saying what it is based on; a leaking workload gets a note, not a policy.

Exit codes: 0 done (also when a workload leaks), 1 Prometheus failed or had no data for
the namespace, 2 bad input (the message names the flag).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from memwarden.commands.explain import InputError, add_kubelet_profile_arguments, load_profile
from memwarden.history import NamespaceHistory, fetch, sanitised
from memwarden.output import add_output_argument, format_columns, render
from memwarden.quantity import QuantityError, approximate_bytes, parse_duration
from memwarden.recommend import (
    REQUEST_QUANTILE,
    Incident,
    Options,
    Selector,
    WorkloadRecommendation,
    as_document,
    last_incidents,
    policy_document,
    recommend,
)
from memwarden.risk.adapters.prometheus import PrometheusClient, PrometheusError
from memwarden.timefmt import parse_time


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--prometheus", required=True, help="Prometheus base URL")
    parser.add_argument("-n", "--namespace", required=True, help="the workloads' namespace")
    parser.add_argument(
        "-l",
        "--selector",
        default="",
        help="pod label selector (key=value, key!=value, key, !key); needs kube_pod_labels",
    )
    parser.add_argument("--window", default="7d", help="history to read (default 7d)")
    parser.add_argument("--end", help="end of the window, RFC 3339 or unix seconds (default: now)")
    parser.add_argument(
        "--scrape-interval",
        default="30s",
        help="Prometheus' scrape interval, for the expected sample count (default 30s)",
    )
    # yaml (the default) is the policies themselves, commented, ready for kubectl apply.
    add_output_argument(parser, default="yaml")
    parser.add_argument(
        "--no-go", action="store_true", help="propose no GOMEMLIMIT (not Go services)"
    )
    parser.add_argument(
        "--kubeconfig",
        help="for a leaking workload's last MemoryIncident (default: $KUBECONFIG,"
        " ~/.kube/config; none: the note says where to look)",
    )
    parser.add_argument("--timeout", type=float, default=60.0, help="per query, seconds")
    add_kubelet_profile_arguments(parser)  # the kubelet profile, as `memwarden explain` takes it


def _seconds(flag: str, text: str) -> float:
    """A duration, with days (``7d``, ``1d12h``) as Prometheus writes them."""
    days, _, rest = text.strip().rpartition("d") if "d" in text else ("", "", text.strip())
    try:
        seconds = parse_duration(rest) if rest else 0.0
        if days:
            if not days.isdigit():
                raise QuantityError(f"not a duration: {text!r} (examples: 7d, 36h, 1d12h)")
            seconds += int(days) * 86400
    except QuantityError as exc:
        raise InputError(f"{flag}: {exc}") from exc
    if seconds <= 0:
        raise InputError(f"{flag}: must be positive, got {text!r}")
    return seconds


def _end(text: str | None) -> dt.datetime:
    if text is None:
        return dt.datetime.now(dt.UTC)
    try:
        return dt.datetime.fromtimestamp(float(text), dt.UTC)
    except ValueError:
        pass
    parsed = parse_time(text)
    if parsed is None:
        raise InputError(f"--end: not RFC 3339 or unix seconds: {text!r}")
    return parsed


def _selector(text: str) -> Selector:
    """The selector, its keys as kube-state-metrics writes them (``app.kubernetes.io/x``
    -> ``app_kubernetes_io_x``)."""
    try:
        parsed = Selector.parse(text)
    except ValueError as exc:
        raise InputError(str(exc)) from exc
    return Selector(
        equals={sanitised(k): v for k, v in parsed.equals.items()},
        differs={sanitised(k): v for k, v in parsed.differs.items()},
        exists=frozenset(sanitised(k) for k in parsed.exists),
        absent=frozenset(sanitised(k) for k in parsed.absent),
    )


def find_incidents(kubeconfig: str | None, *, namespace: str) -> dict[str, Incident] | None:
    """Pod -> last MemoryIncident, or None when no cluster is reachable (the note then says
    where to look). Only called when a workload leaks."""
    path = kubeconfig or os.environ.get("KUBECONFIG") or str(Path.home() / ".kube" / "config")
    if not Path(path.split(os.pathsep)[0]).exists():
        return None
    # Imported here: recommend without a leak needs no Kubernetes client.
    from kubernetes import client, config
    from kubernetes.config.config_exception import ConfigException

    from memwarden.kube import INCIDENTS, Kube, KubeError

    configuration = client.Configuration()
    try:
        config.load_kube_config(config_file=path, client_configuration=configuration)  # type: ignore[no-untyped-call]
        objects = Kube(client.ApiClient(configuration)).list_objects(INCIDENTS, namespace=namespace)
    except (ConfigException, KubeError, OSError, yaml.YAMLError):
        return None
    return last_incidents(objects)


def compute(args: argparse.Namespace) -> tuple[list[WorkloadRecommendation], NamespaceHistory]:
    window = _seconds("--window", args.window)
    interval = _seconds("--scrape-interval", args.scrape_interval)
    if window < 2 * 3600:
        raise InputError("--window: at least 2h (the history is read in hourly peaks)")
    if not re.fullmatch(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", args.namespace):
        raise InputError(f"--namespace: not a namespace name: {args.namespace!r}")
    selector = _selector(args.selector)
    end = _end(args.end)
    options = Options(
        namespace=args.namespace,
        window=window,
        scrape_interval=interval,
        profile=load_profile(args).profile(),
        go=not args.no_go,
    )
    client = PrometheusClient(args.prometheus, timeout=args.timeout)
    try:
        history = fetch(client, namespace=args.namespace, window=window, end=end)
    finally:
        client.close()
    if not history.containers:
        raise PrometheusError(
            f"no container_memory_working_set_bytes for namespace {args.namespace} in the"
            f" {args.window} before {end.isoformat()}"
        )

    def run(incidents: dict[str, Incident] | None) -> list[WorkloadRecommendation]:
        try:
            return recommend(
                history.containers,
                options=options,
                end=end.timestamp(),
                owners=history.owners,
                pod_labels=history.pod_labels,
                selector=selector,
                incidents=incidents,
            )
        except ValueError as exc:
            raise InputError(str(exc)) from exc

    workloads = run(None)
    if any(w.leaking for w in workloads):
        incidents = find_incidents(args.kubeconfig, namespace=args.namespace)
        if incidents is not None:
            workloads = run(incidents)
    return workloads, history


def render_yaml(workloads: Sequence[WorkloadRecommendation], *, namespace: str) -> str:
    """Policies for ``kubectl apply``, each under comments saying what it rests on."""
    chunks = []
    for workload in workloads:
        pods = len(workload.pods)
        lines = [
            f"# {workload.owner.kind} {workload.owner.name} ({pods} pod{'s' if pods > 1 else ''})"
        ]
        for c in workload.containers:
            b = c.basis
            lines.append(
                f"#   {c.container}: peak {approximate_bytes(b.peak)},"
                f" p{round(REQUEST_QUANTILE * 100)} {approximate_bytes(b.request_quantile)},"
                f" {b.samples} samples, {b.coverage:.0%} of the window, OOM kills {b.oom_kills},"
                f" restarts {'unknown' if b.restarts is None else b.restarts};"
                f" confidence {b.confidence}"
            )
            lines.append(
                f"#   {c.container}: anchors KRR simple {approximate_bytes(c.krr)},"
                f" VPA target {approximate_bytes(c.vpa)}"
            )
            lines += [f"#   {c.container}: {note}" for note in c.notes]
        lines += [f"#   {note}" for note in workload.notes]
        policy = policy_document(workload, namespace=namespace)
        body = "\n".join(lines) + "\n"
        if policy is None:
            body += "#   no policy proposed: fix the leak first\n"
        else:
            body += yaml.safe_dump(policy, sort_keys=False)
        chunks.append(body)
    return "---\n".join(chunks)


def _cell(value: int | None) -> str:
    return "-" if value is None else approximate_bytes(value)


def render_table(workloads: Sequence[WorkloadRecommendation]) -> str:
    quantile = f"p{round(REQUEST_QUANTILE * 100)}"
    header = (
        "workload",
        "container",
        "pods",
        "samples",
        "coverage",
        quantile,
        "peak",
        "oom",
        "request",
        "limit",
        "memory.high",
        "GOMEMLIMIT",
        "KRR",
        "VPA",
        "confidence",
        "note",
    )
    rows: list[tuple[str, ...]] = []
    for w in workloads:
        for c in w.containers:
            b = c.basis
            rows.append(
                (
                    f"{w.owner.kind}/{w.owner.name}",
                    c.container + ("" if c.container == w.governed else " (not governed)"),
                    str(b.pods),
                    str(b.samples),
                    f"{b.coverage:.0%}",
                    _cell(b.request_quantile),
                    _cell(b.peak),
                    str(b.oom_kills),
                    _cell(c.request),
                    _cell(c.limit),
                    _cell(c.memory_high),
                    c.gomemlimit or "-",
                    _cell(c.krr),
                    _cell(c.vpa),
                    b.confidence,
                    "LEAK" if c.leak else ("OOM" if b.oom_kills else ""),
                )
            )
    lines = [format_columns(header, rows)]
    for w in workloads:
        for c in w.containers:
            lines += [f"{w.owner.kind}/{w.owner.name} {c.container}: {n}" for n in c.notes]
    return "\n".join(lines) + "\n"


def run(args: argparse.Namespace) -> int:
    try:
        workloads, history = compute(args)
    except InputError as exc:
        print(f"memwarden recommend: {exc}", file=sys.stderr)
        return 2
    except PrometheusError as exc:
        print(f"memwarden recommend: {exc}", file=sys.stderr)
        return 1
    if args.output == "yaml":  # the policies themselves, commented, for kubectl apply
        sys.stdout.write(render_yaml(workloads, namespace=args.namespace))
        return 0
    doc: dict[str, Any] = {
        "namespace": args.namespace,
        "window": args.window,
        "prometheusQueries": history.queries,
        "workloads": [as_document(w, namespace=args.namespace) for w in workloads],
    }
    # The table has every column already: wide is the table.
    sys.stdout.write(render(doc, output=args.output, table=lambda _wide: render_table(workloads)))
    return 0
