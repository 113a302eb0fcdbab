"""``memwarden capture`` against a real running leaky process, its artifacts checked with
the real tools: ``go tool pprof``, ``go tool trace`` and ``gdb`` on the core.

Needs the Go toolchain and gdb; no cluster. The toolbox runs as a child process, as it
does in the debug container. The full capture runs once per module (it writes a core of
the leaky process's whole address space, ~1.3 GiB on disk, mostly zeros).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from memwarden.capture.adapters.bundles import load_evidence
from memwarden.capture.analysis import summarize
from memwarden.capture.plan import PTRACE_SKIPPED_REASON
from memwarden.capture.toolbox import CGROUP_FILES, MANIFEST_MEMBER, SUMMARY_LIMIT
from memwarden.evidence.tokens import issue_upload_token
from memwarden_testing.cluster import wait_for
from memwarden_testing.evidence import KEY
from memwarden_testing.leaky import (
    LEAK_FUNCTION,
    NONROOT,
    Leaky,
    MiB,
    run_leaky,
    wait_leaked,
)
from memwarden_testing.operator import free_port
from memwarden_testing.tls import loopback_certificates
from memwarden_testing.upload import upload_sink

pytestmark = pytest.mark.integration

LEAK_BYTES = 64 * MiB
GOROUTINES = 8
ENV = {
    "LEAKY_RATE": "512Mi",  # reaches the cap within a second
    "LEAKY_MAX": str(LEAK_BYTES),
    "LEAKY_GOROUTINES": str(GOROUTINES),
}
PROFILE_ENTRIES = ("heap", "allocs", "goroutine", "goroutine-stacks", "trace")
EVERY_ENTRY = (*PROFILE_ENTRIES, "gcore", "proc/status", "proc/smaps_rollup")


@dataclass(frozen=True)
class Capture:
    """One toolbox run: its exit code, the summary it printed, its log."""

    returncode: int
    summary: dict[str, Any]
    stdout: str
    stderr: str


@dataclass(frozen=True)
class Bundle:
    """A bundle unpacked once: the manifest, each member's sha256 and size, the files."""

    manifest: dict[str, Any]
    members: dict[str, tuple[int, str]]
    directory: Path

    def entry(self, name: str) -> dict[str, Any]:
        return next(a for a in self.manifest["artifacts"] if a["name"] == name)


def unpack(bundle: Path, directory: Path, *, write_all: bool = False) -> Bundle:
    """Stream through the tar.gz once: hash every member; write the manifest (and, with
    ``write_all``, every member) under ``directory``."""
    members: dict[str, tuple[int, str]] = {}
    with tarfile.open(bundle, mode="r|gz") as archive:
        for member in archive:
            source = archive.extractfile(member)
            assert source is not None, member.name
            target = directory / member.name
            target.parent.mkdir(parents=True, exist_ok=True)
            write = write_all or member.name == MANIFEST_MEMBER
            digest = hashlib.sha256()
            with target.open("wb") if write else open(os.devnull, "wb") as out:
                while chunk := source.read(1 << 20):
                    digest.update(chunk)
                    out.write(chunk)
            members[member.name] = (member.size, digest.hexdigest())
    manifest = json.loads((directory / MANIFEST_MEMBER).read_text())
    return Bundle(manifest=manifest, members=members, directory=directory)


