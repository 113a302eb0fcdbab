"""Benchmark: a 1 GiB bundle through the evidence API, to the S3 store and to the PVC store.

For each backend a real operator (``memwarden run``, HTTPS on loopback) against the local
control plane: the bundle (random, incompressible, a temporary file) is uploaded with an
upload token signed by the operator's key, as the toolbox would, then downloaded by a
ServiceAccount holding the evidence-reader Role (TokenReview + SubjectAccessReview), its
sha256 checked against the upload's. Prints MiB/s each way and the operator process's RSS:
its baseline, and its peak during each transfer (polled from /proc every 20 ms), so the
growth shows whether the stream buffers the bundle (it must not: growth << 1 GiB). The S3
server is SeaweedFS ``weed`` on loopback (tests/memwarden_testing/s3.py); its RSS is
reported apart. The PVC store is a directory on this machine's disk.

    MEMWARDEN_APISERVER_PORT=... .venv/bin/python bench/evidence_store_bench.py
    # writes bench/results/evidence_store.json; --size-mib=256 for a quicker run

What the incident looks like: ``Capturing`` with its pod at 127.0.0.1 (the benchmark's
own address), in a namespace the operator does not watch, so only the evidence API acts
on it (as in tests/integration/test_evidence_s3.py).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import os
import platform
import secrets
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO / "operator"), str(REPO / "tests"), str(REPO / "hack")]

import devcluster  # noqa: E402
import requests  # noqa: E402
from kubernetes import client  # noqa: E402

from memwarden.api import GROUP, VERSION  # noqa: E402
from memwarden.evidence.tokens import issue_upload_token  # noqa: E402
from memwarden_testing.builders import make_pod  # noqa: E402
from memwarden_testing.cluster import api_client, ensure_namespace, kubectl, wait_for  # noqa: E402
from memwarden_testing.evidence import grant_evidence_reader, make_incident  # noqa: E402
from memwarden_testing.operator import OPERATOR_NAMESPACE, OperatorProcess  # noqa: E402
from memwarden_testing.s3 import WeedServer, build_weed  # noqa: E402

MiB = 2**20
BLOCK = 8 * MiB
PLURAL = "memoryincidents"


def rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


class PeakRss:
    """The highest RSS of each pid while the block runs, polled every 20 ms."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = pids
        self.peak = {name: rss(pid) for name, pid in pids.items()}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _poll(self) -> None:
        while not self._stop.wait(0.02):
            for name, pid in self.pids.items():
                self.peak[name] = max(self.peak[name], rss(pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()


def make_bundle_file(path: Path, size: int) -> str:
    """``size`` incompressible bytes behind gzip's magic (what the API checks first); the
    sha256 of the file."""
    digest = hashlib.sha256()
    with path.open("wb") as out:
        head = b"\x1f\x8b"
        out.write(head)
        digest.update(head)
        left = size - len(head)
        while left:
            block = os.urandom(min(BLOCK, left))
            out.write(block)
            digest.update(block)
            left -= len(block)
    return digest.hexdigest()


def play_capture(kube: client.ApiClient, namespace: str, name: str) -> str:
    """An incident ``Capturing`` whose pod has this machine's loopback address; its uid."""
    core, custom = client.CoreV1Api(kube), client.CustomObjectsApi(kube)
    core.create_namespaced_pod(namespace, make_pod(name, namespace=namespace))
    core.patch_namespaced_pod_status(
        name, namespace, {"status": {"podIP": "127.0.0.1", "podIPs": [{"ip": "127.0.0.1"}]}}
    )
    obj = custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, make_incident(name, pod=name)
    )
    custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name, {"status": {"phase": "Capturing"}}
    )
    return str(obj["metadata"]["uid"])


def reader_token(kube: client.ApiClient, namespace: str) -> str:
    core = client.CoreV1Api(kube)
    core.create_namespaced_service_account(namespace, {"metadata": {"name": "sre"}})
    grant_evidence_reader(kube, namespace, "sre")
    request = {"spec": {"expirationSeconds": 3600, "audiences": ["memwarden"]}}
    return str(core.create_namespaced_service_account_token("sre", namespace, request).status.token)


@contextmanager
def running(operator: OperatorProcess) -> Iterator[OperatorProcess]:
    operator.make_certificates()
    operator.start()
    try:
        yield operator
    finally:
        operator.stop()


