"""``memwarden incidents``: list and inspect MemoryIncidents, download their evidence.

``list`` and ``get`` read MemoryIncident objects with the user's kubeconfig, as kubectl
would. ``download`` fetches the bundle from the evidence API and checks its sha256
against the incident's ``status.bundleSha256`` before the file appears.

The evidence API authenticates callers with a TokenReview for its own audience
(``memwarden``), so ``download`` sends a token made for it: ``--service-account
[NS/]NAME`` asks the API server (TokenRequest, with the kubeconfig's credentials, a client
certificate included) for a 10-minute token of that ServiceAccount for the audience;
``--evidence-token`` passes one made elsewhere (``kubectl create token SA --audience
memwarden``). Without either, the Kubernetes token is sent as it is, which an operator
accepts only if configured to accept the API server's audience too. ``--token`` is for
the Kubernetes API and, like kubectl's, replaces the kubeconfig's credentials.

Errors are one line on stderr and exit code 2; never a traceback.
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import ipaddress
import json
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlsplit

import requests
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from memwarden.api import GROUP, VERSION
from memwarden.output import add_output_argument, format_columns, render
from memwarden.quantity import approximate_bytes
from memwarden.timefmt import format_age, parse_time

__all__ = [
    "DEFAULT_AUDIENCE",
    "EVIDENCE_AUDIENCE_ENV",
    "EVIDENCE_CA_ENV",
    "EVIDENCE_URL_ENV",
    "IncidentRow",
    "IncidentsError",
    "add_arguments",
    "incident_row",
    "render_table",
    "run",
]

EVIDENCE_URL_ENV = "MEMWARDEN_EVIDENCE_URL"
EVIDENCE_CA_ENV = "MEMWARDEN_EVIDENCE_CA"
EVIDENCE_AUDIENCE_ENV = "MEMWARDEN_EVIDENCE_AUDIENCE"
#: The evidence API's audience by default (the operator's ``evidence_token_audiences``).
DEFAULT_AUDIENCE = "memwarden"
#: Tokens asked for a download live this long: a download, not a session.
_TOKEN_SECONDS = 600
PLURAL = "memoryincidents"
#: Connect / read timeouts: a download may pause while the server reads a cold PVC.
_HTTP_TIMEOUT = (10.0, 120.0)
_KUBE_TIMEOUT = 30.0
_CHUNK = 1024 * 1024
_TOP_WIDTH = 60


class IncidentsError(Exception):
    """A failure to report in one line."""


# --- pure: rows and formatting --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IncidentRow:
    """One line of ``memwarden incidents list``."""

    namespace: str
    name: str
    pod: str
    signal: str
    phase: str
    age: str
    bundle: str
    top: str
    container: str = "<none>"
    source: str = "<none>"
    reason: str = "<none>"


def incident_row(obj: Mapping[str, Any], *, now: dt.datetime, wide: bool = False) -> IncidentRow:
    """The table row of a MemoryIncident object (as the API returns it); ``wide`` keeps the
    top function whole."""
    metadata = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    status = obj.get("status") or {}
    created = parse_time(metadata.get("creationTimestamp"))
    size = status.get("bundleBytes")
    top = ((status.get("analysis") or {}).get("top") or [{}])[0].get("function") or ""
    trigger = spec.get("trigger") or {}
    if len(top) > _TOP_WIDTH and not wide:
        top = "…" + top[-(_TOP_WIDTH - 1) :]  # the end of a Go symbol is the telling part
    return IncidentRow(
        namespace=str(metadata.get("namespace", "")),
        name=str(metadata.get("name", "")),
        pod=str(spec.get("pod") or "<none>"),
        signal=str(trigger.get("signal") or "<none>"),
        phase=str(status.get("phase") or "Pending"),
        age=format_age((now - created).total_seconds()) if created else "<unknown>",
        bundle=approximate_bytes(int(size)) if isinstance(size, int) else "<none>",
        top=top or "<none>",
        container=str(spec.get("container") or "<none>"),
        source=str(trigger.get("source") or "<none>"),
        reason=str(status.get("reason") or "<none>"),
    )


def render_table(rows: Sequence[IncidentRow], *, all_namespaces: bool, wide: bool = False) -> str:
    """A kubectl-like table; ``wide`` adds the container, the trigger's source and the
    phase's reason."""
    header = ["NAME", "POD", "SIGNAL", "PHASE", "AGE", "BUNDLE", "TOP FUNCTION"]
    lines = [[r.name, r.pod, r.signal, r.phase, r.age, r.bundle, r.top] for r in rows]
    if wide:
        header += ["CONTAINER", "SOURCE", "REASON"]
        for line, row in zip(lines, rows, strict=True):
            line += [row.container, row.source, row.reason]
    if all_namespaces:
        header.insert(0, "NAMESPACE")
        for line, row in zip(lines, rows, strict=True):
            line.insert(0, row.namespace)
    return format_columns(header, lines)


