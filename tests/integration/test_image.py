"""The images of ``make image``: built without a Docker daemon, readable by skopeo and
umoci (other implementations than the one that wrote them), runnable as non-root from
their unpacked root filesystem, and the ones the chart points at by default.

The build is cached by a hash of its inputs (hack/image/build.py): the first run on a
machine takes a few minutes (two mmdebstrap runs), later runs rebuild only the Python
layer when the sources change (~30 s) or nothing at all. Needs root (mmdebstrap, chroot),
as CI and the dev machine have; without it the test fails saying so, it does not skip.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from memwarden_testing.cluster import REPO

pytestmark = pytest.mark.integration

BUILD = REPO / "hack" / "image" / "build.py"
USER = "65532:65532"
CHROOT = shutil.which("chroot") or "/usr/sbin/chroot"  # sbin is not on every PATH


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[str, Path]]:
    """image name -> (reference, archive), built (or taken from the cache) once."""
    assert os.geteuid() == 0, "make image needs root (mmdebstrap, chroot): run as root"
    out = tmp_path_factory.mktemp("images")
    build = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out)],
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    assert build.returncode == 0, build.stderr[-4000:]
    listed = subprocess.run(
        [sys.executable, str(BUILD), "--out", str(out), "--print-names"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split("\n")
    found = {}
    for line in filter(None, listed):
        reference, archive = line.split()
        found[reference.rsplit("/", 1)[1].split(":")[0]] = (reference, Path(archive))
    assert set(found) == {"memwarden", "memwarden-toolbox", "leaky"}
    return found


def unpack(archive: Path, into: Path) -> Path:
    """skopeo reads the archive into an OCI layout, umoci unpacks it: the root filesystem."""
    layout = into / "layout"
    subprocess.run(
        ["skopeo", "copy", "-q", f"oci-archive:{archive}", f"oci:{layout}:image"],
        check=True,
        timeout=300,
    )
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:image", str(into / "bundle")],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return into / "bundle" / "rootfs"


@pytest.fixture(scope="module")
def rootfs(
    images: dict[str, tuple[str, Path]], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Path]:
    return {
        name: unpack(archive, tmp_path_factory.mktemp(name))
        for name, (_, archive) in images.items()
    }


def in_image(root: Path, *argv: str) -> str:
    """Run ``argv`` chrooted in ``root`` as the image's non-root user; its stdout."""
    result = subprocess.run(
        [CHROOT, f"--userspec={USER}", str(root), *argv],
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/opt/memwarden/bin:/usr/local/bin:/usr/bin:/bin", "HOME": "/nonexistent"},
        check=False,
    )
    assert result.returncode == 0, f"{argv}: {result.stderr}"
    return result.stdout


def inspect(archive: Path) -> dict[str, object]:
    out = subprocess.run(
        ["skopeo", "inspect", "--config", f"oci-archive:{archive}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    config: dict[str, object] = json.loads(out)["config"]
    return config


def test_memwarden_and_gdb_run_from_the_root_filesystems(rootfs: dict[str, Path]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name in ("memwarden", "memwarden-toolbox"):
        assert in_image(rootfs[name], "memwarden", "--version").strip() == f"memwarden {version}"
    assert in_image(rootfs["memwarden-toolbox"], "gdb", "--version").startswith("GNU gdb")
    assert "--pid" in in_image(rootfs["memwarden-toolbox"], "memwarden", "capture", "--help")
    # The operator's own dependencies import under the image's Debian Python.
    imports = (
        "import kopf, kubernetes, pydantic, rich, memwarden.kube, memwarden.commands.incidents"
    )
    in_image(rootfs["memwarden"], "/opt/memwarden/bin/python", "-c", imports)
    assert not (rootfs["memwarden"] / "usr/bin/gdb").exists(), "gdb belongs to the toolbox only"
    assert (rootfs["leaky"] / "leaky").stat().st_mode & 0o111


def test_images_are_non_root_and_labelled(images: dict[str, tuple[str, Path]]) -> None:
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    for name, (_reference, archive) in images.items():
        config = inspect(archive)
        assert config["User"] == USER, name
        labels = config["Labels"]
        assert isinstance(labels, dict)
        assert labels["org.opencontainers.image.version"] == version, name
        assert labels["org.opencontainers.image.source"].startswith("https://"), name
        assert len(labels["org.opencontainers.image.revision"]) == 40, name


def test_the_chart_points_at_the_built_images(images: dict[str, tuple[str, Path]]) -> None:
    """Defaults only: helm template with no values names what make image built."""
    build_helm = str(REPO / "hack" / "helm" / "build.sh")
    helm = subprocess.check_output(["bash", build_helm], text=True, timeout=1800).split()[-1]
    rendered = subprocess.run(
        [helm, "template", "memwarden", str(REPO / "charts" / "memwarden")],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    ).stdout
    deployment = next(
        doc for doc in yaml.safe_load_all(rendered) if doc and doc["kind"] == "Deployment"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e.get("value") for e in container["env"]}
    assert container["image"] == images["memwarden"][0]
    assert env["MEMWARDEN_CAPTURE_TOOLBOX_IMAGE"] == images["memwarden-toolbox"][0]


def test_a_second_build_reuses_the_cache_and_writes_the_same_bytes(
    images: dict[str, tuple[str, Path]], tmp_path: Path
) -> None:
    """Same layers, same bytes: the archive's assembly does not depend on when it ran."""
    subprocess.run(
        [sys.executable, str(BUILD), "--out", str(tmp_path), "--only", "memwarden"],
        capture_output=True,
        check=True,
        timeout=600,
    )
    again = tmp_path / images["memwarden"][1].name
    assert again.read_bytes() == images["memwarden"][1].read_bytes()
