"""The filesystem evidence store: atomic, private, capped, and safe against odd names."""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest

from memwarden.evidence.adapters.store import (
    BUNDLE_FILE,
    META_FILE,
    AlreadyStored,
    EvidenceStore,
    InvalidName,
    NotStored,
    TooLarge,
    apply_retention,
)
from memwarden_testing.evidence import T0, make_bundle

MAX = 64 * 1024


def _store(
    store: EvidenceStore, namespace: str, incident: str, data: bytes, *, at: dt.datetime = T0
) -> None:
    with store.open_upload(namespace, incident, uid=f"uid-{incident}", max_bytes=MAX) as writer:
        for start in range(0, len(data), 1000):
            writer.write(data[start : start + 1000])
        writer.commit(now=at)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _files(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.fixture
def store(tmp_path: Path) -> EvidenceStore:
    return EvidenceStore(tmp_path / "evidence")


def test_a_bundle_is_stored_with_its_meta(store: EvidenceStore) -> None:
    data = make_bundle(padding=5000)
    _store(store, "shop", "checkout-1", data)

    meta = store.meta("shop", "checkout-1")
    assert (meta.uid, meta.bytes, meta.stored_at) == ("uid-checkout-1", len(data), T0)
    assert meta.sha256 == hashlib.sha256(data).hexdigest()
    path = store.bundle_path("shop", "checkout-1")
    assert path == store.root / "shop" / "checkout-1" / BUNDLE_FILE
    assert path.read_bytes() == data
    on_disk = json.loads((path.parent / META_FILE).read_text())
    assert on_disk == {
        "uid": "uid-checkout-1",
        "bytes": len(data),
        "sha256": meta.sha256,
        "stored_at": T0.isoformat(),
    }
    assert _files(store.root) == [
        "shop",
        "shop/checkout-1",
        f"shop/checkout-1/{BUNDLE_FILE}",
        f"shop/checkout-1/{META_FILE}",
    ], "no temporary file left"


def test_directories_are_0700_and_files_0600(tmp_path: Path) -> None:
    old_umask = os.umask(0o022)  # a permissive umask must not leak into the store
    try:
        store = EvidenceStore(tmp_path / "deep" / "evidence")
        _store(store, "shop", "checkout-1", make_bundle())
    finally:
        os.umask(old_umask)
    incident = store.root / "shop" / "checkout-1"
    for directory in (store.root, store.root / "shop", incident):
        assert _mode(directory) == 0o700, directory
    for name in (BUNDLE_FILE, META_FILE):
        assert _mode(incident / name) == 0o600, name


def test_an_existing_namespace_directory_is_tightened(store: EvidenceStore) -> None:
    (store.root / "shop").mkdir(mode=0o755)
    (store.root / "shop").chmod(0o755)
    _store(store, "shop", "checkout-1", make_bundle())
    assert _mode(store.root / "shop") == 0o700


def test_a_partial_upload_is_invisible(store: EvidenceStore) -> None:
    writer = store.open_upload("shop", "checkout-1", uid="u", max_bytes=MAX)
    writer.write(b"\x1f\x8b half a bundle")
    assert not store.exists("shop", "checkout-1")
    assert store.list("shop") == []
    with pytest.raises(NotStored):
        store.bundle_path("shop", "checkout-1")
    writer.abort()
    assert _files(store.root) == []


def _stream_100k(store: EvidenceStore) -> None:
    with store.open_upload("shop", "big", uid="u", max_bytes=MAX) as writer:
        for _ in range(100):
            writer.write(b"x" * 1000)
        writer.commit(now=T0)


def test_the_size_cap_refuses_while_streaming_and_leaves_nothing(store: EvidenceStore) -> None:
    with pytest.raises(TooLarge, match=str(MAX)):
        _stream_100k(store)
    assert _files(store.root) == []


def test_exactly_the_cap_is_accepted(store: EvidenceStore) -> None:
    _store(store, "shop", "exact", b"x" * MAX)
    assert store.meta("shop", "exact").bytes == MAX


def _upload_interrupted(store: EvidenceStore) -> None:
    with store.open_upload("shop", "checkout-1", uid="u", max_bytes=MAX) as writer:
        writer.write(b"some")
        raise ConnectionResetError("client went away")


def test_an_exception_mid_upload_leaves_nothing(store: EvidenceStore) -> None:
    with pytest.raises(ConnectionResetError):
        _upload_interrupted(store)
    assert _files(store.root) == []


def test_an_abort_keeps_other_incidents(store: EvidenceStore) -> None:
    _store(store, "shop", "kept", make_bundle())
    with store.open_upload("shop", "dropped", uid="u", max_bytes=MAX):
        pass  # never committed
    assert [e.incident for e in store.list("shop")] == ["kept"]
    assert not (store.root / "shop" / "dropped").exists()


def test_uploads_are_write_once(store: EvidenceStore) -> None:
    _store(store, "shop", "checkout-1", b"first")
    with pytest.raises(AlreadyStored):
        store.open_upload("shop", "checkout-1", uid="uid-checkout-1", max_bytes=MAX)
    assert store.bundle_path("shop", "checkout-1").read_bytes() == b"first"


def test_an_earlier_incidents_bundle_is_replaced_by_the_new_ones(store: EvidenceStore) -> None:
    """Deleted and created again under its name, an incident has a new UID: the stale
    bundle (its deletion missed, say the operator was down) is not its evidence."""
    _store(store, "shop", "checkout-1", b"first")
    assert store.holds("shop", "checkout-1", uid="uid-checkout-1")
    assert not store.holds("shop", "checkout-1", uid="uid-again")

    with store.open_upload("shop", "checkout-1", uid="uid-again", max_bytes=MAX) as writer:
        writer.write(b"again")
        writer.commit(now=T0)

    assert store.holds("shop", "checkout-1", uid="uid-again")
    assert store.bundle_path("shop", "checkout-1").read_bytes() == b"again"


def test_of_two_concurrent_uploads_the_first_commit_wins(store: EvidenceStore) -> None:
    first = store.open_upload("shop", "checkout-1", uid="u", max_bytes=MAX)
    second = store.open_upload("shop", "checkout-1", uid="u", max_bytes=MAX)
    first.write(b"first")
    second.write(b"second")
    first.commit(now=T0)
    with pytest.raises(AlreadyStored):
        second.commit(now=T0)
    assert store.bundle_path("shop", "checkout-1").read_bytes() == b"first"
    assert _files(store.root / "shop" / "checkout-1") == [BUNDLE_FILE, META_FILE]


def test_list_and_entries(store: EvidenceStore) -> None:
    _store(store, "shop", "b", b"bb")
    _store(store, "shop", "a", b"a")
    _store(store, "billing", "c", b"ccc")
    (store.root / "shop" / "stray-file").write_text("not an incident")
    (store.root / "NOT_A_NAMESPACE").mkdir()

    assert [(e.incident, e.bytes) for e in store.list("shop")] == [("a", 1), ("b", 2)]
    assert store.list("empty") == []
    assert [(e.namespace, e.incident) for e in store.entries()] == [
        ("billing", "c"),
        ("shop", "a"),
        ("shop", "b"),
    ]


def test_a_corrupt_meta_is_skipped_in_listings(store: EvidenceStore) -> None:
    _store(store, "shop", "good", b"g")
    _store(store, "shop", "bad", b"b")
    (store.root / "shop" / "bad" / META_FILE).write_text("{not json")
    assert [e.incident for e in store.list("shop")] == ["good"]


def test_delete(store: EvidenceStore) -> None:
    _store(store, "shop", "checkout-1", b"x")
    _store(store, "shop", "checkout-2", b"y")
    assert store.delete("shop", "checkout-1") is True
    assert store.delete("shop", "checkout-1") is False
    assert not store.exists("shop", "checkout-1")
    assert [e.incident for e in store.list("shop")] == ["checkout-2"]
    store.delete("shop", "checkout-2")
    assert _files(store.root) == [], "the empty namespace directory goes too"


def test_after_delete_a_new_upload_is_accepted(store: EvidenceStore) -> None:
    _store(store, "shop", "checkout-1", b"old")
    store.delete("shop", "checkout-1")
    _store(store, "shop", "checkout-1", b"new")
    assert store.bundle_path("shop", "checkout-1").read_bytes() == b"new"


def test_apply_retention_deletes_the_plan(store: EvidenceStore) -> None:
    _store(store, "shop", "old", b"o" * 10, at=T0 - dt.timedelta(days=10))
    _store(store, "shop", "mid", b"m" * 600, at=T0 - dt.timedelta(hours=2))
    _store(store, "shop", "new", b"n" * 600, at=T0 - dt.timedelta(hours=1))
    deleted = apply_retention(store, now=T0, max_age=dt.timedelta(days=7), namespace_max_bytes=1000)
    assert [e.incident for e in deleted] == ["old", "mid"]
    assert [e.incident for e in store.list("shop")] == ["new"]


def test_stale_partial_uploads_are_swept(store: EvidenceStore) -> None:
    stale = store.open_upload("shop", "crashed", uid="u", max_bytes=MAX)
    stale.write(b"partial")
    fresh = store.open_upload("shop", "uploading", uid="u", max_bytes=MAX)
    fresh.write(b"partial")
    _store(store, "shop", "done", b"d")
    orphan = store.root / "shop" / "orphan"
    orphan.mkdir()
    (orphan / BUNDLE_FILE).write_bytes(b"bundle whose meta never landed")
    # mtimes are the filesystem's, so this test uses the real clock.
    now = dt.datetime.now(dt.UTC)
    old = (now - dt.timedelta(hours=3)).timestamp()
    for path in [*(store.root / "shop" / "crashed").iterdir(), orphan / BUNDLE_FILE]:
        os.utime(path, (old, old))

    removed = store.sweep_partial(now=now, older_than=dt.timedelta(hours=1))

    assert {p.parent.name for p in removed} == {"crashed", "orphan"}
    assert sorted(p.name for p in (store.root / "shop").iterdir()) == ["done", "uploading"]
    fresh.abort()
    stale.abort()


NAMES = [
    pytest.param("..", "x", id="namespace-dotdot"),
    pytest.param(".", "x", id="namespace-dot"),
    pytest.param("", "x", id="namespace-empty"),
    pytest.param("a/b", "x", id="namespace-slash"),
    pytest.param("Shop", "x", id="namespace-uppercase"),
    pytest.param("shop.prod", "x", id="namespace-with-dot"),
    pytest.param("-shop", "x", id="namespace-leading-dash"),
    pytest.param("s" * 64, "x", id="namespace-too-long"),
    pytest.param("shop", "..", id="incident-dotdot"),
    pytest.param("shop", "../../etc", id="incident-traversal"),
    pytest.param("shop", "/etc/passwd", id="incident-absolute"),
    pytest.param("shop", "a..b", id="incident-empty-label"),
    pytest.param("shop", ".hidden", id="incident-leading-dot"),
    pytest.param("shop", "a\x00b", id="incident-nul"),
    pytest.param("shop", "a\\b", id="incident-backslash"),
    pytest.param("shop", "x" * 254, id="incident-too-long"),
    pytest.param("shop", "ünicode", id="incident-non-ascii"),
]

OPERATIONS: list[object] = [
    pytest.param(lambda s, ns, n: s.open_upload(ns, n, uid="u", max_bytes=MAX), id="upload"),
    pytest.param(lambda s, ns, n: s.meta(ns, n), id="meta"),
    pytest.param(lambda s, ns, n: s.bundle_path(ns, n), id="bundle_path"),
    pytest.param(lambda s, ns, n: s.exists(ns, n), id="exists"),
    pytest.param(lambda s, ns, n: s.delete(ns, n), id="delete"),
]


@pytest.mark.parametrize(("namespace", "incident"), NAMES)
@pytest.mark.parametrize("operation", OPERATIONS)
def test_invalid_names_are_refused(
    store: EvidenceStore,
    namespace: str,
    incident: str,
    operation: Callable[[EvidenceStore, str, str], object],
) -> None:
    with pytest.raises(InvalidName):
        operation(store, namespace, incident)
    assert _files(store.root) == []


@pytest.mark.parametrize(("namespace", "_"), [p for p in NAMES if p.values[0] != "shop"])
def test_list_refuses_invalid_namespaces(store: EvidenceStore, namespace: str, _: str) -> None:
    with pytest.raises(InvalidName):
        store.list(namespace)


@pytest.mark.parametrize(
    "incident",
    [
        pytest.param("checkout-7f9c-20261125-1812", id="generated-name"),
        pytest.param("a.b.c", id="subdomain"),
        pytest.param(".".join(["x" * 63] * 3 + ["y" * 61]), id="max-length"),
        pytest.param("0", id="one-digit"),
    ],
)
def test_valid_kubernetes_names_are_accepted(store: EvidenceStore, incident: str) -> None:
    _store(store, "shop", incident, b"ok")
    assert store.meta("shop", incident).bytes == 2


def test_an_upload_survives_retention_removing_its_emptied_directories(
    store: EvidenceStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Retention removes the directories it empties; a new upload into the same namespace
    at that moment finds them gone between its ``mkdir`` and its file: it makes them again."""
    import memwarden.evidence.adapters.store as module

    real_mkstemp = module.tempfile.mkstemp
    removed: list[Path] = []

    def racing_mkstemp(*, dir: Path, **kwargs: object) -> tuple[int, str]:
        if not removed:  # as retention's _rmdir_if_empty would, right before the file
            Path(dir).rmdir()
            Path(dir).parent.rmdir()
            removed.append(Path(dir))
        return real_mkstemp(dir=dir, **kwargs)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(module.tempfile, "mkstemp", racing_mkstemp)
    data = make_bundle()
    with store.open_upload("shop", "oom-1", uid="u-1", max_bytes=len(data)) as writer:
        writer.write(data)
        writer.commit(now=T0)
    assert removed == [store.incident_dir("shop", "oom-1")]
    assert store.holds("shop", "oom-1", uid="u-1")
