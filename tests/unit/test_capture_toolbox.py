"""The toolbox's pure-ish parts: cgroup resolution, the streamed bundle, the summary."""

from __future__ import annotations

import hashlib
import io
import json
import random
import tarfile
from pathlib import Path

import pytest

from memwarden.capture.toolbox import (
    CHUNK,
    MANIFEST_MEMBER,
    SUMMARY_LIMIT,
    DeliveryError,
    Entry,
    StepError,
    bundle_size_bound,
    iter_bundle,
    render_summary,
    resolve_cgroup_dir,
)

PID = 42


def fake_proc(
    tmp_path: Path, *, own_mountinfo: str, cgroup: str, target_mountinfo: str | None = None
) -> Path:
    proc = tmp_path / "proc"
    (proc / "self").mkdir(parents=True)
    (proc / "self" / "mountinfo").write_text(own_mountinfo)
    (proc / str(PID)).mkdir()
    (proc / str(PID) / "cgroup").write_text(cgroup)
    if target_mountinfo is not None:
        (proc / str(PID) / "mountinfo").write_text(target_mountinfo)
    return proc


def cgroup_dir(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "cgroup.procs").write_text(f"{PID}\n")
    return path


def mountinfo(root: str, point: Path | str, fstype: str = "cgroup2") -> str:
    point = str(point).replace(" ", "\\040")
    return (
        f"24 30 0:22 / /proc rw,nosuid - proc proc rw\n"
        f"35 31 0:30 {root} {point} rw,nosuid,relatime shared:9 - {fstype} {fstype} rw\n"
    )


@pytest.mark.parametrize(
    ("root", "cgroup", "expected"),
    [
        pytest.param("/", "0::/\n", ".", id="host-root-cgroup"),
        pytest.param("/", "0::/kubepods/pod1/ctr\n", "kubepods/pod1/ctr", id="host-nested-cgroup"),
        pytest.param(
            "/kubepods/pod1",
            "12:memory:/kubepods/pod1/ctr\n0::/kubepods/pod1/ctr\n",
            "ctr",
            id="bind-mounted-subtree",
        ),
    ],
)
def test_cgroup_through_our_own_mount(
    tmp_path: Path, root: str, cgroup: str, expected: str
) -> None:
    mount = tmp_path / "sys fs cgroup"  # a space: mountinfo escapes it as \040
    target = cgroup_dir(mount / expected)
    proc = fake_proc(tmp_path, own_mountinfo=mountinfo(root, mount), cgroup=cgroup)

    assert resolve_cgroup_dir(PID, proc=proc) == target.resolve()


def test_cgroup_outside_our_namespace_is_read_through_the_targets_root(tmp_path: Path) -> None:
    # An ephemeral container in its own cgroup namespace sees its target's cgroup as a
    # sibling ("/../ctr"); the target's own /sys/fs/cgroup mount shows that cgroup.
    proc = fake_proc(
        tmp_path,
        own_mountinfo=mountinfo("/", tmp_path / "ours"),
        cgroup="0::/../ctr\n",
        target_mountinfo=mountinfo("/", "/sys/fs/cgroup"),
    )
    target = cgroup_dir(proc / str(PID) / "root" / "sys" / "fs" / "cgroup")

    assert resolve_cgroup_dir(PID, proc=proc) == target


@pytest.mark.parametrize(
    ("own", "cgroup", "message"),
    [
        pytest.param(mountinfo("/", "/nowhere"), "0::/x\n", "not reachable", id="missing-dir"),
        pytest.param(
            mountinfo("/", "/sys/fs/cgroup/memory", "cgroup"),
            "4:memory:/x\n",
            "no cgroup v2",
            id="cgroup-v1-only",
        ),
    ],
)
def test_unresolvable_cgroup_says_why(tmp_path: Path, own: str, cgroup: str, message: str) -> None:
    proc = fake_proc(tmp_path, own_mountinfo=own, cgroup=cgroup)

    with pytest.raises(StepError, match=message):
        resolve_cgroup_dir(PID, proc=proc)


# --- the bundle -----------------------------------------------------------------------


def collected(tmp_path: Path, files: dict[str, bytes]) -> list[Entry]:
    entries = []
    for i, (member, data) in enumerate(files.items()):
        path = tmp_path / f"temp-{i}"
        path.write_bytes(data)
        entries.append(
            Entry(
                artifact=member.split("/")[0],
                name=member,
                file=member,
                path=path,
                size=len(data),
                sha256=hashlib.sha256(data).hexdigest(),
            )
        )
    return entries


