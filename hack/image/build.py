#!/usr/bin/env python3
"""Build memwarden's OCI images without a Docker daemon: ``make image``.

Three images, each written as an OCI archive (``oci-archive``: what ``skopeo`` and
``kind load image-archive`` read) under ``dist/images/``:

- ``memwarden``: the operator. Debian bookworm (python3, ca-certificates) + the locked
  Python environment (``uv.lock``, no dev group) in ``/opt/memwarden``.
- ``memwarden-toolbox``: the ephemeral debug container. The same, plus gdb (gcore).
  Its Python layer is the very blob of the operator's, so the two never differ in code.
- ``leaky``: the project's Go test workload (e2e/kind), one static binary.

How: ``mmdebstrap`` (Debian's package) makes each Debian root filesystem; ``uv`` (the
project's pinned one, from ``hack/bootstrap.sh``) installs the locked environment inside it
(chroot); this script writes the layers and the OCI layout itself, deterministically:
entries sorted, owners numeric, times clamped to ``SOURCE_DATE_EPOCH`` (the commit's time),
gzip without timestamps. The same inputs give the same digests.

The slow parts are cached outside the repository, keyed by a hash of their inputs, under
``$MEMWARDEN_CACHE/images`` (default ``~/.cache/memwarden``): a Debian layer per package list
(``--refresh-debian`` rebuilds it with the mirror's current versions), the Python layer per
hash of ``uv.lock``, ``pyproject.toml`` and ``operator/``. A second run with nothing changed
takes seconds. Needs root (mmdebstrap's root mode and chroot): CI and the dev machine are.

    python3 hack/image/build.py                 # all three into dist/images/
    python3 hack/image/build.py --only memwarden --out /tmp/images
    python3 hack/image/build.py --print-names   # image references, one per line
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("MEMWARDEN_CACHE", Path.home() / ".cache" / "memwarden")) / "images"
REGISTRY = os.environ.get("MEMWARDEN_IMAGE_REGISTRY", "ghcr.io/memwarden")
SOURCE_URL = "https://github.com/memwarden/memwarden"
UV_VERSION = "0.13.8"  # the one hack/bootstrap.sh installs
SUITE = "bookworm"
MIRROR = os.environ.get("MEMWARDEN_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SECURITY_MIRROR = os.environ.get(
    "MEMWARDEN_DEBIAN_SECURITY_MIRROR", "http://deb.debian.org/debian-security"
)
#: Every file time in the layers is clamped to this (2025-01-01T00:00:00Z), and the Debian
#: and Python builds run with it as SOURCE_DATE_EPOCH: a layer then depends on its content
#: only, not on the day or the commit it was built at, so an unchanged layer keeps its
#: digest across releases. The commit's time dates the image itself (config, labels).
LAYER_EPOCH = 1735689600
#: The non-root identity every image runs as (distroless's "nonroot" numbers).
USER_ID = 65532
VENV = "opt/memwarden"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"
#: Left out of every layer: made at run time by the container runtime, or caches and logs
#: whose content depends on when the build ran.
EXCLUDED = (
    "dev/",
    "proc/",
    "sys/",
    "run/",
    "tmp/",
    "var/tmp/",
    "var/cache/",
    "var/log/",
    "var/lib/apt/lists/",
    "etc/machine-id",
    "etc/hostname",
    "etc/resolv.conf",
    "etc/ld.so.cache",
)
KEPT_EMPTY = ("dev", "proc", "sys", "run", "tmp", "var/tmp", "var/cache", "var/log")
#: Docs and translations dropped by dpkg itself; copyright files kept (licences).
DPKG_OPTIONS = (
    "path-exclude=/usr/share/doc/*",
    "path-include=/usr/share/doc/*/copyright",
    "path-exclude=/usr/share/man/*",
    "path-exclude=/usr/share/info/*",
    "path-exclude=/usr/share/locale/*",
    "path-exclude=/usr/share/lintian/*",
)


@dataclass(frozen=True)
class ImageSpec:
    """One image: its Debian packages (none: no Debian layer) and how it starts."""

    name: str
    title: str
    debian_packages: tuple[str, ...]
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    python: bool = True


PYTHON_ENV = (
    "PATH=/opt/memwarden/bin:/usr/local/bin:/usr/bin:/bin",
    "PYTHONUNBUFFERED=1",
    "PYTHONDONTWRITEBYTECODE=1",
)
SPECS = {
    spec.name: spec
    for spec in (
        ImageSpec(
            name="memwarden",
            title="memwarden operator",
            debian_packages=("python3", "ca-certificates"),
            entrypoint=("memwarden",),
            cmd=("run",),
            env=PYTHON_ENV,
        ),
        ImageSpec(
            name="memwarden-toolbox",
            title="memwarden toolbox (memwarden capture, gdb)",
            debian_packages=("python3", "ca-certificates", "gdb"),
            entrypoint=("memwarden",),
            cmd=("capture", "--help"),
            env=PYTHON_ENV,
        ),
        ImageSpec(
            name="leaky",
            title="memwarden's leaky Go test workload",
            debian_packages=(),
            entrypoint=("/leaky",),
            env=("LEAKY_LISTEN=0.0.0.0:6060",),
            python=False,
        ),
    )
}


@dataclass
class Layer:
    """A gzip layer blob in the cache, with the digest of its uncompressed tar."""

    path: Path
    diff_id: str
    comment: str
    digest: str = field(init=False)
    size: int = field(init=False)

    def __post_init__(self) -> None:
        self.digest = "sha256:" + sha256_file(self.path)
        self.size = self.path.stat().st_size


def log(message: str) -> None:
    print(f"image: {message}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def short_hash(*parts: str | bytes) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode() if isinstance(part, str) else part)
        digest.update(b"\0")
    return digest.hexdigest()[:16]


def project_version() -> str:
    return str(tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"])


def git(*args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(REPO), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


def source_date_epoch() -> int:
    """The commit's time (or ``SOURCE_DATE_EPOCH``): when the image says it was created."""
    return int(os.environ.get("SOURCE_DATE_EPOCH") or git("log", "-1", "--format=%ct"))