def _without_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """As kubectl prints objects: managedFields are noise to a reader."""
    metadata = obj.get("metadata")
    if isinstance(metadata, dict):
        metadata.pop("managedFields", None)
    return obj


# --- adapters: kubeconfig, Kubernetes API, evidence API ---------------------------------


@dataclass(frozen=True, slots=True)
class _Kube:
    api: client.ApiClient
    namespace: str
    token: str | None


@contextmanager
def _kube(args: argparse.Namespace) -> Iterator[_Kube]:
    """An ApiClient from the user's kubeconfig (``--token`` replaces its credentials)."""
    configuration = client.Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig,
            context=args.context,
            client_configuration=configuration,
        )
        contexts, active = config.list_kube_config_contexts(  # type: ignore[no-untyped-call]
            config_file=args.kubeconfig
        )
    except (ConfigException, OSError, yaml.YAMLError) as exc:
        raise IncidentsError(f"kubeconfig: {exc}") from exc
    chosen = next((c for c in contexts if c.get("name") == args.context), None) or active
    namespace = args.namespace or (chosen or {}).get("context", {}).get("namespace") or "default"
    if args.token:
        # As kubectl does: the token is the identity; the client certificate is dropped.
        configuration.cert_file = None
        configuration.key_file = None
        configuration.api_key = {"authorization": f"Bearer {args.token}"}
        configuration.api_key_prefix = {}
        configuration.refresh_api_key_hook = None
    token = args.token
    if not token:
        # A static token or an exec plugin's (the hook refreshes it); None with a client cert.
        header = configuration.get_api_key_with_prefix("authorization") or ""
        scheme, _, value = header.partition(" ")
        token = value.strip() if scheme.lower() == "bearer" and value.strip() else None
    with client.ApiClient(configuration) as api:
        yield _Kube(api=api, namespace=namespace, token=token)


def _api_message(exc: ApiException) -> str:
    try:
        message = json.loads(exc.body or "{}").get("message")
    except (ValueError, AttributeError):
        message = None
    return f"Kubernetes API: {exc.status} {exc.reason}" + (f": {message}" if message else "")


def _incident(kube: _Kube, name: str) -> dict[str, Any]:
    custom = client.CustomObjectsApi(kube.api)
    try:
        obj = custom.get_namespaced_custom_object(
            GROUP, VERSION, kube.namespace, PLURAL, name, _request_timeout=_KUBE_TIMEOUT
        )
    except ApiException as exc:
        if exc.status == 404:
            raise IncidentsError(
                f'memoryincident "{name}" not found in namespace "{kube.namespace}"'
            ) from exc
        raise IncidentsError(_api_message(exc)) from exc
    return _as_dict(obj)


def _as_dict(obj: object) -> dict[str, Any]:
    """The custom-objects API returns parsed JSON typed as ``object``."""
    if not isinstance(obj, dict):
        raise IncidentsError(f"Kubernetes API: unexpected answer {str(obj)[:80]!r}")
    return obj


