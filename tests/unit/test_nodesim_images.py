"""nodesim.images and nodesim.ipam: which program runs a container, at which address.

The node simulator is test infrastructure (hack/nodesim). Kubernetes' rule: ``command``
replaces the image's entrypoint, ``args`` follow it; the simulator's image mapping plays
the entrypoint, and each pod gets its own loopback address.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence

import pytest
from nodesim.images import (
    PLACEHOLDER_CODE,
    container_program,
    listen_address,
    map_path,
    match_image,
)
from nodesim.ipam import AddressPool
from nodesim.settings import ImageRule, default_images

pytestmark = pytest.mark.unit

LEAKY = "/cache/bin/leaky"
MEMWARDEN = "/repo/.venv/bin/memwarden"
RULES = default_images(leaky=LEAKY, memwarden=MEMWARDEN)
PY = "/usr/bin/python3"

PROGRAMS = [
    pytest.param("memwarden/leaky:dev", [], [], (LEAKY,), id="leaky-entrypoint"),
    pytest.param(
        "registry.local/memwarden/leaky:1.2", [], ["-rate", "8Mi"], (LEAKY, "-rate", "8Mi"),
        id="args-follow-entrypoint",
    ),
    pytest.param(
        "ghcr.io/memwarden/memwarden:0.1.0",
        ["memwarden", "capture", "--incident", "x"],
        [],
        (MEMWARDEN, "capture", "--incident", "x"),
        id="toolbox-command-by-base-name",
    ),
    pytest.param(
        "memwarden/toolbox:dev",
        ["/usr/local/bin/memwarden"],
        ["capture"],
        (MEMWARDEN, "capture"),
        id="toolbox-absolute-command-maps",
    ),
    pytest.param(
        "memwarden/toolbox:dev", [], ["capture"], (MEMWARDEN, "capture"), id="toolbox-args"
    ),
    pytest.param(
        "memwarden/leaky:dev", ["sh", "-c", "exec leaky"], [], ("sh", "-c", "exec leaky"),
        id="other-command-on-a-mapped-image",
    ),
    pytest.param(
        "busybox:1.36", ["sh", "-c", "echo hi"], ["ignored?"], ("sh", "-c", "echo hi", "ignored?"),
        id="unmapped-command-runs-on-host",
    ),
    pytest.param(
        "nginx:1.27", [], ["-g", "daemon off;"], (PY, "-c", PLACEHOLDER_CODE),
        id="unmapped-without-command-is-a-placeholder",
    ),
]  # fmt: skip


@pytest.mark.parametrize(("image", "command", "args", "argv"), PROGRAMS)
def test_container_program(
    image: str, command: Sequence[str], args: Sequence[str], argv: tuple[str, ...]
) -> None:
    program = container_program(image=image, command=command, args=args, rules=RULES, python=PY)
    assert program.argv == argv
    assert program.placeholder == (argv[0] == PY)


def test_first_matching_rule_wins() -> None:
    custom = ImageRule(pattern="memwarden/leaky:slow", entrypoint=("/opt/slow-leaky",))
    assert match_image("memwarden/leaky:slow", (custom, *RULES)) == custom
    assert match_image("memwarden/leaky:dev", (custom, *RULES)) == RULES[0]
    assert match_image("example.com/app:1", RULES) is None


LISTEN = [
    pytest.param([8080, 9090], "127.100.0.9:8080", id="first-container-port"),
    pytest.param([], "127.100.0.9:6060", id="default-pprof-port"),
]


@pytest.mark.parametrize(("ports", "expected"), LISTEN)
def test_listen_address(ports: list[int], expected: str) -> None:
    assert listen_address(rule=RULES[0], pod_ip="127.100.0.9", ports=ports) == expected


def test_no_listen_address_for_programs_that_do_not_serve() -> None:
    assert listen_address(rule=RULES[1], pod_ip="127.100.0.9", ports=[6060]) is None
    assert listen_address(rule=None, pod_ip="127.100.0.9", ports=[6060]) is None


def test_termination_message_path_is_mapped_to_the_host_file() -> None:
    argv = ["memwarden", "capture", "--termination-log", "/dev/termination-log"]
    script = ["sh", "-c", "echo ok > /dev/termination-log"]
    host = "/state/run/uid/debugger.termination-log"
    assert map_path(argv, path="/dev/termination-log", host_path=host)[-1] == host
    assert map_path(script, path="/dev/termination-log", host_path=host)[-1] == f"echo ok > {host}"


def test_addresses_are_unique_and_not_reused_at_once() -> None:
    pool = AddressPool("127.100.0.0/29")  # hosts .2 to .6
    first = [pool.allocate() for _ in range(5)]
    assert first == [f"127.100.0.{i}" for i in range(2, 7)]
    with pytest.raises(RuntimeError, match="exhausted"):
        pool.allocate()
    pool.release("127.100.0.3")
    pool.release("127.100.0.2")
    assert pool.allocate() == "127.100.0.2"  # round-robin: the oldest release comes first
    assert pool.reserve("127.100.0.3")
    assert not pool.reserve("127.100.0.3")
    assert not pool.reserve("127.200.0.3")


def test_pod_cidr_must_be_loopback() -> None:
    with pytest.raises(ValueError, match="not loopback"):
        AddressPool("10.244.0.0/24")


@pytest.mark.local
def test_pure_modules_import_no_client() -> None:
    """env, images, status and the exposition stay testable without a cluster or network."""
    code = (
        "import sys, nodesim.env, nodesim.images, nodesim.status, nodesim.ipam\n"
        "bad = [m for m in ('kubernetes', 'urllib3', 'socket', 'http') if m in sys.modules]\n"
        "print(','.join(bad))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        timeout=60,
    )
    assert result.stdout.strip() == ""