def python_inputs_hash() -> str:
    """What the Python layer is made of: the lock, the project file and every source."""
    files = [REPO / "pyproject.toml", REPO / "uv.lock", REPO / "README.md"]
    files += sorted(
        p for p in (REPO / "operator").rglob("*") if p.is_file() and "__pycache__" not in p.parts
    )
    parts: list[str | bytes] = [UV_VERSION, str(SPECS["memwarden"].debian_packages)]
    for path in files:
        parts += [str(path.relative_to(REPO)), path.read_bytes()]
    return short_hash(*parts)


# --- deterministic tar and gzip ------------------------------------------------------


def excluded(relative: str, is_dir: bool) -> bool:
    probe = relative + "/" if is_dir else relative
    return any(probe.startswith(prefix) and probe != prefix for prefix in EXCLUDED) or any(
        relative == prefix.rstrip("/") for prefix in EXCLUDED if not prefix.endswith("/")
    )


def walk(root: Path, top: str) -> Iterator[str]:
    """Relative paths under ``root/top`` in sorted order, directories before their content."""
    start = root / top if top else root
    if not start.exists() and not start.is_symlink():
        return
    yield top
    if start.is_dir() and not start.is_symlink():
        for child in sorted(os.listdir(start)):
            yield from walk(root, f"{top}/{child}" if top else child)


def write_layer_tar(root: Path, tops: Iterable[str], out: Path, *, epoch: int) -> str:
    """Tar ``tops`` of ``root`` reproducibly; return the sha256 of the tar (the diff_id)."""
    seen_inodes: dict[tuple[int, int], str] = {}
    with (
        out.open("wb") as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):
        for top in tops:
            for relative in walk(root, top):
                if not relative:
                    continue
                path = root / relative
                stat = path.lstat()
                is_dir = path.is_dir() and not path.is_symlink()
                if excluded(relative, is_dir):
                    continue
                info = tar.gettarinfo(str(path), arcname=relative)
                info.uid, info.gid, info.uname, info.gname = stat.st_uid, stat.st_gid, "", ""
                info.mtime = min(int(stat.st_mtime), epoch)
                info.pax_headers = {}
                key = (stat.st_dev, stat.st_ino)
                if info.isreg() and stat.st_nlink > 1:
                    if key in seen_inodes:
                        info.type, info.linkname, info.size = tarfile.LNKTYPE, seen_inodes[key], 0
                    else:
                        seen_inodes[key] = relative
                if info.isreg():
                    with path.open("rb") as content:
                        tar.addfile(info, content)
                else:
                    tar.addfile(info)
    return sha256_file(out)