def _incidents(kube: _Kube, *, all_namespaces: bool) -> dict[str, Any]:
    custom = client.CustomObjectsApi(kube.api)
    try:
        if all_namespaces:
            listed = custom.list_cluster_custom_object(
                GROUP, VERSION, PLURAL, _request_timeout=_KUBE_TIMEOUT
            )
        else:
            listed = custom.list_namespaced_custom_object(
                GROUP, VERSION, kube.namespace, PLURAL, _request_timeout=_KUBE_TIMEOUT
            )
    except ApiException as exc:
        raise IncidentsError(_api_message(exc)) from exc
    return _as_dict(listed)


def _check_evidence_url(url: str) -> str:
    """The base URL; plain http only to loopback, so a bearer token never crosses a network
    in clear."""
    parts = urlsplit(url)
    if parts.scheme not in {"http", "https"} or not parts.hostname:
        raise IncidentsError(f"evidence URL {url!r}: expected https://host[:port]")
    if parts.scheme == "http":
        host = parts.hostname
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise IncidentsError(
                f"evidence URL {url!r}: refusing to send a token over plain http; use https"
            )
    return url.rstrip("/")


def _http_message(response: requests.Response) -> str:
    try:
        message = response.json().get("message")
    except (ValueError, AttributeError):
        message = None
    return f"evidence API: {response.status_code} {response.reason}" + (
        f": {message}" if message else ""
    )


def _download(args: argparse.Namespace, kube: _Kube) -> int:
    url = args.evidence_url or os.environ.get(EVIDENCE_URL_ENV)
    if not url:
        raise IncidentsError(f"no evidence API: pass --evidence-url or set {EVIDENCE_URL_ENV}")
    base = _check_evidence_url(url)
    incident = _incident(kube, args.name)
    token, kubernetes_token = _evidence_token(args, kube)
    status = incident.get("status") or {}
    expected = status.get("bundleSha256")
    if not expected:
        raise IncidentsError(
            f"incident {kube.namespace}/{args.name} has no stored bundle yet "
            f"(phase {status.get('phase') or 'Pending'})"
        )
    output = Path(args.output_file or f"{args.name}.tar.gz")
    path = f"/v1/namespaces/{quote(kube.namespace)}/incidents/{quote(args.name)}/bundle"
    ca = args.evidence_ca or os.environ.get(EVIDENCE_CA_ENV)
    try:
        response = requests.get(
            base + path,
            headers={"Authorization": f"Bearer {token}"},
            stream=True,
            timeout=_HTTP_TIMEOUT,
            verify=ca or True,
        )
    except (requests.RequestException, OSError) as exc:
        raise IncidentsError(f"evidence API at {base}: {exc}") from exc
    with response:
        if response.status_code != 200:
            hint = ""
            if response.status_code == 401 and kubernetes_token:
                hint = (
                    " (the Kubernetes token was sent; the evidence API wants one for its own "
                    "audience: pass --service-account or --evidence-token)"
                )
            raise IncidentsError(_http_message(response) + hint)
        size, digest = _save(response, output, progress=_progress_shown(args.progress))
    if digest != expected:
        _partial(output).unlink(missing_ok=True)
        raise IncidentsError(
            f"sha256 mismatch: got {digest}, the incident records {expected}; nothing saved"
        )
    try:
        os.replace(_partial(output), output)
    except OSError as exc:
        raise IncidentsError(f"cannot write {output}: {exc}") from exc
    saved = {"file": str(output), "bytes": size, "sha256": digest, "verified": True}
    line = f"{output} ({size} bytes, sha256 {digest} verified)"
    sys.stdout.write(render(saved, output=args.output, table=lambda _wide: line))
    return 0


