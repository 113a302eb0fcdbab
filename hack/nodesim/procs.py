"""Process supervision for the node simulator: start, measure, OOM-kill and stop.

Test infrastructure, not a container runtime: no cgroups, no namespaces; processes share
the host with the simulator. A "container" is a process started in its own session;
its members are the processes of that session plus the descendants of its leader, so
``sh -c`` children count too. A sampler thread reads ``/proc`` every ``interval``:
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
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger("nodesim.procs")

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
SETPRIV = shutil.which("setpriv")


class StartFailed(Exception):
    """The process could not be started (the runtime's StartError); message says why."""


@dataclass(frozen=True)
class Launch:
    """What to run for one container."""

    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    log_path: Path


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
        argv = list(launch.argv)
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
        )
        (self._registry / str(popen.pid)).write_text(f"{proc.starttime} {key}\n")
        with self._lock:
            self._procs[popen.pid] = proc
        command = shlex.join(launch.argv).replace("\n", "\\n")
        log.info("started %s pid %d: %s", key, popen.pid, command[:300])
        return proc

    def signal(self, proc: Proc, sig: signal.Signals) -> None:
        """Signal every member of the container (its session and descendants)."""
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
