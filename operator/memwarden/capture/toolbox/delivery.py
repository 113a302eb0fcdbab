"""Delivery of the bundle to a file or an HTTP PUT, retried while the upload token is valid."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import ssl
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from memwarden.capture.toolbox.model import (
    CHUNK,
    ENV_UPLOAD_SOURCE_ADDRESS,
    UPLOAD_BACKOFF_FIRST,
    UPLOAD_BACKOFF_MAX,
    UPLOAD_RETRY_WITHOUT_EXPIRY,
    DeliveryError,
    _Tally,
    _version,
    log,
)
from memwarden.evidence.tokens import UPLOAD_SIZE_HEADER, token_expiry

# --- delivery -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Delivery:
    """Where the bundle went, its size and sha256; ``error`` when it did not get there."""

    destination: str
    size: int = 0
    sha256: str | None = None
    http_status: int | None = None
    error: str | None = None


def _write_file(chunks: Iterable[bytes], out: Path) -> _Tally:
    tally = _Tally()
    partial = out.with_name(out.name + ".partial")
    try:
        with partial.open("wb") as sink:
            for chunk in tally.wrap(chunks):
                sink.write(chunk)
        partial.rename(out)  # a reader never sees half a bundle under the final name
    finally:
        partial.unlink(missing_ok=True)
    return tally


def _connection(url: str, *, ca_file: str | None, timeout: float) -> http.client.HTTPConnection:
    parts = urlsplit(url)
    if parts.hostname is None:
        raise DeliveryError(f"upload URL has no host: {url!r}")
    source = os.environ.get(ENV_UPLOAD_SOURCE_ADDRESS) or None
    bind = (source, 0) if source else None
    if parts.scheme == "https":
        # The CA comes as a file path, or as PEM text in the env (the capture plan's way:
        # an ephemeral container cannot mount a new volume).
        if ca_file and ca_file.lstrip().startswith("-----BEGIN"):
            context = ssl.create_default_context(cadata=ca_file)
        else:
            context = ssl.create_default_context(cafile=ca_file or None)
        return http.client.HTTPSConnection(
            parts.hostname, parts.port, timeout=timeout, context=context, source_address=bind
        )
    if parts.scheme == "http":
        return http.client.HTTPConnection(
            parts.hostname, parts.port, timeout=timeout, source_address=bind
        )
    raise DeliveryError(f"upload URL must be http(s): {url!r}")


def _put(
    url: str,
    chunks: Iterable[bytes],
    *,
    token: str | None,
    ca_file: str | None,
    timeout: float,
    size_bound: int | None = None,
) -> int:
    """One chunked, streaming PUT; the HTTP status. Raises DeliveryError on failure."""
    parts = urlsplit(url)
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    headers = {"Content-Type": "application/gzip", "User-Agent": f"memwarden-capture/{_version()}"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if size_bound is not None:
        headers[UPLOAD_SIZE_HEADER] = str(size_bound)
    where = f"PUT {_redact(url)}"
    connection = _connection(url, ca_file=ca_file, timeout=timeout)
    try:
        # The server may answer early (401, 413) and close: then read its answer below.
        with contextlib.suppress(BrokenPipeError, ConnectionResetError):
            connection.request("PUT", target, body=chunks, headers=headers, encode_chunked=True)
        response = connection.getresponse()
        detail = response.read(1000).decode("utf-8", "replace").strip()
    except ssl.SSLCertVerificationError as exc:
        # Final: the CA the plan gave us will not start trusting this server on a retry,
        # and a bundle (a core dump) never goes to a server we cannot verify.
        raise DeliveryError(
            f"{where}: the evidence API's certificate is not trusted ({exc.verify_message}); "
            "nothing was sent",
            final=True,
        ) from exc
    except (OSError, http.client.HTTPException) as exc:
        raise DeliveryError(f"{where}: {exc}") from exc
    finally:
        connection.close()
    if not 200 <= response.status < 300:
        raise DeliveryError(
            f"{where}: HTTP {response.status}: {detail[:300]}",
            status=response.status,
            stored_sha256=_stored_sha256(detail),
        )
    return response.status


def _stored_sha256(body: str) -> str | None:
    """``details.sha256`` of a Kubernetes-style Status body (the evidence store's 409)."""
    try:
        details = json.loads(body).get("details") or {}
    except (ValueError, AttributeError):
        return None
    sha256 = details.get("sha256") if isinstance(details, dict) else None
    return sha256 if isinstance(sha256, str) else None


def _redact(url: str) -> str:
    """The URL without its query: a query may carry a credential."""
    return urlsplit(url)._replace(query="").geturl()


def _retryable(error: DeliveryError) -> bool:
    """Connection failures, 5xx, 408, 429 and a 409 "upload in flight" (no stored bundle
    yet) may pass next time; other 4xx will not, nor an untrusted server certificate."""
    if error.final:
        return False
    if error.status == 409:
        return error.stored_sha256 is None
    return error.status is None or error.status >= 500 or error.status in (408, 429)


def _file_chunks(path: Path) -> Iterator[bytes]:
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            yield chunk


def upload_deadline(token: str | None, *, now: float) -> float:
    """Until when (Unix seconds) to retry an upload: the token's expiry, read from it."""
    expiry = token_expiry(token) if token else None
    return float(expiry) if expiry is not None else now + UPLOAD_RETRY_WITHOUT_EXPIRY


def _upload(
    make_chunks: Callable[[], Iterable[bytes]],
    url: str,
    *,
    token: str | None,
    ca_file: str | None,
    timeout: float,
    deadline: float,
    size_bound: int | None = None,
) -> tuple[_Tally, int]:
    sent: _Tally | None = None  # an attempt whose whole body went out
    delay = UPLOAD_BACKOFF_FIRST
    attempt = 0
    while True:
        attempt += 1
        tally = _Tally()
        try:
            status = _put(
                url,
                tally.wrap(make_chunks()),
                token=token,
                ca_file=ca_file,
                timeout=timeout,
                size_bound=size_bound,
            )
        except DeliveryError as exc:
            if tally.complete:
                sent = tally
            if exc.status == 409 and sent is not None and exc.stored_sha256 == sent.sha256:
                # An earlier attempt landed but its answer was lost: the store holds
                # exactly our bundle (it is deterministic, so every attempt hashes alike).
                log.info("upload: already stored with our sha256 %s", sent.sha256)
                return sent, 409
            if not _retryable(exc) or time.time() + delay >= deadline:
                raise
            log.warning("upload attempt %d failed, retrying in %.0fs: %s", attempt, delay, exc)
            time.sleep(delay)
            delay = min(delay * 2, UPLOAD_BACKOFF_MAX)
            continue
        return tally, status


def deliver(
    make_chunks: Callable[[], Iterable[bytes]],
    *,
    out: Path | None,
    upload: str | None,
    token: str | None,
    ca_file: str | None,
    timeout: float,
    size_bound: int | None = None,
) -> Delivery:
    """Write the bundle to ``out`` and/or PUT it to ``upload``; streamed, never held.

    ``make_chunks`` regenerates the bundle (from the temp files) for each upload attempt,
    so a retry needs nothing kept in memory. With both, the file is written first and
    then uploaded from disk. ``size_bound`` (the most bytes the bundle can take) is
    declared to the evidence store, which reserves that much disk before the first byte.
    """
    if out is None and upload is None:
        raise ValueError("deliver: give out, upload or both")
    destination = " + ".join(x for x in (str(out or ""), _redact(upload or "")) if x)
    try:
        status: int | None = None
        source = make_chunks
        if out is not None:
            tally = _write_file(make_chunks(), out)
            written = out
            source = lambda: _file_chunks(written)  # noqa: E731
        if upload is not None:
            tally, status = _upload(
                source,
                upload,
                token=token,
                ca_file=ca_file,
                timeout=timeout,
                deadline=upload_deadline(token, now=time.time()),
                size_bound=size_bound,
            )
    except (DeliveryError, OSError) as exc:
        status = exc.status if isinstance(exc, DeliveryError) else None
        return Delivery(destination=destination, http_status=status, error=str(exc))
    return Delivery(
        destination=destination, size=tally.size, sha256=tally.sha256, http_status=status
    )