def gzip_file(source: Path, target: Path) -> None:
    """gzip with no name and mtime 0 in the header: the same bytes in, the same bytes out."""
    with (
        source.open("rb") as src,
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=6) as gz,
    ):
        shutil.copyfileobj(src, gz, 1 << 20)


def cached_layer(key: str, comment: str, make_tar: Callable[[Path], str]) -> Layer:
    """The layer under ``CACHE/layers/key``; made by ``make_tar(path) -> diff_id`` if absent."""
    folder = CACHE / "layers" / key
    blob, meta = folder / "layer.tar.gz", folder / "diff_id"
    if not (blob.exists() and meta.exists()):
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=folder) as tmp:
            tar_path = Path(tmp) / "layer.tar"
            diff_id = make_tar(tar_path)
            gzip_file(tar_path, Path(tmp) / "layer.tar.gz")
            os.replace(Path(tmp) / "layer.tar.gz", blob)
        meta.write_text("sha256:" + diff_id)
    return Layer(path=blob, diff_id=meta.read_text(), comment=comment)


# --- the Debian root filesystems ---------------------------------------------------------


def debian_rootfs(packages: tuple[str, ...], *, epoch: int, refresh: bool) -> Path:
    """A bookworm root filesystem with ``packages`` (mmdebstrap), cached per package list."""
    key = short_hash("debian", SUITE, MIRROR, SECURITY_MIRROR, *sorted(packages), *DPKG_OPTIONS)
    rootfs = CACHE / "rootfs" / key
    if rootfs.exists() and not refresh:
        return rootfs
    if os.geteuid() != 0:
        sys.exit("image: building the Debian layer needs root (mmdebstrap, chroot)")
    if shutil.which("mmdebstrap") is None:
        sys.exit("image: mmdebstrap is missing (hack/bootstrap.sh installs it)")
    log(f"debian: mmdebstrap {SUITE} + {', '.join(packages)} (cached as {key})")
    partial = rootfs.with_name(f"{key}.partial-{os.getpid()}")  # concurrent builds: each its own
    shutil.rmtree(partial, ignore_errors=True)
    partial.parent.mkdir(parents=True, exist_ok=True)
    sources = [
        f"deb {MIRROR} {SUITE} main",
        f"deb {MIRROR} {SUITE}-updates main",
        f"deb {SECURITY_MIRROR} {SUITE}-security main",
    ]
    command = [
        "mmdebstrap",
        "--mode=root",
        "--variant=essential",
        "--format=directory",
        f"--include={','.join(packages)}",
        *(f"--dpkgopt={option}" for option in DPKG_OPTIONS),
        "--aptopt=Acquire::Retries 3",
        SUITE,
        str(partial),
        *sources,
    ]
    subprocess.run(command, check=True, env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)})
    add_user(partial)
    shutil.rmtree(rootfs, ignore_errors=True)
    try:
        os.replace(partial, rootfs)
    except OSError:  # another build put the same root filesystem in place first
        shutil.rmtree(partial, ignore_errors=True)
    return rootfs


def add_user(rootfs: Path) -> None:
    """The image's non-root user, written directly (useradd would stamp today's date)."""
    with (rootfs / "etc/passwd").open("a") as passwd:
        passwd.write(f"memwarden:x:{USER_ID}:{USER_ID}:memwarden:/nonexistent:/usr/sbin/nologin\n")
    with (rootfs / "etc/group").open("a") as group:
        group.write(f"memwarden:x:{USER_ID}:\n")