def _evidence_token(args: argparse.Namespace, kube: _Kube) -> tuple[str, bool]:
    """The token for the evidence API, and whether it is the Kubernetes one as it is."""
    if args.evidence_token:
        return args.evidence_token, False
    if args.service_account:
        return _request_token(kube, args.service_account, audience=args.audience), False
    if kube.token:
        return kube.token, True
    raise IncidentsError(
        f"the evidence API needs a token for its audience ({args.audience}): pass "
        "--service-account NAME (a ServiceAccount allowed to read the evidence) or "
        "--evidence-token"
    )


def _request_token(kube: _Kube, account: str, *, audience: str) -> str:
    """A short-lived token of ServiceAccount ``[namespace/]name`` for ``audience``."""
    namespace, _, name = account.rpartition("/")
    namespace = namespace or kube.namespace
    request = client.AuthenticationV1TokenRequest(
        spec=client.V1TokenRequestSpec(audiences=[audience], expiration_seconds=_TOKEN_SECONDS)
    )
    try:
        answer = client.CoreV1Api(kube.api).create_namespaced_service_account_token(
            name, namespace, request, _request_timeout=_KUBE_TIMEOUT
        )
    except ApiException as exc:
        raise IncidentsError(
            f"token for serviceaccount {namespace}/{name}: {_api_message(exc)}"
        ) from exc
    if answer.status is None or not answer.status.token:
        raise IncidentsError(f"token for serviceaccount {namespace}/{name}: empty answer")
    return str(answer.status.token)


def _partial(output: Path) -> Path:
    return output.with_name(f".{output.name}.partial")


def _progress_shown(choice: str) -> bool:
    return choice == "always" or (choice == "auto" and sys.stderr.isatty())


@contextmanager
def _progress_bar(*, total: int | None, label: str, shown: bool) -> Iterator[Callable[[int], None]]:
    """A rich progress bar on stderr (bytes, speed, time left), advanced by the callable."""
    if not shown:
        yield lambda _bytes: None
        return
    from rich.console import Console  # only for a download that shows progress
    from rich.progress import (
        BarColumn,
        DownloadColumn,
        Progress,
        TextColumn,
        TimeRemainingColumn,
        TransferSpeedColumn,
    )

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=Console(stderr=True)) as bar:
        task = bar.add_task(label, total=total)
        yield lambda size: bar.advance(task, size)


def _save(response: requests.Response, output: Path, *, progress: bool) -> tuple[int, str]:
    """Stream the body to a private partial file beside ``output``, hashing it."""
    partial = _partial(output)
    digest = hashlib.sha256()
    size = 0
    length = response.headers.get("Content-Length", "")
    total = int(length) if length.isdigit() else None
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with (
            os.fdopen(fd, "wb") as stream,
            _progress_bar(total=total, label=output.name, shown=progress) as advance,
        ):
            for chunk in response.iter_content(chunk_size=_CHUNK):
                stream.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                advance(len(chunk))
    except (requests.RequestException, OSError) as exc:
        partial.unlink(missing_ok=True)
        raise IncidentsError(f"download of {output}: {exc}") from exc
    return size, digest.hexdigest()


def _list(args: argparse.Namespace, kube: _Kube) -> int:
    listed = _incidents(kube, all_namespaces=args.all_namespaces)
    items = [_without_managed_fields(i) for i in listed.get("items") or []]
    if not items and args.output in ("table", "wide"):
        where = "any namespace" if args.all_namespaces else f"namespace {kube.namespace}"
        print(f"No memoryincidents found in {where}.", file=sys.stderr)
        return 0
    now = dt.datetime.now(dt.UTC)

    def table(wide: bool) -> str:
        rows = [incident_row(i, now=now, wide=wide) for i in items]
        return render_table(rows, all_namespaces=args.all_namespaces, wide=wide)

    sys.stdout.write(render({**listed, "items": items}, output=args.output, table=table))
    return 0


def _get(args: argparse.Namespace, kube: _Kube) -> int:
    obj = _without_managed_fields(_incident(kube, args.name))
    now = dt.datetime.now(dt.UTC)

    def table(wide: bool) -> str:
        row = incident_row(obj, now=now, wide=wide)
        return render_table([row], all_namespaces=False, wide=wide)

    sys.stdout.write(render(obj, output=args.output, table=table))
    return 0


