"""A real S3-compatible server: SeaweedFS's ``weed server -s3``, built from its pinned Go
module by ``hack/seaweedfs/build.sh`` (cached after the first build). Test
infrastructure, not product code.

One process (master, volume server, filer and S3 gateway) on free loopback ports, its data
in a temporary directory. Credentials are checked: the S3 gateway is configured with two
identities, ``memwarden`` (may do everything, as the operator's bucket credentials) and
``outsider`` (a valid key with no rights, for negative tests). The session's bucket is made
before the first test.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from memwarden_testing.cluster import REPO, stop_process_group, wait_for
from memwarden_testing.operator import free_port

BUILD = REPO / "hack" / "seaweedfs" / "build.sh"
ACCESS_KEY = "memwarden-test"
SECRET_KEY = "memwarden-test-secret-0123456789"
OUTSIDER_ACCESS_KEY = "outsider-test"
OUTSIDER_SECRET_KEY = "outsider-test-secret-0123456789"
BUCKET = "memwarden-evidence"


def build_weed() -> Path:
    """``weed``, built (or taken from the cache) by hack/seaweedfs/build.sh."""
    built = subprocess.run(
        ["bash", str(BUILD)], capture_output=True, text=True, timeout=1800, check=False
    )
    if built.returncode != 0:
        raise AssertionError(f"hack/seaweedfs/build.sh failed: {built.stderr[-3000:]}")
    return Path(built.stdout.strip().splitlines()[-1])


def s3_identities() -> dict[str, Any]:
    """The gateway's identities (``-s3.config``): the operator's, and one without rights."""
    return {
        "identities": [
            {
                "name": "memwarden",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"],
            },
            {
                "name": "outsider",
                "credentials": [
                    {"accessKey": OUTSIDER_ACCESS_KEY, "secretKey": OUTSIDER_SECRET_KEY}
                ],
                "actions": [],
            },
        ]
    }


@dataclass
class WeedServer:
    """One ``weed server -s3`` on free loopback ports; ``client()`` makes boto3 clients."""

    binary: Path
    workdir: Path
    s3_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def env(self, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> dict[str, str]:
        """The operator's environment for this server (flat settings, boto3's env chain)."""
        return {
            "MEMWARDEN_EVIDENCE_BACKEND": "s3",
            "MEMWARDEN_EVIDENCE_S3_ENDPOINT_URL": self.endpoint,
            "MEMWARDEN_EVIDENCE_S3_BUCKET": BUCKET,
            "MEMWARDEN_EVIDENCE_S3_ADDRESSING_STYLE": "path",
            "AWS_ACCESS_KEY_ID": access_key,
            "AWS_SECRET_ACCESS_KEY": secret_key,
        }

    def client(self, *, access_key: str = ACCESS_KEY, secret_key: str = SECRET_KEY) -> Any:
        from memwarden.evidence.adapters.s3store import S3Config, make_client

        return make_client(
            S3Config(
                bucket=BUCKET,
                endpoint_url=self.endpoint,
                addressing_style="path",
                access_key_id=access_key,
                secret_access_key=secret_key,
            )
        )

    def start(self, *, timeout: float = 120) -> None:
        if self.process is not None and self.process.poll() is None:
            return
        data = self.workdir / "data"
        data.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "s3.json"
        config.write_text(json.dumps(s3_identities()))
        config.chmod(0o600)
        ports = {name: free_port() for name in ("master", "volume", "filer")}
        command = [
            str(self.binary),
            "server",
            "-ip=127.0.0.1",
            "-ip.bind=127.0.0.1",
            f"-dir={data}",
            f"-master.port={ports['master']}",
            f"-master.port.grpc={free_port()}",
            "-master.volumeSizeLimitMB=512",
            "-master.telemetry=false",
            f"-volume.port={ports['volume']}",
            f"-volume.port.grpc={free_port()}",
            "-volume.max=20",
            f"-filer.port={ports['filer']}",
            f"-filer.port.grpc={free_port()}",
            "-s3",
            f"-s3.port={self.s3_port}",
            f"-s3.port.grpc={free_port()}",
            "-s3.port.iceberg=0",
            "-s3.port.lance=0",
            f"-s3.config={config}",
        ]
        log = (self.workdir / "weed.log").open("ab")
        self.process = subprocess.Popen(
            command,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.workdir,
            start_new_session=True,
            env={**os.environ, "HOME": str(self.workdir)},
        )
        try:
            wait_for(self._ready, timeout=timeout, interval=0.5, what=f"weed S3 on {self.endpoint}")
        except BaseException:
            self.stop()  # a start that failed leaves no server behind (no fixture stops it)
            raise

    def _ready(self) -> bool:
        if self.process is not None and self.process.poll() is not None:
            raise AssertionError(f"weed exited: {self.log_tail()}")
        import botocore.exceptions

        client = self.client()
        try:
            client.list_buckets()
            existing = {b["Name"] for b in client.list_buckets().get("Buckets") or []}
            if BUCKET not in existing:
                client.create_bucket(Bucket=BUCKET)
            # A write proves the volume servers are up, not only the gateway.
            client.put_object(Bucket=BUCKET, Key="ready", Body=b"ok")
            client.delete_object(Bucket=BUCKET, Key="ready")
        except (botocore.exceptions.BotoCoreError, botocore.exceptions.ClientError):
            return False
        return True

    def keys(self, prefix: str = "") -> list[str]:
        """Every object key under ``prefix`` (admin view, for assertions)."""
        client = self.client()
        keys: list[str] = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix):
            keys += [str(item["Key"]) for item in page.get("Contents") or []]
        return keys

    def multipart_uploads(self, prefix: str = "") -> list[str]:
        answer = self.client().list_multipart_uploads(Bucket=BUCKET, Prefix=prefix)
        return [str(upload["Key"]) for upload in answer.get("Uploads") or []]

    def rss_bytes(self) -> int:
        """The server's resident set (for the benchmark's report)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        return 0

    def stop(self) -> None:
        stop_process_group(self.process)

    def log_tail(self, size: int = 3000) -> str:
        try:
            return (self.workdir / "weed.log").read_text(errors="replace")[-size:]
        except OSError:
            return ""


# --- fixtures (registered through ``pytest_plugins`` in tests/conftest.py) ------------


@pytest.fixture(scope="session")
def weed_binary() -> Path:
    """SeaweedFS's weed, built once (minutes cold; hack/bootstrap.sh does it) and cached."""
    return build_weed()


@pytest.fixture(scope="session")
def s3_server(weed_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    """A real S3 server for the session, its bucket made; stopped and waited for."""
    server = WeedServer(binary=weed_binary, workdir=tmp_path_factory.mktemp("weed"))
    server.start()
    yield server
    server.stop()