def package_versions(rootfs: Path) -> str:
    """``name version`` per installed Debian package: recorded beside each archive."""
    status = (rootfs / "var/lib/dpkg/status").read_text()
    rows = []
    for stanza in status.split("\n\n"):
        fields = dict(
            line.split(": ", 1) for line in stanza.splitlines() if ": " in line and line[0] != " "
        )
        if "Package" in fields and "installed" in fields.get("Status", ""):
            rows.append(f"{fields['Package']} {fields['Version']}")
    return "\n".join(sorted(rows)) + "\n"


def debian_layer(packages: tuple[str, ...], *, epoch: int, refresh: bool) -> tuple[Layer, Path]:
    rootfs = debian_rootfs(packages, epoch=epoch, refresh=refresh)
    key = short_hash("debian-layer", rootfs.name, package_versions(rootfs), str(epoch))

    def make(tar_path: Path) -> str:
        for folder in KEPT_EMPTY:
            (rootfs / folder).mkdir(exist_ok=True)
        return write_layer_tar(rootfs, sorted(os.listdir(rootfs)), tar_path, epoch=epoch)

    comment = f"debian {SUITE}: {' '.join(packages)}"
    return cached_layer(key, comment, make), rootfs


# --- the Python layer --------------------------------------------------------------------


def uv_binary() -> Path:
    cache_root = Path(os.environ.get("MEMWARDEN_CACHE", Path.home() / ".cache" / "memwarden"))
    uv = cache_root / f"uv-{UV_VERSION}" / "bin" / "uv"
    if not uv.exists():
        sys.exit(f"image: {uv} is missing: run hack/bootstrap.sh first")
    return uv


def python_layer(base: Path, *, epoch: int) -> Layer:
    """``/opt/memwarden``: the locked environment and memwarden, installed in a chroot."""
    key = short_hash("python-layer", python_inputs_hash(), base.name, str(epoch))

    def make(tar_path: Path) -> str:
        uv = uv_binary()
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": "/tmp",
            "SOURCE_DATE_EPOCH": str(epoch),
            "UV_CACHE_DIR": "/tmp/uv-cache",
            "UV_PYTHON_DOWNLOADS": "never",
            "UV_NO_PROGRESS": "1",
        }
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            work = Path(tmp) / "rootfs"
            log("python: the locked environment into a copy of the operator's root filesystem")
            subprocess.run(["cp", "-a", f"{base}/.", str(work)], check=True)
            (work / "tmp").mkdir(exist_ok=True)
            for name in ("dev/null", "dev/urandom", "dev/random"):
                target = work / name
                target.parent.mkdir(exist_ok=True)
                if not target.exists():
                    subprocess.run(
                        [
                            "mknod",
                            "-m",
                            "666",
                            str(target),
                            "c",
                            "1",
                            {"dev/null": "3", "dev/urandom": "9", "dev/random": "8"}[name],
                        ],
                        check=True,
                    )
            shutil.copy2("/etc/resolv.conf", work / "etc/resolv.conf")
            shutil.copy2(uv, work / "tmp/uv")
            # The host's CA bundle, when it names one (a TLS-inspecting proxy's CA, say):
            # uv in the chroot reaches the package index as uv on the host does.
            if os.environ.get("SSL_CERT_FILE"):
                shutil.copy2(os.environ["SSL_CERT_FILE"], work / "tmp/ca-bundle.pem")
                env["SSL_CERT_FILE"] = "/tmp/ca-bundle.pem"
            requirements = subprocess.run(
                [
                    str(uv),
                    "export",
                    "--frozen",
                    "--no-dev",
                    "--no-emit-project",
                    "--format",
                    "requirements-txt",
                ],
                cwd=REPO,
                check=True,
                capture_output=True,
                text=True,
            ).stdout
            (work / "tmp/requirements.txt").write_text(requirements)
            wheel_dir = work / "tmp/wheel"
            subprocess.run(
                [str(uv), "build", "--wheel", "--out-dir", str(wheel_dir), str(REPO)],
                check=True,
                env={**os.environ, "SOURCE_DATE_EPOCH": str(epoch)},
                stdout=subprocess.DEVNULL,
            )
            wheel = next(wheel_dir.glob("memwarden-*.whl")).name

            def chroot(*argv: str) -> None:
                subprocess.run([CHROOT, str(work), *argv], check=True, env=env)

            chroot("/tmp/uv", "venv", "--quiet", "--python", "/usr/bin/python3", f"/{VENV}")
            install = ["/tmp/uv", "pip", "install", "--quiet", "--python", f"/{VENV}/bin/python"]
            chroot(*install, "--require-hashes", "--no-deps", "-r", "/tmp/requirements.txt")
            chroot(*install, "--no-deps", "--compile-bytecode", f"/tmp/wheel/{wheel}")
            drop_install_timestamps(work / VENV)
            # Bytecode for the dependencies too (checked-hash .pyc: SOURCE_DATE_EPOCH is set).
            chroot(f"/{VENV}/bin/python", "-m", "compileall", "-q", "-j1", f"/{VENV}/lib")
            bin_dir = work / "usr/local/bin"
            bin_dir.mkdir(parents=True, exist_ok=True)
            (bin_dir / "memwarden").symlink_to(f"/{VENV}/bin/memwarden")
            return write_layer_tar(work, [VENV, "usr/local/bin/memwarden"], tar_path, epoch=epoch)

    return cached_layer(key, "the locked Python environment and memwarden", make)


