"""``memwarden analyze`` through the real dispatcher: profiles, bundles, and bad input."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from memwarden.cli import main
from memwarden_testing.profiles import make_goroutine_profile, make_profile

pytestmark = pytest.mark.unit

HEAP = make_profile(
    [
        (["main.retainSessionBuffers", "main.(*leaker).run"], 4000),
        (["runtime.malg", "runtime.newproc1"], 500),
    ]
)
BASE = make_profile([(["main.retainSessionBuffers", "main.(*leaker).run"], 1000)])
GOROUTINES = make_goroutine_profile([(["runtime.gopark", "main.parkIdleWorker"], 41)])


def write_bundle(path: Path, members: dict[str, bytes]) -> Path:
    """A tar.gz evidence bundle with the given members, in the given order."""
    with tarfile.open(path, "w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return path


def analyze(capsys: pytest.CaptureFixture[str], *argv: str | Path) -> tuple[int, str, str]:
    code = main(["analyze", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, out, err


def test_heap_profile_as_table(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    heap = tmp_path / "heap.pb.gz"
    heap.write_bytes(HEAP)

    code, out, err = analyze(capsys, heap)

    assert (code, err) == (0, "")
    assert out.splitlines()[0] == "inuse_space (bytes), total 4.39Ki"
    assert "3.91Ki  88.89%     3.91Ki  88.89%  main.retainSessionBuffers" in out


def test_heap_profile_as_json_with_base(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "heap.pb.gz").write_bytes(HEAP)
    (tmp_path / "base.pb.gz").write_bytes(BASE)

    code, out, _ = analyze(
        capsys,
        tmp_path / "heap.pb.gz",
        "--base",
        tmp_path / "base.pb.gz",
        "--top",
        "1",
        "-o",
        "json",
    )

    data = json.loads(out)
    assert code == 0
    assert data["bundle"] is False
    assert "goroutines" not in data
    assert data["top"]["functions"] == [
        {"function": "main.retainSessionBuffers", "flat": 4000, "cum": 4000}
    ]
    assert data["diff"]["functions"][0]["flatDelta"] == 3000


def test_bundle_streams_profiles_and_counts_goroutines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write_bundle(
        tmp_path / "incident.tar.gz",
        {
            "incident-1/manifest.json": json.dumps({"artifacts": []}).encode(),
            "incident-1/core": b"\x7fELF" + bytes(4096),  # skipped, never parsed
            "incident-1/goroutine.pb.gz": GOROUTINES,
            "incident-1/heap.pb.gz": HEAP,
        },
    )

    code, out, err = analyze(capsys, bundle, "-o", "json")

    data = json.loads(out)
    assert (code, err) == (0, "")
    assert data["bundle"] is True
    assert data["goroutines"] == 41
    assert data["top"]["functions"][0]["function"] == "main.retainSessionBuffers"


def test_bundle_table_reports_goroutines(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = write_bundle(
        tmp_path / "b.tar.gz", {"heap.pb.gz": HEAP, "goroutine.pb.gz": GOROUTINES}
    )
    code, out, _ = analyze(capsys, bundle)
    assert code == 0
    assert "goroutines: 41" in out


ERROR_CASES = [
    pytest.param({}, ("missing.pb.gz",), "No such file", id="missing-file"),
    pytest.param({"heap.pb.gz": b"plain text"}, ("heap.pb.gz",), "not gzip", id="not-gzip"),
    pytest.param({"heap.pb.gz": HEAP[:20]}, ("heap.pb.gz",), "truncated", id="truncated"),
    pytest.param(
        {"heap.pb.gz": HEAP}, ("heap.pb.gz", "--sample-index", "cpu"), "'cpu'", id="bad-index"
    ),
    pytest.param({"heap.pb.gz": HEAP}, ("heap.pb.gz", "--top", "-1"), "--top", id="neg-top"),
    pytest.param(
        {"heap.pb.gz": HEAP, "base.pb.gz": GOROUTINES},
        ("heap.pb.gz", "--base", "base.pb.gz"),
        "different sample types",
        id="base-of-another-kind",
    ),
]


@pytest.mark.parametrize(("files", "argv", "message"), ERROR_CASES)
def test_errors_are_one_line_and_exit_2(
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    files: dict[str, bytes],
    argv: tuple[str, ...],
    message: str,
) -> None:
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    args = [str(tmp_path / a) if a.endswith(".pb.gz") else a for a in argv]

    code, out, err = analyze(capsys, *args)

    assert (code, out) == (2, "")
    assert err.startswith("memwarden analyze: error: ")
    assert message in err
    assert err.count("\n") == 1


BUNDLE_ERROR_CASES = [
    pytest.param({"manifest.json": b"{}"}, "no heap.pb.gz", id="no-heap"),
    pytest.param({"heap.pb.gz": b"\x1f\x8bjunk"}, "heap.pb.gz", id="corrupt-heap"),
    pytest.param({"heap.pb.gz": HEAP, "manifest.json": b"{"}, "not valid JSON", id="bad-manifest"),
    pytest.param(
        {"heap.pb.gz": HEAP, "goroutine.pb.gz": HEAP}, "not a goroutine profile", id="swapped"
    ),
]


@pytest.mark.parametrize(("members", "message"), BUNDLE_ERROR_CASES)
def test_bad_bundles_exit_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], members: dict[str, bytes], message: str
) -> None:
    bundle = write_bundle(tmp_path / "bundle.tar.gz", members)
    code, _, err = analyze(capsys, bundle)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1


def test_truncated_bundle_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bundle = write_bundle(
        tmp_path / "b.tar.gz", {"core": bytes(range(256)) * 400, "heap.pb.gz": HEAP}
    )
    bundle.write_bytes(bundle.read_bytes()[:-200])
    code, _, err = analyze(capsys, bundle)
    assert code == 2
    assert err.startswith("memwarden analyze: error: ")