def one_backend(
    *,
    backend: str,
    kube: client.ApiClient,
    kubeconfig: Path,
    namespace: str,
    bundle: Path,
    sha256: str,
    reader: str,
    workdir: Path,
    weed: WeedServer | None,
) -> dict[str, Any]:
    size = bundle.stat().st_size
    env = {"MEMWARDEN_EVIDENCE_MAX_BUNDLE_BYTES": str(size + MiB)}
    if weed is not None:
        env |= weed.env() | {"MEMWARDEN_EVIDENCE_S3_PREFIX": f"bench-{secrets.token_hex(4)}/"}
    operator = OperatorProcess(
        kubeconfig=kubeconfig,
        workdir=workdir,
        extra_env=env,
        # It watches an empty namespace: only its evidence API acts on the bench's incident.
        extra_args=[f"--namespace={namespace}-unwatched"],
    )
    workdir.mkdir(parents=True, exist_ok=True)
    result: dict[str, Any] = {"backend": backend, "bytes": size}
    with running(operator):
        assert operator.process is not None
        pids = {"operator": operator.process.pid}
        if weed is not None:
            pids["weed"] = weed.pid
        name = f"bench-{backend}"
        uid = play_capture(kube, namespace, name)
        key = operator.evidence_key_file.read_text().strip().encode()
        token = issue_upload_token(
            key=key,
            namespace=namespace,
            incident=name,
            uid=uid,
            expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(hours=1),
        )
        url = f"{operator.evidence_url}/v1/namespaces/{namespace}/incidents/{name}/bundle"
        time.sleep(1)  # let start-up settle before the baseline (not a wait for a condition)
        baseline = {n: rss(p) for n, p in pids.items()}
        result["rss_baseline_mib"] = {n: round(v / MiB, 1) for n, v in baseline.items()}

        with bundle.open("rb") as body, PeakRss(pids) as peak:
            started = time.monotonic()
            answer = requests.put(
                url,
                data=body,  # streamed from the file, with its Content-Length
                headers={"Authorization": f"Bearer {token}", "Content-Type": "application/gzip"},
                verify=str(operator.ca_file),
                timeout=600,
            )
            upload_s = time.monotonic() - started
        assert answer.status_code == 201, answer.text
        assert answer.json()["sha256"] == sha256, "the store's sha256 is the file's"
        result["upload_s"] = round(upload_s, 2)
        result["upload_mib_s"] = round(size / MiB / upload_s, 1)
        result["upload_rss_peak_mib"] = {n: round(v / MiB, 1) for n, v in peak.peak.items()}
        result["upload_operator_rss_growth_mib"] = round(
            (peak.peak["operator"] - baseline["operator"]) / MiB, 1
        )
        # The operator analyses the bundle once stored (a random one is refused quickly):
        # wait for that to end, so the download is measured alone.
        custom = client.CustomObjectsApi(kube)
        wait_for(
            lambda: (
                (
                    custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, name
                    ).get("status")
                    or {}
                ).get("phase")
                != "Capturing"
            ),
            timeout=300,
            interval=0.5,
            what="the operator to complete the incident",
        )
        baseline = {n: rss(p) for n, p in pids.items()}
        digest = hashlib.sha256()
        received = 0
        with PeakRss(pids) as peak:
            started = time.monotonic()
            with requests.get(
                url,
                headers={"Authorization": f"Bearer {reader}"},
                verify=str(operator.ca_file),
                stream=True,
                timeout=600,
            ) as response:
                assert response.status_code == 200, response.text
                for chunk in response.iter_content(chunk_size=MiB):
                    digest.update(chunk)
                    received += len(chunk)
            download_s = time.monotonic() - started
        assert received == size and digest.hexdigest() == sha256, "the download is the upload"
        result["download_s"] = round(download_s, 2)
        result["download_mib_s"] = round(size / MiB / download_s, 1)
        result["download_rss_peak_mib"] = {n: round(v / MiB, 1) for n, v in peak.peak.items()}
        result["download_operator_rss_growth_mib"] = round(
            (peak.peak["operator"] - baseline["operator"]) / MiB, 1
        )
        result["sha256_verified"] = True
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mib", type=int, default=1024)
    parser.add_argument("--out", type=Path, default=HERE / "results" / "evidence_store.json")
    args = parser.parse_args(argv)

    layout = devcluster.default_layout()
    devcluster.up(layout)
    kubeconfig = layout.kubeconfig
    kubectl(kubeconfig, "apply", "-f", str(REPO / "crds"))
    kubectl(
        kubeconfig,
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        f"crd/{PLURAL}.{GROUP}",
    )
    kube = api_client(kubeconfig)
    core = client.CoreV1Api(kube)
    ensure_namespace(core, OPERATOR_NAMESPACE)
    namespace = f"evbench-{secrets.token_hex(3)}"
    ensure_namespace(core, namespace)
    ensure_namespace(core, f"{namespace}-unwatched")
    reader = reader_token(kube, namespace)
    results: list[dict[str, Any]] = []
    try:
        with tempfile.TemporaryDirectory(prefix="evidence-bench-") as tmp:
            work = Path(tmp)
            bundle = work / "bundle.bin"
            print(f"writing a {args.size_mib} MiB random bundle", flush=True)
            sha256 = make_bundle_file(bundle, args.size_mib * MiB)
            weed = WeedServer(binary=build_weed(), workdir=work / "weed")
            weed.start()
            try:
                for backend in ("pvc", "s3"):
                    print(f"{backend}: upload and download", flush=True)
                    outcome = one_backend(
                        backend=backend,
                        kube=kube,
                        kubeconfig=kubeconfig,
                        namespace=namespace,
                        bundle=bundle,
                        sha256=sha256,
                        reader=reader,
                        workdir=work / backend,
                        weed=weed if backend == "s3" else None,
                    )
                    print(json.dumps(outcome), flush=True)
                    results.append(outcome)
            finally:
                weed.stop()
    finally:
        for name in (namespace, f"{namespace}-unwatched"):
            core.delete_namespace(name)
    report = {
        "benchmark": "evidence_store",
        "bundle_mib": args.size_mib,
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version()},
        "when": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "results": results,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"{'backend':8} {'up MiB/s':>9} {'down MiB/s':>11} {'RSS +up':>8} {'RSS +down':>10}")
    for r in results:
        up, down = r["upload_operator_rss_growth_mib"], r["download_operator_rss_growth_mib"]
        print(
            f"{r['backend']:8} {r['upload_mib_s']:9.1f} {r['download_mib_s']:11.1f} "
            f"{up:7.1f}M {down:9.1f}M"
        )
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