# --- command line -------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``list``, ``get`` and ``download`` sub-commands; connection flags on each."""
    parser.epilog = (
        "The evidence API authenticates with a Kubernetes bearer token for its audience "
        "(TokenReview) and authorises with RBAC: 'get'/'list' on memoryincidents/evidence "
        "(memwarden.dev). download --service-account NAME asks for such a token."
    )
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, else ~/.kube/config)"
    )
    common.add_argument("--context", help="kubeconfig context (default: the current one)")
    common.add_argument("-n", "--namespace", help="namespace (default: the context's)")
    common.add_argument(
        "--token",
        help="bearer token for the Kubernetes API and the evidence API, replacing the "
        "kubeconfig's credentials (needed when the kubeconfig uses a client certificate)",
    )
    sub = parser.add_subparsers(dest="incidents_command", required=True, metavar="ACTION")

    listing = sub.add_parser("list", parents=[common], help="list MemoryIncidents")
    listing.add_argument("-A", "--all-namespaces", action="store_true")
    add_output_argument(listing)
    listing.set_defaults(_action=_list)

    getting = sub.add_parser("get", parents=[common], help="show one MemoryIncident")
    getting.add_argument("name", help="the MemoryIncident's name")
    add_output_argument(getting)
    getting.set_defaults(_action=_get)

    downloading = sub.add_parser(
        "download",
        parents=[common],
        help="download an incident's evidence bundle (sha256 checked)",
        description="Download the bundle from the evidence API and check it against the "
        "incident's status.bundleSha256. The evidence API accepts tokens made for its own "
        "audience: pass --service-account or --evidence-token.",
    )
    downloading.add_argument("name", help="the MemoryIncident's name")
    downloading.add_argument(
        "-f",
        "--output-file",
        metavar="FILE",
        help="where to write it (default: NAME.tar.gz; -o is the output format, as everywhere)",
    )
    add_output_argument(downloading)
    downloading.add_argument(
        "--progress",
        choices=("auto", "always", "never"),
        default="auto",
        help="a progress bar on stderr: auto shows it when stderr is a terminal",
    )
    downloading.add_argument(
        "--evidence-url", help=f"base URL of the evidence API (default: ${EVIDENCE_URL_ENV})"
    )
    downloading.add_argument(
        "--evidence-ca",
        metavar="FILE",
        help=f"CA bundle of the evidence API's certificate (default: ${EVIDENCE_CA_ENV}, "
        "else the system's)",
    )
    downloading.add_argument(
        "--service-account",
        metavar="[NS/]NAME",
        help="ask the API server for a 10-minute token of this ServiceAccount (one allowed to "
        "read the evidence) for the evidence API's audience; the namespace defaults to -n",
    )
    downloading.add_argument(
        "--evidence-token",
        metavar="TOKEN",
        help="a token for the evidence API's audience "
        "(kubectl create token SA --audience memwarden)",
    )
    downloading.add_argument(
        "--audience",
        default=os.environ.get(EVIDENCE_AUDIENCE_ENV, DEFAULT_AUDIENCE),
        help=f"the evidence API's audience (default: ${EVIDENCE_AUDIENCE_ENV}, else "
        f"{DEFAULT_AUDIENCE})",
    )
    downloading.set_defaults(_action=_download)


def run(args: argparse.Namespace) -> int:
    try:
        with _kube(args) as kube:
            result: int = args._action(args, kube)
            return result
    except IncidentsError as exc:
        message = str(exc)
    except ApiException as exc:
        message = _api_message(exc)
    except (urllib3.exceptions.HTTPError, OSError) as exc:
        message = f"cannot reach the Kubernetes API: {exc}"
    print(f"memwarden incidents: error: {message}", file=sys.stderr)
    return 2
