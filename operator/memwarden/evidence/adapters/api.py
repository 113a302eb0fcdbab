"""The evidence HTTP API: the toolbox uploads a bundle, users list and download them.

Routes, under ``/v1/namespaces/{namespace}/incidents``:

- ``PUT  {name}/bundle``  upload (streamed; an upload token for this incident)
- ``GET  ``               list the namespace's stored bundles (Kubernetes identity, ``list``)
- ``GET  {name}``         one bundle's meta (Kubernetes identity, ``get``)
- ``GET  {name}/bundle``  download, streamed from the store (Kubernetes identity, ``get``);
  or, when the store gives a short-lived URL (S3's opt-in presigning), 307 to it

Every refusal is JSON ``{"status": "Failure", "code", "reason", "message"}``: 400 bad
names or body, 401 missing or invalid credentials, 403 not allowed, 404, 409 already
stored (a token cannot be replayed), 413 too big, 503 when the API server or the store
cannot be asked (an object store's refusal, e.g. a wrong key, is named), 507 when the
bundle does not fit the store's cap or its namespace's quota. Bad input never yields a
500.

Disk space is reserved before the first byte is read: an upload's declared size (its
``Content-Length``, else the toolbox's ``X-Bundle-Max-Bytes``, else the per-bundle cap)
must fit under the caps together with what is stored and what other uploads in flight
reserved; the stream may not exceed it, and the reservation is released when the upload
is committed or fails.

An upload needs more than its token, which anyone who may read the pod can copy from the
debug container's environment: the incident must be ``Capturing`` (409 while it is not
yet, 403 once its capture is over), and the request must come from one of the target
pod's addresses (the debug container shares the pod's network namespace). Reads serve a
bundle only while it belongs to the live incident (same UID): an incident deleted and
created again under its name does not inherit the earlier one's evidence.

This module wires HTTP to the store, the tokens and the authorizer; it makes no decision
of its own. It knows nothing of kopf: the operator injects how to find an incident
(``incident``) and its pod's addresses (``pod_addresses``), and what to do when a bundle
lands (``on_stored``).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import inspect
import ipaddress
import json
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any, NoReturn, TypeAlias

import aiohttp
from aiohttp import hdrs, web
from aiohttp.http_exceptions import HttpProcessingError

from memwarden.evidence.adapters.auth import Authorizer, AuthUnavailable, Denied, Verb
from memwarden.evidence.adapters.store import (
    AlreadyStored,
    BundleMeta,
    BundleStore,
    DiskLimits,
    Entry,
    InvalidName,
    NotStored,
    Reservations,
    StoreError,
    StoreUnavailable,
    TooLarge,
    UploadWriter,
    admit_upload,
    validate_incident_name,
    validate_namespace,
)
from memwarden.evidence.tokens import UPLOAD_SIZE_HEADER, TokenError, verify_upload_token

__all__ = [
    "BUNDLE_CONTENT_TYPE",
    "IncidentLookup",
    "LiveIncident",
    "OnStored",
    "PodAddressLookup",
    "bundle_url",
    "make_evidence_app",
]

log = logging.getLogger(__name__)

BUNDLE_CONTENT_TYPE = "application/gzip"
PREFIX = "/v1/namespaces/{namespace}/incidents"


@dataclass(frozen=True, slots=True)
class LiveIncident:
    """An incident as the API server has it now: what uploads and reads are checked against."""

    uid: str
    phase: str | None = None
    pod: str | None = None


#: The phase in which an incident's bundle may be uploaded.
CAPTURING = "Capturing"

#: Lookups by (namespace, name): a sync one runs in a thread (it may call the kubernetes
#: client); an async one is awaited. ``incident`` gives None when there is no incident,
#: ``pod_addresses`` an empty set when there is no pod (or it has no address yet).
IncidentLookup: TypeAlias = (
    Callable[[str, str], LiveIncident | None] | Callable[[str, str], Awaitable[LiveIncident | None]]
)
PodAddressLookup: TypeAlias = (
    Callable[[str, str], frozenset[str]] | Callable[[str, str], Awaitable[frozenset[str]]]
)
OnStored: TypeAlias = Callable[[str, str, BundleMeta], Awaitable[None]]

#: Store writes (and reads) are handed to a thread in blocks of this size: fewer thread
#: hops than one per network chunk (often 16 KiB), little memory per upload.
_WRITE_BLOCK = 1024 * 1024
_GZIP_MAGIC = b"\x1f\x8b"


def bundle_url(base: str, *, namespace: str, name: str) -> str:
    """The upload (and download) URL of an incident's bundle under the API's ``base``
    (e.g. ``https://memwarden.memwarden-system.svc:8443/evidence``): what the capture
    plan hands the toolbox."""
    namespace, name = validate_namespace(namespace), validate_incident_name(name)
    return f"{base.rstrip('/')}/v1/namespaces/{namespace}/incidents/{name}/bundle"


class _Refused(Exception):
    """A refusal with its HTTP status; the message goes back to the caller."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}
        self.details = details


def _fail(
    status: int,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    details: dict[str, Any] | None = None,
) -> NoReturn:
    raise _Refused(status, message, headers=headers, details=details)


def _status_body(
    status: int, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    body: dict[str, Any] = {
        "status": "Failure",
        "code": status,
        "reason": HTTPStatus(status).phrase.replace(" ", ""),
        "message": message,
    }
    if details is not None:
        body["details"] = details
    return body


def _json(status: int, body: Any, *, headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response(body, status=status, headers=headers, dumps=json.dumps)


@web.middleware
async def _errors(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """Every error as JSON; an unexpected exception is logged and becomes a plain 500."""
    try:
        return await handler(request)
    except _Refused as exc:
        body = _status_body(exc.status, exc.message, exc.details)
        return _json(exc.status, body, headers=exc.headers)
    except StoreUnavailable as exc:  # the operator's outage: named, retried by the caller
        log.warning("evidence API: %s %s: %s", request.method, request.path, exc)
        return _json(503, _status_body(503, str(exc)), headers={"Retry-After": "30"})
    except web.HTTPException as exc:  # the router's 404 / 405, aiohttp's own limits
        headers = {k: v for k, v in exc.headers.items() if k in (hdrs.ALLOW,)}
        return _json(exc.status, _status_body(exc.status, exc.reason), headers=headers)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("evidence API: %s %s failed", request.method, request.path)
        return _json(500, _status_body(500, "internal error (logged by the operator)"))


def _bearer(request: web.Request) -> str:
    challenge = {str(hdrs.WWW_AUTHENTICATE): 'Bearer realm="memwarden-evidence"'}
    header = request.headers.get(hdrs.AUTHORIZATION, "")
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if not header:
        _fail(401, "missing Authorization: Bearer <token>", headers=challenge)
    if scheme.lower() != "bearer" or not token:
        _fail(401, "the Authorization header must be 'Bearer <token>'", headers=challenge)
    if not (token.isascii() and token.isprintable()):
        # No Kubernetes or upload token is anything else; aiohttp hands non-UTF-8 header
        # bytes over as surrogate escapes, which hashing the token for the cache choked on.
        _fail(401, "the bearer token must be printable ASCII", headers=challenge)
    return token


def _client_address(request: web.Request) -> str:
    """The peer's address as a pod IP is written (an IPv4-mapped IPv6 peer in its IPv4 form)."""
    remote = request.remote or ""
    try:
        address = ipaddress.ip_address(remote)
    except ValueError:
        return remote
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def _meta_json(namespace: str, name: str, meta: BundleMeta) -> dict[str, Any]:
    return {
        "namespace": namespace,
        "name": name,
        "uid": meta.uid,
        "bytes": meta.bytes,
        "sha256": meta.sha256,
        "storedAt": meta.stored_at.isoformat(),
    }


class _Evidence:
    """The handlers and the state they share (uploads in flight, hook tasks)."""

    def __init__(
        self,
        *,
        store: BundleStore,
        authorizer: Authorizer,
        upload_key: bytes,
        max_bundle_bytes: int,
        incident: IncidentLookup,
        pod_addresses: PodAddressLookup | None,
        on_stored: OnStored | None,
        clock: Callable[[], dt.datetime],
        idle_timeout: float,
        disk: DiskLimits | None,
    ) -> None:
        self.store = store
        self.authorizer = authorizer
        self.upload_key = upload_key
        self.max_bundle_bytes = max_bundle_bytes
        self.incident = incident
        self.pod_addresses = pod_addresses
        self.on_stored = on_stored
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.disk = disk
        self.reservations = Reservations()
        self.uploading: set[tuple[str, str]] = set()
        self.hooks: set[asyncio.Task[None]] = set()

    # --- helpers ------------------------------------------------------------------

    @staticmethod
    def _names(request: web.Request, *, with_name: bool = True) -> tuple[str, str]:
        try:
            namespace = validate_namespace(request.match_info["namespace"])
            name = validate_incident_name(request.match_info["name"]) if with_name else ""
        except InvalidName as exc:
            _fail(400, str(exc))
        return namespace, name

    async def _authorize(
        self, request: web.Request, *, verb: Verb, namespace: str, name: str | None = None
    ) -> None:
        token = _bearer(request)
        try:
            decision = await self.authorizer.authorize(
                token=token,
                verb=verb,
                namespace=namespace,
                name=name,
                client=_client_address(request),
            )
        except AuthUnavailable as exc:
            log.warning("evidence API: cannot authorise a request: %s", exc)
            _fail(503, "cannot reach the Kubernetes API to authorise", headers={"Retry-After": "5"})
        if isinstance(decision, Denied):
            retry = {"Retry-After": str(decision.retry_after)} if decision.retry_after else None
            _fail(decision.status, decision.reason, headers=retry)

    async def _lookup(
        self, lookup: Callable[..., Any], namespace: str, name: str, *, what: str
    ) -> Any:
        """Ask the operator's lookup; its failure is the operator's outage, not bad input,
        so it becomes a 503 the caller retries."""
        try:
            if inspect.iscoroutinefunction(lookup):
                return await lookup(namespace, name)
            return await asyncio.to_thread(lookup, namespace, name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("evidence API: looking up %s %s/%s failed", what, namespace, name)
            _fail(503, f"cannot look up the {what} now", headers={"Retry-After": "5"})

    async def _live(self, namespace: str, name: str) -> LiveIncident | None:
        live: LiveIncident | None = await self._lookup(
            self.incident, namespace, name, what="incident"
        )
        return live

    async def _check_uploader(
        self, request: web.Request, live: LiveIncident, *, namespace: str, name: str
    ) -> None:
        """Only the incident's own debug container may upload, and only during the capture:
        the token alone is readable by anyone who may read the pod."""
        if live.phase != CAPTURING:
            if live.phase in (None, "", "Pending"):
                _fail(409, f"incident {namespace}/{name} is not capturing yet; retry")
            _fail(403, f"incident {namespace}/{name} is {live.phase}: its capture is over")
        if self.pod_addresses is None:
            return
        addresses: frozenset[str] = await self._lookup(
            self.pod_addresses, namespace, live.pod or "", what="pod"
        )
        client = _client_address(request)
        if client not in addresses:
            log.warning(
                "evidence API: upload for %s/%s from %s refused: not an address of pod %s",
                namespace,
                name,
                client,
                live.pod,
            )
            _fail(
                403,
                f"uploads for {namespace}/{name} are accepted only from pod {live.pod}, "
                f"not from {client}",
            )

    # --- upload -------------------------------------------------------------------

    async def upload(self, request: web.Request) -> web.StreamResponse:
        namespace, name = self._names(request)
        token = _bearer(request)
        try:
            token_uid = verify_upload_token(
                key=self.upload_key,
                token=token,
                namespace=namespace,
                incident=name,
                now=self.clock(),
            )
        except TokenError as exc:
            _fail(401, str(exc))
        live = await self._live(namespace, name)
        if live is None:
            _fail(404, f"incident {namespace}/{name} not found")
        if live.uid != token_uid:
            _fail(403, f"the token was issued for an earlier incident named {namespace}/{name}")
        if await asyncio.to_thread(self.store.holds, namespace, name, uid=live.uid):
            # Before the phase check: a toolbox whose answer was lost learns its bundle
            # landed even when the incident was completed meanwhile.
            await self._already_stored(namespace, name)
        await self._check_uploader(request, live, namespace=namespace, name=name)
        live_uid = live.uid
        size = self._declared_size(request)
        key = (namespace, name)
        if key in self.uploading:
            _fail(409, f"an upload for {namespace}/{name} is already in progress")
        self.uploading.add(key)
        ticket = self.reservations.hold(namespace, size)
        try:
            await self._check_space(namespace, size, ticket=ticket)
            try:
                writer = await asyncio.to_thread(
                    self.store.open_upload, namespace, name, uid=live_uid, max_bytes=size
                )
            except AlreadyStored:
                await self._already_stored(namespace, name)
            meta = await self._receive(request, writer, namespace=namespace, name=name)
        finally:
            self.reservations.release(ticket)
            self.uploading.discard(key)
        log.info(
            "evidence %s/%s stored: %d bytes, sha256 %s", namespace, name, meta.bytes, meta.sha256
        )
        if self.on_stored is not None:
            task = asyncio.create_task(self._notify(namespace, name, meta))
            self.hooks.add(task)
            task.add_done_callback(self.hooks.discard)
        location = f"/v1/namespaces/{namespace}/incidents/{name}"
        return _json(201, _meta_json(namespace, name, meta), headers={hdrs.LOCATION: location})

    def _declared_size(self, request: web.Request) -> int:
        """The most bytes this upload may send: what is reserved, and enforced."""
        length = request.content_length
        header = request.headers.get(UPLOAD_SIZE_HEADER)
        declared: int | None = None
        if header is not None:
            try:
                declared = int(header)
            except ValueError:
                declared = -1
            if declared <= 0:
                _fail(400, f"{UPLOAD_SIZE_HEADER} must be a positive number of bytes")
        for value, what in ((length, "Content-Length"), (declared, UPLOAD_SIZE_HEADER)):
            if value is not None and value > self.max_bundle_bytes:
                _fail(
                    413,
                    f"bundle of {value} bytes ({what}) exceeds the limit of "
                    f"{self.max_bundle_bytes}",
                )
        if length is not None:
            return length
        return declared if declared is not None else self.max_bundle_bytes

    async def _check_space(self, namespace: str, size: int, *, ticket: int) -> None:
        """507 unless ``size`` fits beside what is stored and what others reserved.

        Others' reservations are read before the stored sizes: an upload that finishes
        in between is then counted twice (refusing early), never missed."""
        if self.disk is None:
            return
        in_flight = self.reservations.by_namespace(excluding=ticket)
        stored = await asyncio.to_thread(self.store.usage)
        why = admit_upload(
            namespace=namespace, size=size, stored=stored, in_flight=in_flight, limits=self.disk
        )
        if why is not None:
            log.warning("evidence API: upload to %s refused: %s", namespace, why)
            _fail(507, why, headers={"Retry-After": "60"})

    async def _receive(
        self, request: web.Request, writer: UploadWriter, *, namespace: str, name: str
    ) -> BundleMeta:
        """Stream the body into ``writer``; anything but a clean commit discards it (in a
        thread: an object store's abort is a network call)."""
        try:
            return await self._stream_into(request, writer, namespace=namespace, name=name)
        except BaseException:
            await asyncio.shield(asyncio.to_thread(writer.abort))
            raise

    async def _stream_into(
        self, request: web.Request, writer: UploadWriter, *, namespace: str, name: str
    ) -> BundleMeta:
        """The body into ``writer`` block by block, then the commit. Not a ``with writer``:
        leaving it would abort on the event loop, and an object store's abort is a
        network call (``_receive`` aborts from a thread)."""
        block = bytearray()
        head = b""
        try:
            while True:
                chunk = await asyncio.wait_for(request.content.readany(), self.idle_timeout)
                if not chunk:
                    break
                if len(head) < len(_GZIP_MAGIC):
                    head = (head + chunk)[: len(_GZIP_MAGIC)]
                    if len(head) == len(_GZIP_MAGIC) and head != _GZIP_MAGIC:
                        _fail(400, "the body is not a gzip stream (expected a .tar.gz bundle)")
                block += chunk
                if len(block) >= _WRITE_BLOCK:
                    await asyncio.to_thread(writer.write, bytes(block))
                    block.clear()
            if block:
                await asyncio.to_thread(writer.write, bytes(block))
        except TooLarge as exc:
            _fail(413, str(exc))
        except TimeoutError:
            _fail(408, f"no data for {self.idle_timeout:.0f}s; upload abandoned")
        except (aiohttp.ClientError, HttpProcessingError, ConnectionError) as exc:
            _fail(400, f"upload interrupted: {exc}")
        if writer.bytes_written == 0:
            _fail(400, "empty body: expected a .tar.gz bundle")
        try:
            return await asyncio.to_thread(writer.commit, now=self.clock())
        except AlreadyStored:
            await self._already_stored(namespace, name)

    async def _already_stored(self, namespace: str, name: str) -> NoReturn:
        """409, with the stored bundle's size and sha256: an uploader whose first attempt
        landed but whose answer was lost can compare them with its own and call it done.
        Safe to tell: only a holder of this incident's upload token gets here."""
        try:
            meta = await asyncio.to_thread(self.store.meta, namespace, name)
            details: dict[str, Any] | None = {"bytes": meta.bytes, "sha256": meta.sha256}
        except StoreError:
            details = None
        _fail(409, f"a bundle is already stored for {namespace}/{name}", details=details)

    async def _notify(self, namespace: str, name: str, meta: BundleMeta) -> None:
        assert self.on_stored is not None
        try:
            await self.on_stored(namespace, name, meta)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("on_stored hook failed for %s/%s", namespace, name)

    # --- reads --------------------------------------------------------------------

    async def list(self, request: web.Request) -> web.StreamResponse:
        namespace, _ = self._names(request, with_name=False)
        await self._authorize(request, verb="list", namespace=namespace)
        entries: Iterable[Entry] = await asyncio.to_thread(self.store.list, namespace)
        items = [_meta_json(e.namespace, e.incident, e.meta) for e in entries]
        return _json(200, {"namespace": namespace, "items": items})

    async def _stored_meta(self, namespace: str, name: str) -> BundleMeta:
        """The stored bundle's meta, if it belongs to the live incident (same UID)."""
        try:
            meta = await asyncio.to_thread(self.store.meta, namespace, name)
        except NotStored:
            _fail(404, f"no bundle stored for {namespace}/{name}")
        except StoreError as exc:
            log.error("evidence %s/%s unreadable: %s", namespace, name, exc)
            _fail(500, f"the bundle of {namespace}/{name} is unreadable")
        live = await self._live(namespace, name)
        if live is None or live.uid != meta.uid:
            _fail(
                404,
                f"no bundle stored for {namespace}/{name} (the stored one belongs to an "
                "earlier incident of that name)",
            )
        return meta

    async def meta(self, request: web.Request) -> web.StreamResponse:
        namespace, name = self._names(request)
        await self._authorize(request, verb="get", namespace=namespace, name=name)
        meta = await self._stored_meta(namespace, name)
        return _json(200, _meta_json(namespace, name, meta))

    async def download(self, request: web.Request) -> web.StreamResponse:
        namespace, name = self._names(request)
        await self._authorize(request, verb="get", namespace=namespace, name=name)
        meta = await self._stored_meta(namespace, name)
        try:
            redirect = await asyncio.to_thread(self.store.download_url, namespace, name)
        except NotStored:
            _fail(404, f"no bundle stored for {namespace}/{name}")
        if redirect is not None:  # authorised above; the URL expires within a minute
            headers = {
                hdrs.LOCATION: redirect,
                hdrs.CACHE_CONTROL: "no-store",
                "X-Bundle-Sha256": meta.sha256,
            }
            return web.Response(status=307, headers=headers)
        try:
            reader = await asyncio.to_thread(self.store.open_bundle, namespace, name)
        except NotStored:
            _fail(404, f"no bundle stored for {namespace}/{name}")
        try:
            # Streamed block by block from whichever store (a file or an object's body):
            # memory per download is one block, whatever the bundle's size.
            response = web.StreamResponse(
                headers={
                    hdrs.CONTENT_TYPE: BUNDLE_CONTENT_TYPE,
                    hdrs.CONTENT_DISPOSITION: f'attachment; filename="{namespace}-{name}.tar.gz"',
                    "X-Bundle-Sha256": meta.sha256,
                }
            )
            response.content_length = reader.size
            await response.prepare(request)
            sent = 0
            while sent < reader.size:
                block = await asyncio.to_thread(reader.read, min(_WRITE_BLOCK, reader.size - sent))
                if not block:  # shortened under us: end the connection, the reader sees it
                    raise ConnectionResetError(f"{namespace}/{name} changed while being read")
                await response.write(block)
                sent += len(block)
            await response.write_eof()
            return response
        finally:
            await asyncio.to_thread(reader.close)


def make_evidence_app(
    *,
    store: BundleStore,
    authorizer: Authorizer,
    upload_key: bytes,
    max_bundle_bytes: int,
    incident: IncidentLookup,
    pod_addresses: PodAddressLookup | None,
    on_stored: OnStored | None = None,
    clock: Callable[[], dt.datetime] | None = None,
    idle_timeout: float = 60.0,
    disk: DiskLimits | None = None,
) -> web.Application:
    """The evidence API as an aiohttp application, to run or mount under the operator.

    ``incident(namespace, name)`` returns the live incident or None (tokens of deleted or
    recreated incidents are refused, and so are uploads outside its ``Capturing`` phase);
    ``pod_addresses(namespace, pod)`` the pod's IPs, the only sources an upload is
    accepted from (None: from anywhere, for a proxy that hides them); ``on_stored`` runs
    as a task after a bundle is committed (the upload's response does not wait for it);
    ``idle_timeout`` abandons an upload that sends nothing for that long, so a stalled
    toolbox cannot hold an incident's upload slot forever; ``disk`` caps what the store
    may hold in all and per namespace (None: only the per-bundle cap).
    """
    if max_bundle_bytes <= 0:
        raise ValueError("max_bundle_bytes must be positive")
    state = _Evidence(
        store=store,
        authorizer=authorizer,
        upload_key=upload_key,
        max_bundle_bytes=max_bundle_bytes,
        incident=incident,
        pod_addresses=pod_addresses,
        on_stored=on_stored,
        clock=clock or (lambda: dt.datetime.now(dt.UTC)),
        idle_timeout=idle_timeout,
        disk=disk,
    )
    app = web.Application(middlewares=[_errors])
    app.router.add_put(PREFIX + "/{name}/bundle", state.upload)
    app.router.add_get(PREFIX, state.list, allow_head=False)
    app.router.add_get(PREFIX + "/", state.list, allow_head=False)
    app.router.add_get(PREFIX + "/{name}", state.meta, allow_head=False)
    app.router.add_get(PREFIX + "/{name}/bundle", state.download)

    async def _drain_hooks(_: web.Application) -> None:
        if state.hooks:
            await asyncio.gather(*state.hooks, return_exceptions=True)

    app.on_cleanup.append(_drain_hooks)
    return app
