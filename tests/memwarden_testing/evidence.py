"""Builders for evidence tests: bundles as the toolbox makes them, incidents, store entries."""

from __future__ import annotations

import asyncio
import datetime as dt
import hashlib
import io
import json
import ssl
import tarfile
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web
from kubernetes import client
from kubernetes.client.exceptions import ApiException

from memwarden.api import API_VERSION, GROUP, VERSION
from memwarden.capture.incident import pod_ips
from memwarden.evidence.adapters.api import LiveIncident
from memwarden.evidence.adapters.store import BundleMeta, Entry
from memwarden_testing.cluster import grant_in_namespace
from memwarden_testing.tls import loopback_certificates

T0 = dt.datetime(2026, 11, 25, 12, 0, tzinfo=dt.UTC)
KEY = b"k" * 32


def make_bundle(members: dict[str, bytes] | None = None, *, padding: int = 0) -> bytes:
    """A tar.gz bundle with ``manifest.json`` (name, bytes, sha256 of each member) first;
    ``padding`` adds an incompressible member of that many bytes."""
    files = dict(members or {"heap.pb.gz": b"\x1f\x8bheap"})
    if padding:
        files["core"] = hashlib.shake_256(b"core").digest(padding)
    manifest = {
        "artifacts": [
            {"name": name, "bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}
            for name, data in files.items()
        ]
    }
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as archive:
        for name, data in {"manifest.json": json.dumps(manifest).encode(), **files}.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return out.getvalue()


def make_incident(
    name: str,
    *,
    pod: str = "checkout-1",
    signal: str = "usageRatio",
    namespace: str | None = None,
    artifacts: list[str] | None = None,
) -> dict[str, Any]:
    """A MemoryIncident object to create (a hand-made one: trigger source ``manual``)."""
    spec: dict[str, Any] = {
        "pod": pod,
        "container": "app",
        "trigger": {"source": "manual", "signal": signal},
    }
    if artifacts is not None:
        spec["artifacts"] = artifacts
    metadata = {"name": name, **({"namespace": namespace} if namespace else {})}
    return {"apiVersion": API_VERSION, "kind": "MemoryIncident", "metadata": metadata, "spec": spec}


def make_entry(
    incident: str,
    *,
    namespace: str = "shop",
    size: int = 100,
    age: dt.timedelta,
    now: dt.datetime = T0,
) -> Entry:
    """A store entry of ``size`` bytes stored ``age`` before ``now``."""
    meta = BundleMeta(uid=f"uid-{incident}", bytes=size, sha256="0" * 64, stored_at=now - age)
    return Entry(namespace=namespace, incident=incident, meta=meta)


class EvidenceServer:
    """An aiohttp application served over TLS on a free loopback port, from a thread with
    its own event loop, so synchronous tests (and the CLI) can call it."""

    def __init__(self, app: web.Application, *, workdir: Path) -> None:
        self.ca_file = workdir / "evidence-ca.crt"
        cert_file, key_file = workdir / "evidence.crt", workdir / "evidence.key"
        loopback_certificates(
            ca_name="test-evidence-ca", ca_file=self.ca_file, cert_file=cert_file, key_file=key_file
        )
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(cert_file, key_file)
        self._app = app
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._runner = web.AppRunner(app)
        self.url = ""

    def start(self) -> EvidenceServer:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    async def _start(self) -> None:
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        host, port = self._runner.addresses[0][:2]
        self.url = f"https://{host}:{port}"

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=30)
        self._loop.close()


def grant_evidence_reader(kube: client.ApiClient, namespace: str, account: str) -> None:
    """The Role docs/evidence.md tells users to create, bound to ServiceAccount ``account``."""
    grant_in_namespace(
        kube,
        namespace,
        name="evidence-reader",
        account=account,
        group=GROUP,
        resources=["memoryincidents", "memoryincidents/evidence"],
        verbs=["get", "list"],
    )


def evidence_reader_token(
    kube: client.ApiClient, namespace: str, account: str = "sre", *, audience: str = "memwarden"
) -> str:
    """A new ServiceAccount ``account`` holding the evidence-reader Role; a token of it for
    the evidence API's audience, as ``kubectl create token sre --audience memwarden``
    makes one for ``memwarden incidents download --evidence-token``."""
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": account}})
    grant_evidence_reader(kube, namespace, account)
    request = {"spec": {"expirationSeconds": 600, "audiences": [audience]}}
    return str(
        core.create_namespaced_service_account_token(account, namespace, request).status.token
    )


def api_lookups(
    kube: client.ApiClient,
) -> tuple[Callable[[str, str], LiveIncident | None], Callable[[str, str], frozenset[str]]]:
    """The evidence API's two look-ups as the operator wires them (handlers/http.py), on
    the real API server: the live incident (None once deleted) and its pod's addresses."""
    custom = client.CustomObjectsApi(kube)

    def incident(namespace: str, name: str) -> LiveIncident | None:
        try:
            obj = custom.get_namespaced_custom_object(
                GROUP, VERSION, namespace, "memoryincidents", name
            )
        except ApiException as exc:
            if exc.status == 404:
                return None
            raise
        phase = (obj.get("status") or {}).get("phase")
        return LiveIncident(uid=str(obj["metadata"]["uid"]), phase=phase, pod=obj["spec"]["pod"])

    def pod_addresses(namespace: str, pod: str) -> frozenset[str]:
        try:
            obj = client.CoreV1Api(kube).read_namespaced_pod(pod, namespace)
        except ApiException as exc:
            if exc.status == 404:
                return frozenset()
            raise
        return pod_ips(kube.sanitize_for_serialization(obj))

    return incident, pod_addresses
