"""The evidence store on S3-compatible object storage (AWS S3, MinIO, SeaweedFS, Ceph RGW...).

The same :class:`~memwarden.evidence.adapters.store.BundleStore` as the PVC store, so the
evidence API, retention and deletion do not know which one runs. Keys, under ``prefix``:

- ``<namespace>/<incident>/bundle-<16 hex>.tar.gz``: the bundle, one object per upload
- ``<namespace>/<incident>/meta.json``: the commit record (uid, bytes, sha256, stored_at,
  and which bundle object it commits), written last

As on the PVC, an incident counts as stored only once ``meta.json`` exists. Every upload
writes its own bundle object (a random name), so two uploads racing from two replicas
never overwrite each other's bytes: the meta is the one commit point, written with
``If-None-Match: *`` (a conditional write: the second writer gets 412 and deletes its own
bundle) after a check that none exists (for servers that ignore the condition).

Uploads are S3 multipart uploads fed part by part (``part_bytes``, 8 MiB by default):
memory per upload is one part, whatever the bundle's size; sha256 is computed while
streaming. Anything but a commit aborts the multipart upload; a crash leaves one behind,
which :meth:`S3EvidenceStore.sweep_partial` aborts once it is older than the sweep's age
(with bundle objects no meta commits).

Keys are built only from names that passed :func:`validate_namespace` and
:func:`validate_incident_name` (no ``/``, ``.`` or ``..`` segment, no empty part), and the
bundle name a meta records is checked against its pattern before use: a caller can never
make the store read or write outside ``<prefix><namespace>/<incident>/``.

boto3 is imported here only, and this module only when ``evidence.backend`` is ``s3``: it
costs the operator ~23 MB of RSS it does not otherwise need. Every method blocks (boto3
is synchronous): call them from a thread. Credentials come from boto3's default chain
(docs/evidence.md: environment from a Secret, or a web identity token).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import logging
import os
import re
import secrets
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from memwarden.capture.profile import DEFAULT_MAX_BYTES
from memwarden.evidence.adapters.store import (
    AlreadyStored,
    BundleMeta,
    BundleReader,
    Entry,
    InvalidName,
    NotStored,
    StoreError,
    StoreUnavailable,
    TooLarge,
    UploadWriter,
    validate_incident_name,
    validate_namespace,
)

__all__ = ["S3Config", "S3EvidenceStore"]

log = logging.getLogger(__name__)

META_OBJECT = "meta.json"
_BUNDLE_NAME = re.compile(r"bundle-[0-9a-f]{16}\.tar\.gz")
#: S3's smallest part (but the last): 5 MiB.
MIN_PART_BYTES = 5 * 2**20
_DOWNLOAD_CHUNK = 2**20
#: What the analysis may read of a bundle: its first members (manifest, heap, goroutine,
#: each at most DEFAULT_MAX_BYTES inflated; gzip adds ~0.03 % to incompressible data),
#: with room for the tar headers. A bundle shorter than this is fetched whole.
ANALYSIS_PREFIX_BYTES = 2 * DEFAULT_MAX_BYTES + 16 * 2**20
#: ``list`` is a method name here: annotations use this alias.
_Entries = list[Entry]


@dataclass(frozen=True, slots=True)
class S3Config:
    """Where the bundles go and how to reach it (``evidence.s3_*`` settings)."""

    bucket: str
    endpoint_url: str | None = None
    prefix: str = "memwarden/"
    region: str = "us-east-1"
    addressing_style: str = "auto"
    ca_file: str | None = None
    part_bytes: int = 8 * 2**20
    presign_seconds: int | None = None
    """Downloads redirect to a presigned GET valid this long (<= 60); None: streamed."""
    access_key_id: str | None = None
    """Explicit credentials (tests); None: boto3's default chain (env, web identity...)."""
    secret_access_key: str | None = None


def _error_code(exc: BaseException) -> str:
    response = getattr(exc, "response", None)
    if isinstance(response, dict):
        return str((response.get("Error") or {}).get("Code") or "")
    return ""


_MISSING = {"404", "NoSuchKey", "NotFound", "NoSuchUpload"}


def _unavailable(exc: BaseException, what: str) -> StoreUnavailable:
    """A boto3 failure as the store's outage, in one line (no stack trace for the user)."""
    code = _error_code(exc)
    detail = f"{code}: {exc}" if code else str(exc)
    return StoreUnavailable(f"S3 evidence store: {what}: {detail}")