def drop_install_timestamps(venv: Path) -> None:
    """uv records when it saw a local wheel (``uv_cache.json``, listed in RECORD): drop it,
    or the layer would differ at every build."""
    for stamp in venv.glob("lib/python3*/site-packages/*.dist-info/uv_cache.json"):
        record = stamp.with_name("RECORD")
        kept = [line for line in record.read_text().splitlines() if "/uv_cache.json," not in line]
        record.write_text("\n".join(kept) + "\n")
        stamp.unlink()


# --- the leaky layer ---------------------------------------------------------------------


def leaky_layer(*, epoch: int) -> Layer:
    binary = Path(
        subprocess.run(
            ["bash", str(REPO / "hack/build-leaky.sh")], check=True, capture_output=True, text=True
        ).stdout.strip()
    )
    key = short_hash("leaky-layer", sha256_file(binary), str(epoch))

    def make(tar_path: Path) -> str:
        with tempfile.TemporaryDirectory() as tmp:
            root = Path(tmp)
            shutil.copy2(binary, root / "leaky")
            (root / "leaky").chmod(0o755)
            os.chown(root / "leaky", 0, 0)
            (root / "tmp").mkdir(mode=0o1777)
            (root / "tmp").chmod(0o1777)
            return write_layer_tar(root, ["leaky", "tmp"], tar_path, epoch=epoch)

    return cached_layer(key, "leaky (examples/leaky, static, with symbols)", make)


# --- the OCI layout and archive ----------------------------------------------------------


def labels(spec: ImageSpec, *, version: str, epoch: int) -> dict[str, str]:
    revision = git("rev-parse", "HEAD")
    return {
        "org.opencontainers.image.title": spec.title,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.revision": revision,
        "org.opencontainers.image.source": SOURCE_URL,
        "org.opencontainers.image.url": SOURCE_URL,
        "org.opencontainers.image.licenses": "Apache-2.0",
        "org.opencontainers.image.created": iso(epoch),
        "org.opencontainers.image.vendor": "memwarden",
    }