def test_bundle_is_a_tar_gz_of_manifest_and_members(tmp_path: Path) -> None:
    files = {
        "heap.pb.gz": b"\x1f\x8b profile",
        "core": random.Random(0).randbytes(3 * CHUNK + 7),  # incompressible, odd size
        "proc/status": b"",
        "cgroup/memory.current": b"123\n",
    }
    entries = collected(tmp_path, files)
    failed = Entry(artifact="trace", name="trace", file="trace.out", error="HTTP 500")
    manifest = tmp_path / "manifest.json"
    manifest.write_text('{"artifacts": []}')

    chunks = list(iter_bundle(manifest, [*entries, failed], mtime=1_700_000_000))

    with tarfile.open(fileobj=io.BytesIO(b"".join(chunks)), mode="r:gz") as archive:
        members = archive.getmembers()
        assert [m.name for m in members] == [MANIFEST_MEMBER, *files]
        for member in members[1:]:
            extracted = archive.extractfile(member)
            assert extracted is not None
            assert extracted.read() == files[member.name]
            assert member.mtime == 1_700_000_000
    # Streamed: no chunk is anywhere near the size of the biggest member.
    assert max(len(c) for c in chunks) <= CHUNK + 64 * 1024
    # Deterministic: the same files give the same bytes, so an upload retry is identical.
    assert b"".join(iter_bundle(manifest, entries, mtime=1_700_000_000)) == b"".join(
        iter_bundle(manifest, entries, mtime=1_700_000_000)
    )


@pytest.mark.parametrize(
    "files",
    [
        pytest.param({"core": random.Random(1).randbytes(2 * CHUNK + 333)}, id="incompressible"),
        pytest.param({"core": bytes(3 * CHUNK)}, id="zeros"),
        pytest.param({"heap.pb.gz": b"", "proc/status": b"x" * 511}, id="tiny-members"),
        pytest.param({f"cgroup/memory.{'x' * 120}": b"1\n"}, id="long-name-pax-header"),
    ],
)
def test_the_declared_size_bounds_the_bundle(tmp_path: Path, files: dict[str, bytes]) -> None:
    """The store reserves what the toolbox declares and refuses a byte more: the bound must
    hold for any content, and stay close for incompressible data (cores of random heaps)."""
    entries = collected(tmp_path, files)
    manifest = tmp_path / "manifest.json"
    manifest.write_text(json.dumps({"artifacts": list(files)}))

    size = len(b"".join(iter_bundle(manifest, entries, mtime=1_700_000_000)))
    bound = bundle_size_bound(manifest, entries, mtime=1_700_000_000)

    assert size <= bound
    raw = sum(len(data) for data in files.values())
    assert bound <= raw * 1.001 + 64 * 1024, "a loose bound would waste the store's space"


def test_bundle_refuses_a_file_that_shrank(tmp_path: Path) -> None:
    (entry,) = collected(tmp_path, {"heap.pb.gz": b"x" * 1000})
    manifest = tmp_path / "manifest.json"
    manifest.write_text("{}")
    assert entry.path is not None
    entry.path.write_bytes(b"x" * 10)

    with pytest.raises(DeliveryError, match="shrank"):
        b"".join(iter_bundle(manifest, [entry], mtime=0))


# --- the termination message -------------------------------------------------------------


def summary(*, failures: int, reason_length: int) -> dict[str, object]:
    return {
        "exitCode": 1,
        "pid": 1,
        "ok": ["heap", "goroutine"],
        "failed": {f"cgroup/memory.{i}": "x" * reason_length for i in range(failures)},
        "skipped": {"gcore": "SYS_PTRACE not granted (Pod Security)"},
        "bundle": {"destination": "upload", "bytes": 1, "sha256": "ab" * 32, "error": "e" * 5000},
        "peakRssBytes": {"self": 1, "children": 2},
    }


@pytest.mark.parametrize(
    ("failures", "reason_length"),
    [
        pytest.param(2, 50, id="small"),
        pytest.param(12, 1000, id="long-reasons"),
        pytest.param(200, 10, id="many-failures"),
    ],
)
def test_summary_fits_the_termination_message(failures: int, reason_length: int) -> None:
    text = render_summary(summary(failures=failures, reason_length=reason_length))

    assert len(text.encode()) <= SUMMARY_LIMIT
    loaded = json.loads(text)
    assert loaded["exitCode"] == 1


@pytest.mark.local
def test_an_upload_ca_given_as_pem_text_is_trusted() -> None:
    import datetime as dt

    from memwarden.capture.toolbox.delivery import _connection
    from memwarden.webhook import certs

    ca = certs.make_ca(
        common_name="evidence-ca", now=dt.datetime.now(dt.UTC), valid_for=dt.timedelta(days=1)
    )
    connection = _connection(
        "https://evidence.example:8443/x", ca_file=ca.cert_pem.decode(), timeout=1
    )
    trusted = connection._context.get_ca_certs()  # type: ignore[attr-defined]
    assert [c["subject"] for c in trusted] == [((("commonName", "evidence-ca"),),)]