class _S3Reader:
    """A bundle object's body, read in bounded chunks."""

    def __init__(self, body: Any, size: int) -> None:
        self._body = body
        self.size = size

    def read(self, size: int) -> bytes:
        data: bytes = self._body.read(size)
        return data

    def close(self) -> None:
        self._body.close()


class S3BundleWriter(UploadWriter):
    """One upload as an S3 multipart upload; holds at most one part in memory."""

    def __init__(
        self, *, store: S3EvidenceStore, namespace: str, incident: str, uid: str, max_bytes: int
    ) -> None:
        self._store = store
        self._namespace = namespace
        self._incident = incident
        self._uid = uid
        self._max_bytes = max_bytes
        self._object = f"bundle-{secrets.token_hex(8)}.tar.gz"
        self._key = store.key(namespace, incident, self._object)
        self._hash = hashlib.sha256()
        self._size = 0
        self._buffer = bytearray()
        self._parts: list[dict[str, Any]] = []
        self._done = False
        self._completed = False
        try:
            created = store.client.create_multipart_upload(
                Bucket=store.config.bucket,
                Key=self._key,
                ContentType="application/gzip",
                Metadata={"memwarden-uid": uid},
            )
        except store.errors as exc:
            raise _unavailable(exc, f"cannot start the upload of {namespace}/{incident}") from exc
        self._upload_id = str(created["UploadId"])

    @property
    def bytes_written(self) -> int:
        return self._size

    def write(self, chunk: bytes) -> None:
        """Append ``chunk``; a full part goes to S3 now. :class:`TooLarge` past the cap
        (the multipart upload is aborted first)."""
        if self._done:
            raise StoreError("writer already finished")
        if self._size + len(chunk) > self._max_bytes:
            self.abort()
            raise TooLarge(self._max_bytes)
        self._hash.update(chunk)
        self._size += len(chunk)
        self._buffer += chunk
        part = self._store.config.part_bytes
        while len(self._buffer) >= part:
            with memoryview(self._buffer) as view:
                data = bytes(view[:part])  # one copy of the part, not a slice and a copy
            self._upload_part(data)
            del data
            del self._buffer[:part]

    def _upload_part(self, data: bytes) -> None:
        number = len(self._parts) + 1
        try:
            answer = self._store.client.upload_part(
                Bucket=self._store.config.bucket,
                Key=self._key,
                UploadId=self._upload_id,
                PartNumber=number,
                Body=data,
            )
        except self._store.errors as exc:
            self.abort()
            raise _unavailable(exc, f"part {number} of {self._key} not stored") from exc
        self._parts.append({"PartNumber": number, "ETag": answer["ETag"]})

    def commit(self, *, now: dt.datetime) -> BundleMeta:
        """Complete the bundle object, then write the commit record if none exists;
        :class:`AlreadyStored` (and this upload's object deleted) if another won."""
        if self._done:
            raise StoreError("writer already finished")
        store, bucket = self._store, self._store.config.bucket
        meta = BundleMeta(
            uid=self._uid, bytes=self._size, sha256=self._hash.hexdigest(), stored_at=now
        )
        if self._buffer or not self._parts:
            self._upload_part(bytes(self._buffer))
            self._buffer.clear()
        try:
            store.client.complete_multipart_upload(
                Bucket=bucket,
                Key=self._key,
                UploadId=self._upload_id,
                MultipartUpload={"Parts": self._parts},
            )
            self._completed = True
            if store.exists(self._namespace, self._incident):
                raise AlreadyStored(f"{self._namespace}/{self._incident} is already stored")
            record = {**meta.to_json(), "object": self._object}
            store.client.put_object(
                Bucket=bucket,
                Key=store.key(self._namespace, self._incident, META_OBJECT),
                Body=json.dumps(record).encode(),
                ContentType="application/json",
                IfNoneMatch="*",
            )
        except AlreadyStored:
            self.abort()
            raise
        except store.errors as exc:
            self.abort()
            if _error_code(exc) in {"PreconditionFailed", "412", "ConditionalRequestConflict"}:
                raise AlreadyStored(
                    f"{self._namespace}/{self._incident} is already stored"
                ) from exc
            raise _unavailable(exc, f"cannot store {self._namespace}/{self._incident}") from exc
        self._done = True
        return meta

    def abort(self) -> None:
        """Abort the multipart upload (or delete the completed object no meta commits)."""
        if self._done:
            return
        self._done = True
        self._buffer = bytearray()
        client, bucket = self._store.client, self._store.config.bucket
        try:
            if self._completed:
                client.delete_object(Bucket=bucket, Key=self._key)
            else:
                client.abort_multipart_upload(
                    Bucket=bucket, Key=self._key, UploadId=self._upload_id
                )
        except self._store.errors as exc:  # the sweep aborts it later
            log.warning("cannot abort the upload of %s (swept later): %s", self._key, exc)


