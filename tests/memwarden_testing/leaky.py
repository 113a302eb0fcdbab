"""Run the leaky workload (``examples/leaky``) as a local process for tests and benchmarks.

Builds it with ``hack/build-leaky.sh`` (cached), starts it on a kernel-chosen loopback
port, reads its address from stderr, and stops it with SIGTERM. No cluster needed.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import urllib.request
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from memwarden_testing.cluster import REPO, wait_for

MiB = 1 << 20
LEAK_FUNCTION = "main.retainSessionBuffers"


@dataclass(frozen=True)
class Leaky:
    """A running leaky process and its HTTP address."""

    url: str
    process: subprocess.Popen[bytes]
    stderr: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def port(self) -> int:
        return int(self.url.rsplit(":", 1)[1])

    def get(self, path: str, *, timeout: float = 30) -> bytes:
        with urllib.request.urlopen(self.url + path, timeout=timeout) as response:
            body: bytes = response.read()
            return body

    def metrics(self) -> dict[str, float]:
        """The /metrics samples (no labels in leaky's exposition): name -> value."""
        out = {}
        for line in self.get("/metrics").decode().splitlines():
            if line and not line.startswith("#"):
                name, value = line.split()
                out[name] = float(value)
        return out


def find_go() -> str | None:
    """The ``go`` command: on PATH, else the usual /usr/local/go/bin."""
    return shutil.which("go") or shutil.which("go", path="/usr/local/go/bin")


def build_leaky(go: str) -> Path:
    """Build (or reuse the cached build of) leaky; the binary's path."""
    built = subprocess.run(
        [str(REPO / "hack" / "build-leaky.sh")],
        env={**os.environ, "GO": go},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    if built.returncode != 0:
        raise AssertionError(f"hack/build-leaky.sh failed: {built.stderr}")
    return Path(built.stdout.strip().splitlines()[-1])


#: The user production Go services (and the e2e workload) run as: distroless's ``nonroot``.
NONROOT = (65532, 65532)


def as_user(argv: list[str], user: tuple[int, int]) -> list[str]:
    """``argv`` run as ``user`` (uid, gid) with no capability, as a container's process
    would be: the node simulator's own wrapping (needs root, setpriv, unshare; the shim
    lets the user reach the binary under root's home). The pid stays the same (exec)."""
    from nodesim.identity import Identity
    from nodesim.procs import NSENTER, SETPRIV, UNSHARE, Launch, host_wrap_argv, reach_paths

    launch = Launch(
        argv=argv,
        env={},
        cwd=Path("/"),
        log_path=Path("/dev/null"),
        identity=Identity(uid=user[0], gid=user[1], capabilities=frozenset()),
        reach=reach_paths(argv[0], env={}, files=()),
    )
    tools = {"setpriv": SETPRIV, "unshare": UNSHARE, "nsenter": NSENTER}
    missing = [name for name, path in tools.items() if path is None]
    if missing or os.geteuid() != 0:
        raise AssertionError(f"running as another user needs root and {missing}")
    return host_wrap_argv(launch)


def start_leaky(
    binary: Path,
    *,
    workdir: Path,
    env: Mapping[str, str],
    user: tuple[int, int] | None = None,
) -> subprocess.Popen[bytes]:
    """Start leaky on a kernel-chosen loopback port; its address is logged on stderr.
    With ``user``, as that (uid, gid) and no capability (see :func:`as_user`)."""
    argv = [str(binary), "-listen", "127.0.0.1:0"]
    if user is not None:
        argv = as_user(argv, user)
    stderr = (workdir / "leaky.stderr").open("wb")
    try:
        return subprocess.Popen(
            argv,
            env={"PATH": os.environ.get("PATH", ""), **env},
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    finally:
        stderr.close()


def stop(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL if it does not exit in time; the exit code of the first."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
            raise
    return process.returncode


def listening_url(stderr: Path, process: subprocess.Popen[bytes]) -> str:
    """Wait for leaky's "listening on" line; its base URL."""

    def address() -> str | None:
        if process.poll() is not None:
            raise AssertionError(f"leaky exited early: {stderr.read_text()}")
        match = re.search(r"listening on (http://\S+)", stderr.read_text())
        return match.group(1) if match else None

    return wait_for(address, timeout=15, interval=0.05, what="leaky to listen")


@contextmanager
def run_leaky(
    binary: Path,
    *,
    workdir: Path,
    env: Mapping[str, str],
    user: tuple[int, int] | None = None,
) -> Iterator[Leaky]:
    """A running leaky for the ``with`` block (as ``user`` if given); stopped after it."""
    process = start_leaky(binary, workdir=workdir, env=env, user=user)
    try:
        url = listening_url(workdir / "leaky.stderr", process)
        yield Leaky(url=url, process=process, stderr=workdir / "leaky.stderr")
    finally:
        stop(process)


def wait_leaked(leaky: Leaky, at_least: int, *, timeout: float = 30) -> dict[str, float]:
    """Poll /metrics until ``leaky_leaked_bytes`` reaches ``at_least``; the metrics then."""

    def reached() -> dict[str, float] | None:
        metrics = leaky.metrics()
        return metrics if metrics["leaky_leaked_bytes"] >= at_least else None

    return wait_for(reached, timeout=timeout, interval=0.05, what=f"{at_least} leaked bytes")