def capture(*args: str, prefix: Sequence[str] = (), env: dict[str, str] | None = None) -> Capture:
    result = subprocess.run(
        [*prefix, sys.executable, "-m", "memwarden.cli", "capture", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    lines = result.stdout.strip().splitlines()
    assert lines, result.stderr
    return Capture(
        returncode=result.returncode,
        summary=json.loads(lines[-1]),
        stdout=result.stdout,
        stderr=result.stderr,
    )


@pytest.fixture(scope="module")
def leaky(leaky_binary: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Leaky]:
    if shutil.which("gcore") is None:
        pytest.fail("gdb (gcore) is required: apt-get install gdb")
    # Non-root, as production Go services: the toolbox (root here) must still read its /proc
    # and dump its core; without CAP_SYS_PTRACE it cannot (another user's process).
    user = NONROOT if os.geteuid() == 0 else None
    workdir = tmp_path_factory.mktemp("leaky")
    with run_leaky(leaky_binary, workdir=workdir, env=ENV, user=user) as running:
        wait_leaked(running, LEAK_BYTES)
        yield running


def test_the_target_is_another_users_process(leaky: Leaky) -> None:
    """What the rest of this module captures from: a non-root process (when tests run as
    root), so the toolbox's /proc reads and gcore need its CAP_SYS_PTRACE for real."""
    if os.geteuid() != 0:
        pytest.skip("tests do not run as root: leaky runs as the test's user")
    status = Path(f"/proc/{leaky.pid}/status").read_text()
    uid = next(line for line in status.splitlines() if line.startswith("Uid:"))
    assert uid.split()[1:] == [str(NONROOT[0])] * 4


@pytest.fixture(scope="module")
def full(leaky: Leaky, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Capture, Path]]:
    """Every artifact, to a file; the capture and the termination log it wrote."""
    workdir = tmp_path_factory.mktemp("full")
    result = capture(
        f"--pid={leaky.pid}",
        f"--pprof-port={leaky.port}",
        "--trace-seconds=1",
        "--max-core-bytes=4Gi",
        f"--out={workdir / 'bundle.tar.gz'}",
        f"--termination-log={workdir / 'termination-log'}",
        f"--workdir={workdir / 'scratch'}",
        "--incident=checkout-20261125-1812",
    )
    yield result, workdir
    shutil.rmtree(workdir, ignore_errors=True)  # the core is big


@pytest.fixture(scope="module")
def bundle(full: tuple[Capture, Path]) -> Bundle:
    _, workdir = full
    return unpack(workdir / "bundle.tar.gz", workdir / "unpacked", write_all=True)


def assert_consistent(bundle: Bundle) -> None:
    """Members are the manifest plus exactly the ok entries, with the sizes and hashes said."""
    ok = [a for a in bundle.manifest["artifacts"] if a["status"] == "ok"]
    assert set(bundle.members) == {MANIFEST_MEMBER, *(a["file"] for a in ok)}
    for artifact in ok:
        assert bundle.members[artifact["file"]] == (artifact["bytes"], artifact["sha256"])


def test_bundle_has_every_artifact_with_matching_sha256(
    full: tuple[Capture, Path], bundle: Bundle, leaky: Leaky
) -> None:
    result, workdir = full

    assert result.returncode == 0, result.stderr
    assert_consistent(bundle)
    statuses = {a["name"]: a["status"] for a in bundle.manifest["artifacts"]}
    assert {name: statuses.get(name) for name in EVERY_ENTRY} == dict.fromkeys(EVERY_ENTRY, "ok")
    assert bundle.manifest["pid"] == leaky.pid
    assert bundle.manifest["pprof"] == f"http://127.0.0.1:{leaky.port}"
    assert bundle.manifest["incident"] == "checkout-20261125-1812"
    assert bundle.manifest["startedAt"] <= bundle.manifest["finishedAt"]
    assert bundle.manifest["toolboxVersion"]
    # The termination message is the printed summary, within the kubelet's limit.
    message = (workdir / "termination-log").read_text()
    assert len(message.encode()) <= SUMMARY_LIMIT
    assert json.loads(message) == result.summary
    assert (
        result.summary["bundle"]["sha256"]
        == hashlib.sha256((workdir / "bundle.tar.gz").read_bytes()).hexdigest()
    )
    assert not any((workdir / "scratch").iterdir())  # temp files removed
    # Streamed: the toolbox never came near holding the ~1.3 GiB core in memory.
    assert 0 < result.summary["peakRssBytes"]["self"] < 100 * MiB


def test_cgroup_files_are_collected_or_said_absent(bundle: Bundle) -> None:
    directory = bundle.manifest["cgroupDir"]
    assert directory, "the target's cgroup v2 directory was not found"
    for name in CGROUP_FILES:
        entry = bundle.entry(f"cgroup/{name}")
        exists = (Path(directory) / name).is_file()
        assert entry["status"] == ("ok" if exists else "skipped"), entry
        if not exists:
            assert entry["skipped"] == "absent"


def test_heap_profile_opens_with_pprof_and_ranks_the_leak_first(
    bundle: Bundle, go: str, full: tuple[Capture, Path]
) -> None:
    heap = bundle.directory / "heap.pb.gz"
    top = subprocess.run(
        [go, "tool", "pprof", "-top", "-symbolize=none", str(heap)],
        env={**os.environ, "PPROF_TMPDIR": str(bundle.directory)},
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert LEAK_FUNCTION in top.stdout

    evidence = load_evidence(full[1] / "bundle.tar.gz")
    summary = summarize(evidence.heap, goroutine=evidence.goroutine)

    assert summary.top.functions[0].function == LEAK_FUNCTION
    assert summary.top.functions[0].flat > LEAK_BYTES // 2  # sampled, not exact
    assert summary.goroutines is not None
    assert summary.goroutines > GOROUTINES
    stacks = (bundle.directory / "goroutine-stacks.txt").read_text()
    assert stacks.count("main.parkIdleWorker(") == GOROUTINES


def trace_readable(go: str, trace: Path) -> bool:
    """``go tool trace -d=parsed`` parses the whole trace, and fails on a broken one."""
    parsed = subprocess.run(
        [go, "tool", "trace", "-d=parsed", str(trace)],
        capture_output=True,
        timeout=120,
        check=False,
    )
    return parsed.returncode == 0 and bool(parsed.stdout)


@pytest.mark.parametrize(
    ("keep", "readable"),
    [pytest.param(1.0, True, id="as-captured"), pytest.param(0.5, False, id="truncated")],
)
def test_trace_is_readable_by_go_tool_trace(
    bundle: Bundle, go: str, tmp_path: Path, keep: float, readable: bool
) -> None:
    data = (bundle.directory / "trace.out").read_bytes()
    trace = tmp_path / "trace.out"
    trace.write_bytes(data[: int(len(data) * keep)])

    assert trace_readable(go, trace) is readable


def test_core_opens_with_gdb_and_shows_the_leak(
    bundle: Bundle, go: str, leaky_binary: Path
) -> None:
    nm = subprocess.run(
        [go, "tool", "nm", str(leaky_binary)], capture_output=True, text=True, check=True
    )
    address = next(
        line.split()[0] for line in nm.stdout.splitlines() if line.endswith(f" {LEAK_FUNCTION}")
    )

    gdb = subprocess.run(
        [
            "gdb",
            "-nx",
            "-batch",
            "-ex",
            f"info symbol 0x{address}",
            "-ex",
            "print 'main.leakedBytes'.v",
            str(leaky_binary),
            str(bundle.directory / "core"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )

    assert gdb.returncode == 0, gdb.stderr
    assert "retainSessionBuffers in section .text" in gdb.stdout.replace("[", ".").replace("]", "")
    # A global read from the core's memory: the leak counter at its cap.
    assert f"= {LEAK_BYTES}" in gdb.stdout


@pytest.mark.parametrize(
    ("token", "returncode", "status"),
    [
        pytest.param("s3cret", 0, 201, id="good-token"),
        pytest.param("wrong", 1, 401, id="bad-token-not-retried"),
    ],
)
def test_upload_streams_the_bundle_with_a_bearer_token(
    leaky: Leaky, tmp_path: Path, token: str, returncode: int, status: int
) -> None:
    with upload_sink(tmp_path, token="s3cret") as sink:
        result = capture(
            f"--pid={leaky.pid}",
            f"--pprof-port={leaky.port}",
            "--artifacts=heap,goroutine,smaps,cgroup",
            env={
                "MEMWARDEN_PPROF_HOST": "127.0.0.1",
                "MEMWARDEN_UPLOAD_URL": f"{sink.url}/v1/namespaces/shop/incidents/x/bundle",
                "MEMWARDEN_UPLOAD_TOKEN": token,
            },
        )

    assert result.returncode == returncode, result.stderr
    (received,) = sink.received  # a 401 is not retried
    assert received.status == status
    assert received.path == "/v1/namespaces/shop/incidents/x/bundle"
    assert received.headers["Transfer-Encoding"] == "chunked"  # streamed, no Content-Length
    assert "Content-Length" not in received.headers
    if status == 201:
        assert received.file is not None
        # The most it could send, declared so the store reserves the disk beforehand.
        assert 0 < received.size <= int(received.headers["X-Bundle-Max-Bytes"])
        assert received.sha256 == result.summary["bundle"]["sha256"]
        assert received.size == result.summary["bundle"]["bytes"]
        uploaded = unpack(received.file, tmp_path / "unpacked")
        assert_consistent(uploaded)
        assert uploaded.entry("heap")["status"] == "ok"
    else:
        assert "HTTP 401" in result.summary["bundle"]["error"]
        assert token not in result.stdout + result.stderr


@pytest.mark.parametrize(
    "trusted", [pytest.param(True, id="trusted-ca"), pytest.param(False, id="untrusted")]
)
def test_upload_over_https_verifies_the_server(leaky: Leaky, tmp_path: Path, trusted: bool) -> None:
    """The toolbox sends a bundle (a core dump) only to a server whose certificate the CA
    of its plan vouches for; an untrusted one is refused at once, not retried."""
    other_ca = tmp_path / "other-ca.crt"
    loopback_certificates(
        ca_name="someone-else",
        ca_file=other_ca,
        cert_file=tmp_path / "unused.crt",
        key_file=tmp_path / "unused.key",
    )
    with upload_sink(tmp_path, token="s3cret", tls=True) as sink:
        assert sink.ca_file is not None
        ca = sink.ca_file if trusted else other_ca
        result = capture(
            f"--pid={leaky.pid}",
            f"--pprof-port={leaky.port}",
            "--artifacts=heap,smaps",
            f"--upload={sink.url}/v1/namespaces/shop/incidents/x/bundle",
            env={"MEMWARDEN_UPLOAD_TOKEN": "s3cret", "MEMWARDEN_UPLOAD_CA": ca.read_text()},
        )

    if trusted:
        assert result.returncode == 0, result.stderr
        (received,) = sink.received
        assert received.status == 201 and received.sha256 == result.summary["bundle"]["sha256"]
    else:
        assert result.returncode == 1
        assert sink.received == (), "not one byte reached the untrusted server"
        error = result.summary["bundle"]["error"]
        assert "certificate is not trusted" in error and "nothing was sent" in error
        assert "upload attempt" not in result.stderr, "no retry: a retry cannot help"


@pytest.mark.parametrize(
    ("script", "statuses", "final"),
    [
        pytest.param(("503",), (503, 201), 201, id="retried-after-503"),
        pytest.param(("lose-answer",), (201, 409), 409, id="answer-lost-then-already-stored"),
    ],
)
def test_upload_retries_and_recognises_its_own_stored_bundle(
    leaky: Leaky,
    tmp_path: Path,
    script: tuple[str, ...],
    statuses: tuple[int, ...],
    final: int,
) -> None:
    with upload_sink(tmp_path, token="s3cret", script=script) as sink:
        result = capture(
            f"--pid={leaky.pid}",
            f"--pprof-port={leaky.port}",
            "--artifacts=heap,smaps",
            f"--upload={sink.url}/v1/namespaces/shop/incidents/x/bundle",
            env={"MEMWARDEN_UPLOAD_TOKEN": "s3cret"},
        )

    assert result.returncode == 0, result.stderr
    assert tuple(r.status for r in sink.received) == statuses
    stored = sink.stored["/v1/namespaces/shop/incidents/x/bundle"]
    assert result.summary["bundle"]["sha256"] == stored.sha256
    assert result.summary["bundle"]["httpStatus"] == final


def test_upload_is_retried_until_the_token_expires(leaky: Leaky, tmp_path: Path) -> None:
    """The evidence API is down longer than a few retries (an operator restarting): the
    toolbox backs off and keeps trying while its token is valid, then delivers."""
    port = free_port()  # nothing listens there yet
    token = issue_upload_token(
        key=KEY,
        namespace="shop",
        incident="x",
        uid="uid-x",
        expires_at=dt.datetime.now(dt.UTC) + dt.timedelta(minutes=2),
    )
    log = tmp_path / "capture.log"
    with log.open("w") as stderr:
        toolbox = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "memwarden.cli",
                "capture",
                f"--pid={leaky.pid}",
                f"--pprof-port={leaky.port}",
                "--artifacts=heap,smaps",
                f"--upload=http://127.0.0.1:{port}/v1/namespaces/shop/incidents/x/bundle",
            ],
            env={**os.environ, "MEMWARDEN_UPLOAD_TOKEN": token},
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
        )

    def failed_three_times() -> bool:
        assert toolbox.poll() is None, f"the toolbox gave up: {log.read_text()}"
        return "upload attempt 3 failed" in log.read_text()

    try:
        wait_for(failed_three_times, timeout=60, what="three failed upload attempts")
        with upload_sink(tmp_path, token=token, port=port) as sink:
            out, _ = toolbox.communicate(timeout=60)
    finally:
        toolbox.kill()
        toolbox.wait(timeout=10)

    assert toolbox.returncode == 0, log.read_text()
    (stored,) = sink.stored.values()
    assert json.loads(out.strip().splitlines()[-1])["bundle"]["sha256"] == stored.sha256


def test_unreachable_pprof_fails_profiles_but_not_the_other_steps(
    leaky: Leaky, tmp_path: Path
) -> None:
    result = capture(
        f"--pid={leaky.pid}",
        "--pprof=http://127.0.0.1:1",  # nothing listens on port 1
        "--trace-seconds=1",
        "--max-core-bytes=4Gi",
        f"--out={tmp_path / 'bundle.tar.gz'}",
    )

    assert result.returncode == 1
    bundle = unpack(tmp_path / "bundle.tar.gz", tmp_path / "unpacked")
    assert_consistent(bundle)
    for name in PROFILE_ENTRIES:
        assert bundle.entry(name)["status"] == "failed"
        assert "refused" in bundle.entry(name)["error"]
    for name in ("gcore", "proc/status", "proc/smaps_rollup"):
        assert bundle.entry(name)["status"] == "ok", bundle.entry(name)
    assert set(result.summary["failed"]) == set(PROFILE_ENTRIES)


SETPRIV_WITHOUT_PTRACE = ("setpriv", "--bounding-set=-sys_ptrace", "--inh-caps=-sys_ptrace", "--")


@pytest.mark.parametrize(
    ("args", "prefix", "reason"),
    [
        pytest.param(("--no-ptrace",), (), PTRACE_SKIPPED_REASON, id="no-ptrace-flag"),
        pytest.param(
            (),
            SETPRIV_WITHOUT_PTRACE,
            f"{PTRACE_SKIPPED_REASON}: ptrace(2) returned EPERM",
            id="eperm-without-cap-sys-ptrace",
        ),
        pytest.param(
            ("--max-core-bytes=1Mi",),
            (),
            "is above --max-core-bytes 1048576",
            id="rss-above-max-core-bytes",
        ),
        pytest.param(
            ("--ephemeral-storage-allowance=64Mi",),
            (),
            "the pod's ephemeral-storage allowance is 67108864 bytes",
            id="core-above-the-pods-ephemeral-storage-allowance",
        ),
    ],
)
def test_gcore_is_skipped_with_the_reason(
    leaky: Leaky, tmp_path: Path, args: tuple[str, ...], prefix: tuple[str, ...], reason: str
) -> None:
    if prefix and (os.geteuid() != 0 or shutil.which(prefix[0]) is None):
        pytest.skip("needs root and setpriv to run without CAP_SYS_PTRACE")
    result = capture(
        f"--pid={leaky.pid}",
        f"--pprof-port={leaky.port}",
        "--artifacts=heap,gcore,smaps",
        f"--out={tmp_path / 'bundle.tar.gz'}",
        *args,
        prefix=prefix,
    )

    assert result.returncode == 0, result.stderr  # the heap profile is there
    bundle = unpack(tmp_path / "bundle.tar.gz", tmp_path / "unpacked")
    assert_consistent(bundle)
    gcore = bundle.entry("gcore")
    assert gcore["status"] == "skipped"
    assert reason in gcore["skipped"]
    assert "core" not in bundle.members
    assert reason in result.summary["skipped"]["gcore"]