class S3EvidenceStore:
    """Bundles in ``config.bucket`` under ``config.prefix``; every method validates names."""

    def __init__(self, config: S3Config, *, client: Any = None) -> None:
        if config.part_bytes < MIN_PART_BYTES:
            raise ValueError(f"part_bytes must be at least {MIN_PART_BYTES} (S3's minimum)")
        if config.presign_seconds is not None and not 0 < config.presign_seconds <= 60:
            raise ValueError("presign_seconds must be between 1 and 60")
        import botocore.exceptions  # lazily: only the S3 backend pays for boto3

        self.config = config
        self.prefix = config.prefix
        self.errors: tuple[type[BaseException], ...] = (
            botocore.exceptions.BotoCoreError,
            botocore.exceptions.ClientError,
        )
        self.client = client if client is not None else make_client(config)

    # --- keys -----------------------------------------------------------------------

    def key(self, namespace: str, incident: str, name: str) -> str:
        """The object key of ``name`` in the incident's folder (names validated here)."""
        namespace, incident = validate_namespace(namespace), validate_incident_name(incident)
        if name != META_OBJECT and not _BUNDLE_NAME.fullmatch(name):
            raise InvalidName(f"invalid object name {name!r}")
        return f"{self.prefix}{namespace}/{incident}/{name}"

    def _parse(self, key: str) -> tuple[str, str, str] | None:
        """(namespace, incident, name) of a key under the prefix, or None if not ours."""
        if not key.startswith(self.prefix):
            return None
        parts = key[len(self.prefix) :].split("/")
        if len(parts) != 3:
            return None
        try:
            self.key(*parts)
        except InvalidName:
            return None
        return parts[0], parts[1], parts[2]

    def _objects(self, prefix: str) -> Iterator[dict[str, Any]]:
        paginator = self.client.get_paginator("list_objects_v2")
        try:
            for page in paginator.paginate(Bucket=self.config.bucket, Prefix=prefix):
                yield from page.get("Contents") or []
        except self.errors as exc:
            raise _unavailable(exc, f"cannot list {prefix}") from exc

    # --- the protocol ---------------------------------------------------------------

    def check(self) -> None:
        """Whether the bucket answers with these credentials: :class:`StoreUnavailable`
        naming the problem (wrong key, no such bucket, unreachable endpoint) if not. A
        listing (a GET), not HEAD: its error has a body, so the code is named."""
        try:
            self.client.list_objects_v2(Bucket=self.config.bucket, Prefix=self.prefix, MaxKeys=1)
        except self.errors as exc:
            raise _unavailable(exc, f"bucket {self.config.bucket!r} not usable") from exc

    def open_upload(
        self, namespace: str, incident: str, *, uid: str, max_bytes: int
    ) -> S3BundleWriter:
        """Start an upload for the incident with UID ``uid``; an earlier incident's
        bundle of the same name is deleted first (as on the PVC)."""
        if self.exists(namespace, incident):
            if self.meta(namespace, incident).uid == uid:
                raise AlreadyStored(f"{namespace}/{incident} is already stored")
            log.info("deleting the stale bundle of an earlier %s/%s", namespace, incident)
            self.delete(namespace, incident)
        return S3BundleWriter(
            store=self, namespace=namespace, incident=incident, uid=uid, max_bytes=max_bytes
        )

    def exists(self, namespace: str, incident: str) -> bool:
        key = self.key(namespace, incident, META_OBJECT)
        try:
            self.client.head_object(Bucket=self.config.bucket, Key=key)
        except self.errors as exc:
            if _error_code(exc) in _MISSING:
                return False
            raise _unavailable(exc, f"cannot read {key}") from exc
        return True

    def holds(self, namespace: str, incident: str, *, uid: str) -> bool:
        try:
            return self.meta(namespace, incident).uid == uid
        except NotStored:
            return False

    def _record(self, namespace: str, incident: str) -> dict[str, Any]:
        key = self.key(namespace, incident, META_OBJECT)
        try:
            answer = self.client.get_object(Bucket=self.config.bucket, Key=key)
            raw = answer["Body"].read(64 * 1024)
        except self.errors as exc:
            if _error_code(exc) in _MISSING:
                raise NotStored(f"no bundle stored for {namespace}/{incident}") from exc
            raise _unavailable(exc, f"cannot read {key}") from exc
        try:
            record = json.loads(raw)
            if not isinstance(record, dict):
                raise ValueError("not an object")
            return record
        except ValueError as exc:
            raise StoreError(f"unreadable meta for {namespace}/{incident}: {exc}") from exc

    def meta(self, namespace: str, incident: str) -> BundleMeta:
        record = self._record(namespace, incident)
        try:
            return BundleMeta.from_json(record)
        except (ValueError, KeyError, TypeError) as exc:
            raise StoreError(f"unreadable meta for {namespace}/{incident}: {exc}") from exc

    def _bundle_key(self, namespace: str, incident: str) -> str:
        record = self._record(namespace, incident)
        return self.key(namespace, incident, str(record.get("object", "")))

    def open_bundle(self, namespace: str, incident: str) -> BundleReader:
        key = self._bundle_key(namespace, incident)
        try:
            answer = self.client.get_object(Bucket=self.config.bucket, Key=key)
        except self.errors as exc:
            if _error_code(exc) in _MISSING:
                raise NotStored(f"no bundle stored for {namespace}/{incident}") from exc
            raise _unavailable(exc, f"cannot read {key}") from exc
        return _S3Reader(answer["Body"], int(answer["ContentLength"]))

    def download_url(self, namespace: str, incident: str) -> str | None:
        """A presigned GET of the bundle object, valid ``presign_seconds``, if configured:
        a bearer URL, so short-lived; the caller has been authorised already."""
        if self.config.presign_seconds is None:
            return None
        key = self._bundle_key(namespace, incident)
        filename = f"{namespace}-{incident}.tar.gz"
        try:
            url: str = self.client.generate_presigned_url(
                "get_object",
                Params={
                    "Bucket": self.config.bucket,
                    "Key": key,
                    "ResponseContentDisposition": f'attachment; filename="{filename}"',
                },
                ExpiresIn=self.config.presign_seconds,
            )
        except self.errors as exc:
            raise _unavailable(exc, f"cannot presign {key}") from exc
        return url

    @contextlib.contextmanager
    def local_bundle(self, namespace: str, incident: str) -> Iterator[Path]:
        """The start of the bundle, streamed into a private temporary file (``TMPDIR``)
        removed after: at most :data:`ANALYSIS_PREFIX_BYTES`. The analysis reads the
        members the toolbox writes first (manifest, heap, goroutine: each refused over
        256 MiB) and stops there, so the GiB core after them is never fetched."""
        key = self._bundle_key(namespace, incident)
        try:
            answer = self.client.get_object(
                Bucket=self.config.bucket, Key=key, Range=f"bytes=0-{ANALYSIS_PREFIX_BYTES - 1}"
            )
        except self.errors as exc:
            if _error_code(exc) in _MISSING:
                raise NotStored(f"no bundle stored for {namespace}/{incident}") from exc
            raise _unavailable(exc, f"cannot read {key}") from exc
        reader = _S3Reader(answer["Body"], int(answer["ContentLength"]))
        fd, name = tempfile.mkstemp(prefix="memwarden-bundle-", suffix=".tar.gz")
        path = Path(name)
        try:
            with os.fdopen(fd, "wb") as out:
                try:
                    while chunk := reader.read(_DOWNLOAD_CHUNK):
                        out.write(chunk)
                finally:
                    reader.close()
            yield path
        finally:
            path.unlink(missing_ok=True)

    def list(self, namespace: str) -> _Entries:
        namespace = validate_namespace(namespace)
        return self._entries(f"{self.prefix}{namespace}/")

    def entries(self) -> _Entries:
        return self._entries(self.prefix)

    def _entries(self, prefix: str) -> _Entries:
        entries: _Entries = []
        for item in self._objects(prefix):
            parsed = self._parse(str(item["Key"]))
            if parsed is None or parsed[2] != META_OBJECT:
                continue
            namespace, incident, _ = parsed
            try:
                entries.append(Entry(namespace, incident, self.meta(namespace, incident)))
            except NotStored:
                continue  # deleted since the listing
            except StoreUnavailable:
                raise
            except StoreError as exc:
                log.warning("skipping %s: %s", item["Key"], exc)
        return sorted(entries, key=lambda e: (e.namespace, e.incident))

    def usage(self) -> dict[str, int]:
        """Stored bytes per namespace from one listing: the bundle objects of incidents
        that have a commit record (an uncommitted object beside one is counted too until
        swept: the cap errs on the side of refusing)."""
        committed: set[tuple[str, str]] = set()
        sizes: list[tuple[str, str, int]] = []
        for item in self._objects(self.prefix):
            parsed = self._parse(str(item["Key"]))
            if parsed is None:
                continue
            namespace, incident, name = parsed
            if name == META_OBJECT:
                committed.add((namespace, incident))
            else:
                sizes.append((namespace, incident, int(item.get("Size") or 0)))
        totals: dict[str, int] = {}
        for namespace, incident, size in sizes:
            if (namespace, incident) in committed:
                totals[namespace] = totals.get(namespace, 0) + size
        return totals

    def delete(self, namespace: str, incident: str) -> bool:
        """Delete the commit record first (readers stop seeing the bundle at once), then
        every object in the incident's folder; False if nothing was committed."""
        had_meta = self.exists(namespace, incident)
        folder = self.key(namespace, incident, META_OBJECT)[: -len(META_OBJECT)]
        try:
            self.client.delete_object(Bucket=self.config.bucket, Key=folder + META_OBJECT)
            for item in list(self._objects(folder)):
                self.client.delete_object(Bucket=self.config.bucket, Key=item["Key"])
        except self.errors as exc:
            raise _unavailable(exc, f"cannot delete {folder}") from exc
        return had_meta

    def sweep_partial(self, *, now: dt.datetime, older_than: dt.timedelta) -> Sequence[str]:
        """Abort multipart uploads started more than ``older_than`` ago (crashed or
        abandoned uploads), and delete bundle objects that no commit record names."""
        cutoff = now - older_than
        bucket = self.config.bucket
        removed: list[str] = []
        try:
            paginator = self.client.get_paginator("list_multipart_uploads")
            for page in paginator.paginate(Bucket=bucket, Prefix=self.prefix):
                for upload in page.get("Uploads") or []:
                    if upload["Initiated"] < cutoff and self._parse(upload["Key"]) is not None:
                        self.client.abort_multipart_upload(
                            Bucket=bucket, Key=upload["Key"], UploadId=upload["UploadId"]
                        )
                        removed.append(f"multipart upload of {upload['Key']}")
        except self.errors as exc:
            raise _unavailable(exc, "cannot sweep multipart uploads") from exc
        folders: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for item in self._objects(self.prefix):
            parsed = self._parse(str(item["Key"]))
            if parsed is not None:
                folders.setdefault((parsed[0], parsed[1]), []).append(item)
        for (namespace, incident), items in folders.items():
            names = {str(i["Key"]).rsplit("/", 1)[1] for i in items}
            committed = None
            if META_OBJECT in names:
                try:
                    committed = str(self._record(namespace, incident).get("object"))
                except (NotStored, StoreUnavailable):
                    continue  # deleted meanwhile, or unreadable now: next sweep
                except StoreError:
                    committed = None
            for item in items:
                name = str(item["Key"]).rsplit("/", 1)[1]
                if name in (META_OBJECT, committed) or item["LastModified"] >= cutoff:
                    continue
                try:
                    self.client.delete_object(Bucket=bucket, Key=item["Key"])
                except self.errors as exc:
                    raise _unavailable(exc, f"cannot delete {item['Key']}") from exc
                removed.append(str(item["Key"]))
        return removed


def make_client(config: S3Config) -> Any:
    """A boto3 S3 client for ``config``: bounded retries and timeouts, so a dead endpoint
    fails a request in seconds rather than hanging an upload."""
    import boto3
    from botocore.config import Config

    options: dict[str, Any] = {
        "region_name": config.region,
        "config": Config(
            s3={"addressing_style": config.addressing_style},
            signature_version="s3v4",  # presigned URLs too (boto3 would presign with SigV2)
            retries={"max_attempts": 3, "mode": "standard"},
            connect_timeout=5,
            read_timeout=60,
            # Checksums only when the operation requires them: SeaweedFS and older S3
            # implementations refuse the trailing checksums newer botocore sends by default.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
        ),
    }
    if config.endpoint_url:
        options["endpoint_url"] = config.endpoint_url
    if config.ca_file:
        options["verify"] = config.ca_file
    if config.access_key_id and config.secret_access_key:
        options["aws_access_key_id"] = config.access_key_id
        options["aws_secret_access_key"] = config.secret_access_key
    return boto3.session.Session().client("s3", **options)
