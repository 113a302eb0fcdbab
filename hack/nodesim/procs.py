"""Process supervision for the node simulator: start, measure, OOM-kill and stop.

Test infrastructure, not a container runtime: no cgroups, no images. A "container" is a
process started in its own session, with the container's uid, gid and capabilities
(``identity``, through ``setpriv``), in a PID namespace of its own or one it joins (an
ephemeral container joins its target's, as ``targetContainerName`` does), and a mount
namespace in which ``shim.py`` lets it reach the host files it runs (``wrap_argv``).
Its members are the processes of that session plus the descendants of its leader, so
``sh -c`` children count too; the leader is the namespace tool (``unshare``/``nsenter``)
and the container's own first process (PID 1 in its namespace) is its child. A sampler
thread reads ``/proc`` every ``interval``:
RSS (``VmRSS`` of every member), page faults (``/proc/PID/stat``), and kills the whole
container with SIGKILL when its RSS exceeds its memory limit, as the kernel's cgroup OOM
killer would (``memory.oom.group``).

Every started process is recorded in a registry directory (pid and start time), and is
started under ``setpriv --pdeathsig KILL`` when available, so nothing outlives a
simulator that crashed: ``reap_registry`` kills whatever a previous run left behind.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from nodesim.identity import Identity, setpriv_argv

log = logging.getLogger("nodesim.procs")

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SETPRIV = shutil.which("setpriv")
UNSHARE = shutil.which("unshare")
NSENTER = shutil.which("nsenter")
SHIM = Path(__file__).with_name("shim.py")

#: ``Launch.pid_namespace``: a PID namespace of the container's own.
NEW_PID_NAMESPACE = "new"


class StartFailed(Exception):
    """The process could not be started (the runtime's StartError); message says why."""


@dataclass(frozen=True)
class Launch:
    """What to run for one container."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    log_path: Path
    #: Run as this (uid, gid, capabilities); None: as the simulator (no isolation).
    identity: Identity | None = None
    #: ``NEW_PID_NAMESPACE``, the host pid of a process whose PID namespace to join, or
    #: None for the host's (``hostPID``).
    pid_namespace: str | int | None = None
    #: Host paths the container must reach (its program, its files): see ``shim.py``.
    reach: tuple[str, ...] = ()


def host_wrap_argv(launch: Launch) -> list[str]:
    """:func:`wrap_argv` with this host's util-linux tools, interpreter and shim."""
    return wrap_argv(
        launch,
        setpriv=str(SETPRIV),
        unshare=str(UNSHARE),
        nsenter=str(NSENTER),
        python=sys.executable,
        shim=str(SHIM),
    )


def wrap_argv(
    launch: Launch,
    *,
    setpriv: str,
    unshare: str,
    nsenter: str,
    python: str,
    shim: str,
) -> list[str]:
    """The command line that starts ``launch.argv`` as its container. Pure.

    ``unshare --pid --fork --mount-proc`` (own PID namespace: the program is its PID 1) or
    ``nsenter --target PID --pid`` + ``unshare --mount-proc`` (joined: ``/proc`` shows the
    joined namespace), then the shim (file view), then ``setpriv`` (identity), then the
    program. Without an identity, the program as it is.
    """
    argv = list(launch.argv)
    if launch.identity is None:
        return argv
    identity = launch.identity
    inner = [python, "-I", "-S", shim, "--user", f"{identity.uid}:{identity.gid}"]
    inner += [*(a for p in launch.reach for a in ("--reach", p)), "--"]
    inner += setpriv_argv(setpriv, launch.identity) + argv
    namespace = launch.pid_namespace
    if namespace == NEW_PID_NAMESPACE:
        # --kill-child: the container dies with its leader, as with the runtime's shim.
        return [unshare, "--pid", "--fork", "--mount-proc", "--kill-child", "--", *inner]
    if isinstance(namespace, int):
        return [
            nsenter,
            f"--target={namespace}",
            "--pid",
            "--",
            unshare,
            "--mount-proc",
            "--",
            *inner,
        ]
    return [unshare, "--mount", "--", *inner]


def reach_paths(argv0: str, *, env: Mapping[str, str], files: Iterable[Path]) -> tuple[str, ...]:
    """What a container must reach to run ``argv0``: the program (symlinks resolved), its
    script interpreter, Python's prefixes (the toolbox is a Python program), PYTHONPATH,
    and ``files`` (its working directory, its termination message)."""
    program = argv0 if os.sep in argv0 else shutil.which(argv0, path=env.get("PATH")) or argv0
    paths = [program, os.path.realpath(program)]
    with contextlib.suppress(OSError):
        with open(program, "rb") as handle:
            head = handle.read(256)
        if head.startswith(b"#!"):
            interpreter = head[2:].split(b"\n", 1)[0].split()[0].decode()
            paths += [interpreter, os.path.realpath(interpreter)]
    paths += [sys.prefix, sys.base_prefix, *filter(None, env.get("PYTHONPATH", "").split(":"))]
    paths += [str(f) for f in files]
    seen: list[str] = []
    for path in paths:
        if path.startswith(os.sep) and path not in seen:
            seen.append(path)
    return tuple(seen)


@dataclass(frozen=True)
class Usage:
    """The container's memory and faults at one sample (members summed)."""

    rss_bytes: int = 0
    pgfault: int = 0
    pgmajfault: int = 0
    pids: tuple[int, ...] = ()
    sampled_at: float = 0.0


@dataclass(frozen=True)
class _ProcStat:
    ppid: int
    sid: int
    minflt: int
    majflt: int
    starttime: int
    zombie: bool


def _read_stat(pid: int) -> _ProcStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except OSError:
        return None
    # The command name may contain spaces and parentheses: split after the last ')'.
    fields = raw[raw.rfind(b")") + 2 :].split()
    try:
        return _ProcStat(
            ppid=int(fields[1]),
            sid=int(fields[3]),
            minflt=int(fields[7]),
            majflt=int(fields[9]),
            starttime=int(fields[19]),
            zombie=fields[0] in (b"Z", b"X"),
        )
    except (IndexError, ValueError):
        return None


def _read_rss(pid: int) -> int:
    """``VmRSS`` of ``/proc/PID/status`` in bytes (0 for kernel threads and the dead)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as status:
            for line in status:
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return 0
    return 0


def _scan() -> dict[int, _ProcStat]:
    table: dict[int, _ProcStat] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _read_stat(int(entry.name))
            if stat is not None:
                table[int(entry.name)] = stat
    return table


def _members(root: int, table: Mapping[int, _ProcStat]) -> set[int]:
    """The root, its descendants and every process of its session (live ones)."""
    children: dict[int, list[int]] = {}
    members: set[int] = set()
    for pid, stat in table.items():
        children.setdefault(stat.ppid, []).append(pid)
        if stat.sid == root and not stat.zombie:
            members.add(pid)
    stack = [root]
    while stack:
        pid = stack.pop()
        entry = table.get(pid)
        if entry is None or entry.zombie:
            continue
        members.add(pid)
        stack.extend(children.get(pid, ()))
    return members


def _signal_all(pids: Iterable[int], pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


@dataclass
class Proc:
    """One running container process (the leader of its own session)."""

    key: str
    popen: subprocess.Popen[bytes]
    starttime: int
    limit_bytes: int | None = None
    oom_killed: bool = False
    #: The supervisor sent SIGKILL: util-linux 2.38's ``unshare`` and ``nsenter`` exit 1,
    #: not by the signal, when their child is SIGKILLed, so the exit code is ours to tell.
    sigkilled: bool = False
    #: Started under a namespace tool (``wrap_argv``): the program is the leader's child.
    wrapped: bool = False
    #: The container's own first process (PID 1 of its namespace), once seen.
    _init_pid: int | None = None
    usage: Usage = field(default_factory=Usage)
    #: Called from the sampler thread after an OOM kill (the pod worker wakes up).
    notify: Callable[[], None] | None = None
    #: Faults of members that have exited, so the counters never go down.
    _gone_faults: tuple[int, int] = (0, 0)
    _member_faults: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def pid(self) -> int:
        return self.popen.pid

    def poll(self) -> int | None:
        return self.popen.poll()

    def init_pid(self, *, wait: float = 2.0) -> int:
        """The host pid of the container's first process: the leader's child when the
        leader is a namespace tool (the child is in the container's PID namespace from its
        fork; what it exec's later keeps that pid), else the leader itself."""
        if self._init_pid is not None:
            return self._init_pid
        if not self.wrapped:
            return self.pid
        deadline = time.monotonic() + wait
        while True:
            children = sorted(pid for pid, entry in _scan().items() if entry.ppid == self.pid)
            if children:
                self._init_pid = children[0]
                return children[0]
            if time.monotonic() > deadline or self.poll() is not None:
                return self.pid
            time.sleep(0.01)


class Supervisor:
    """Starts container processes, samples them and enforces memory limits."""

    def __init__(self, *, registry: Path, interval: float) -> None:
        self._registry = registry
        self._interval = interval
        self._lock = threading.Lock()
        self._procs: dict[int, Proc] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample_loop, name="sampler", daemon=True)

    def start_sampling(self) -> None:
        self._registry.mkdir(parents=True, exist_ok=True)
        self._thread.start()

    def stop_sampling(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    # --- lifecycle -----------------------------------------------------------------------

    def start(
        self,
        launch: Launch,
        *,
        key: str,
        limit_bytes: int | None,
        notify: Callable[[], None] | None = None,
    ) -> Proc:
        """Start a container's process; ``StartFailed`` if it cannot be executed."""
        program = launch.argv[0]
        if os.sep not in program:
            found = shutil.which(program, path=launch.env.get("PATH", os.defpath))
            if found is None:
                raise StartFailed(f'exec: "{program}": executable file not found in $PATH')
        elif not os.access(program, os.X_OK):
            raise StartFailed(f'exec: "{program}": not an executable file')
        if launch.identity is not None and None in (SETPRIV, UNSHARE, NSENTER):
            raise StartFailed("setpriv, unshare and nsenter (util-linux) are needed")
        argv = host_wrap_argv(launch)
        if SETPRIV is not None:
            # The process dies with the thread that started it (a pod worker, which always
            # outlives its processes), so a crashed simulator leaves no leaking workload.
            argv = [SETPRIV, "--pdeathsig", "KILL", "--", *argv]
        launch.cwd.mkdir(parents=True, exist_ok=True)
        launch.log_path.parent.mkdir(parents=True, exist_ok=True)
        with launch.log_path.open("ab") as log_file:
            try:
                popen = subprocess.Popen(
                    argv,
                    env=dict(launch.env),
                    cwd=launch.cwd,
                    stdin=subprocess.DEVNULL,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as exc:
                raise StartFailed(f"exec: {program!r}: {exc.strerror or exc}") from exc
        stat = _read_stat(popen.pid)
        proc = Proc(
            key=key,
            popen=popen,
            starttime=stat.starttime if stat else 0,
            limit_bytes=limit_bytes,
            notify=notify,
            wrapped=launch.identity is not None,
        )
        (self._registry / str(popen.pid)).write_text(f"{proc.starttime} {key}\n")
        with self._lock:
            self._procs[popen.pid] = proc
        command = shlex.join(launch.argv).replace("\n", "\\n")
        log.info("started %s pid %d: %s", key, popen.pid, command[:300])
        return proc

    def signal(self, proc: Proc, sig: signal.Signals) -> None:
        """Signal every member of the container (its session and descendants)."""
        if sig == signal.SIGKILL:
            proc.sigkilled = True
        _signal_all(_members(proc.pid, _scan()), proc.pid, sig)

    def release(self, proc: Proc) -> None:
        """After the leader exited: kill what is left of its session, forget it."""
        leftovers = _members(proc.pid, _scan()) - {proc.pid}
        if leftovers:
            _signal_all(leftovers, proc.pid, signal.SIGKILL)
        with self._lock:
            self._procs.pop(proc.pid, None)
        with contextlib.suppress(FileNotFoundError):
            (self._registry / str(proc.pid)).unlink()

    def set_limit(self, proc: Proc, limit_bytes: int | None) -> None:
        with self._lock:
            proc.limit_bytes = limit_bytes

    def running(self) -> list[Proc]:
        with self._lock:
            return list(self._procs.values())

    # --- sampling ------------------------------------------------------------------------

    def _sample_loop(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                self.sample_once()
            except Exception:  # the sampler must survive anything /proc throws at it
                log.exception("sampling failed")

    def sample_once(self) -> None:
        procs = self.running()
        if not procs:
            return
        table = _scan()
        now = time.monotonic()
        for proc in procs:
            if proc.popen.returncode is not None:
                continue
            members = _members(proc.pid, table)
            rss = sum(_read_rss(pid) for pid in members)
            faults = {pid: (table[pid].minflt, table[pid].majflt) for pid in members}
            gone_min, gone_maj = proc._gone_faults
            for pid, (minflt, majflt) in proc._member_faults.items():
                if pid not in faults:
                    gone_min += minflt
                    gone_maj += majflt
            proc._gone_faults = (gone_min, gone_maj)
            proc._member_faults = faults
            minor = gone_min + sum(f[0] for f in faults.values())
            major = gone_maj + sum(f[1] for f in faults.values())
            proc.usage = Usage(
                rss_bytes=rss,
                pgfault=minor + major,
                pgmajfault=major,
                pids=tuple(sorted(members)),
                sampled_at=now,
            )
            limit = proc.limit_bytes
            if limit is not None and members and rss > limit and not proc.oom_killed:
                proc.oom_killed = True
                proc.sigkilled = True
                log.warning(
                    "OOM: %s rss %d > limit %d bytes: SIGKILL pids %s",
                    proc.key,
                    rss,
                    limit,
                    sorted(members),
                )
                _signal_all(members, proc.pid, signal.SIGKILL)
                if proc.notify is not None:
                    proc.notify()


def reap_registry(registry: Path, *, grace: float = 2.0) -> list[int]:
    """Kill what a previous simulator left running; returns the pids of those sessions.

    A session whose leader died (``--pdeathsig``) may still have members: Linux never
    reuses a pid that is still some process's session id, so killing by session is safe.
    A leader whose start time differs from the recorded one is a recycled pid: skipped.
    """
    if not registry.is_dir():
        return []
    table = _scan()
    sessions: dict[int, set[int]] = {}
    for entry in registry.iterdir():
        if not entry.name.isdigit():
            continue
        pid = int(entry.name)
        try:
            recorded = int(entry.read_text().split()[0])
        except (OSError, ValueError, IndexError):
            recorded = -1
        leader = table.get(pid)
        members = _members(pid, table) if leader is None or leader.starttime == recorded else set()
        if members:
            sessions[pid] = members
        else:
            entry.unlink(missing_ok=True)
    for pid, members in sessions.items():
        log.warning("killing leftovers of a previous run: session %d, pids %s", pid, members)
        _signal_all(members, pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and any(pids_alive(members) for members in sessions.values()):
        time.sleep(0.05)
    table = _scan()
    for pid in sessions:
        _signal_all(_members(pid, table), pid, signal.SIGKILL)
        (registry / str(pid)).unlink(missing_ok=True)
    return sorted(sessions)


def _alive(pid: int) -> bool:
    stat = _read_stat(pid)
    return stat is not None and not stat.zombie


def pids_alive(pids: Iterable[int]) -> list[int]:
    """Which of ``pids`` still run (zombies count as gone)."""
    return [pid for pid in pids if _alive(pid)]