def iso(epoch: int) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def canonical(document: object) -> bytes:
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def write_archive(
    spec: ImageSpec, layers: list[Layer], *, reference: str, version: str, epoch: int, out: Path
) -> str:
    """Write the OCI archive of one image; return its manifest digest."""
    image_labels = labels(spec, version=version, epoch=epoch)
    config = {
        "architecture": "amd64",
        "os": "linux",
        "created": iso(epoch),
        "config": {
            "User": f"{USER_ID}:{USER_ID}",
            "Env": list(spec.env),
            "Entrypoint": list(spec.entrypoint),
            "Cmd": list(spec.cmd),
            "WorkingDir": "/",
            "Labels": image_labels,
        },
        "rootfs": {"type": "layers", "diff_ids": [layer.diff_id for layer in layers]},
        "history": [
            {"created": iso(epoch), "created_by": "hack/image/build.py", "comment": layer.comment}
            for layer in layers
        ],
    }
    config_bytes = canonical(config)
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest(),
            "size": len(config_bytes),
        },
        "layers": [
            {
                "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                "digest": layer.digest,
                "size": layer.size,
            }
            for layer in layers
        ],
        "annotations": image_labels,
    }
    manifest_bytes = canonical(manifest)
    manifest_digest = "sha256:" + hashlib.sha256(manifest_bytes).hexdigest()
    tag = reference.rsplit(":", 1)[1]
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [
            {
                "mediaType": "application/vnd.oci.image.manifest.v1+json",
                "digest": manifest_digest,
                "size": len(manifest_bytes),
                "platform": {"architecture": "amd64", "os": "linux"},
                # ref.name for skopeo (oci-archive:FILE:TAG), the full name for containerd
                # (kind load image-archive, ctr import).
                "annotations": {
                    "org.opencontainers.image.ref.name": tag,
                    "io.containerd.image.name": reference,
                },
            }
        ],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    with (
        partial.open("wb") as raw,
        tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar,
    ):

        def add_bytes(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode = len(data), epoch, 0o644
            tar.addfile(info, io.BytesIO(data))

        def add_dir(name: str) -> None:
            info = tarfile.TarInfo(name)
            info.type, info.mtime, info.mode = tarfile.DIRTYPE, epoch, 0o755
            tar.addfile(info)

        add_dir("blobs")
        add_dir("blobs/sha256")
        blobs = {manifest_digest: manifest_bytes, manifest["config"]["digest"]: config_bytes}
        files = {layer.digest: layer.path for layer in layers}
        for digest in sorted({*blobs, *files}):
            name = "blobs/sha256/" + digest.removeprefix("sha256:")
            if digest in blobs:
                add_bytes(name, blobs[digest])
            else:
                info = tarfile.TarInfo(name)
                info.size, info.mtime, info.mode = files[digest].stat().st_size, epoch, 0o644
                with files[digest].open("rb") as content:
                    tar.addfile(info, content)
        add_bytes("index.json", canonical(index))
        add_bytes("oci-layout", canonical({"imageLayoutVersion": "1.0.0"}))
    os.replace(partial, out)
    return manifest_digest


def reference_of(name: str, version: str) -> str:
    return f"{REGISTRY}/{name}:{version}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=REPO / "dist" / "images")
    parser.add_argument("--only", action="append", choices=sorted(SPECS), help="repeatable")
    parser.add_argument(
        "--refresh-debian",
        action="store_true",
        help="rebuild the Debian layers with the mirror's current packages",
    )
    parser.add_argument(
        "--print-names",
        action="store_true",
        help="print the image references and archive paths, build nothing",
    )
    args = parser.parse_args(argv)
    version = project_version()
    names = args.only or list(SPECS)
    if args.print_names:
        for name in names:
            print(reference_of(name, version), args.out / f"{name}-{version}.oci.tar")
        return 0
    epoch = source_date_epoch()
    CACHE.mkdir(parents=True, exist_ok=True)
    python: Layer | None = None
    for name in names:
        spec = SPECS[name]
        layers: list[Layer] = []
        if spec.debian_packages:
            debian, rootfs = debian_layer(
                spec.debian_packages, epoch=LAYER_EPOCH, refresh=args.refresh_debian
            )
            layers.append(debian)
            (args.out).mkdir(parents=True, exist_ok=True)
            (args.out / f"{name}-{version}.packages.txt").write_text(package_versions(rootfs))
        if spec.python:
            if python is None:  # built on the operator's Debian layer, shared by every image
                operator_base = SPECS["memwarden"].debian_packages
                python = python_layer(
                    debian_rootfs(operator_base, epoch=LAYER_EPOCH, refresh=False),
                    epoch=LAYER_EPOCH,
                )
            layers.append(python)
        if name == "leaky":
            layers.append(leaky_layer(epoch=LAYER_EPOCH))
        reference = reference_of(name, version)
        archive = args.out / f"{name}-{version}.oci.tar"
        digest = write_archive(
            spec, layers, reference=reference, version=version, epoch=epoch, out=archive
        )
        log(f"{reference} {digest} -> {archive}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
