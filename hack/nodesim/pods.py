"""The pod runner: runs the pods bound to the simulated node as local processes.

Test infrastructure standing in for the kubelet's pod workers. ``PodManager`` lists and
watches pods with ``fieldSelector=spec.nodeName=<node>`` and gives each pod a
``PodWorker`` thread that owns it: a loopback pod IP, init containers in order, regular
containers with restarts per ``restartPolicy`` (with back-off), ephemeral containers
(once, never restarted), status writes (PUT of ``pods/status``: a conflict refetches and
recomputes, other failures retry with back-off), and deletion (SIGTERM, grace, SIGKILL,
then delete with ``gracePeriodSeconds=0`` as the kubelet does).

Decisions are pure and live elsewhere: env in ``env``, argv in ``images``, status and
restart rules in ``status``, in-place resize in ``resize``. Memory limits are enforced by
``procs.Supervisor``. Containers run with the resources the node allocated them
(``allocation.AllocationBook``), not straight from the spec: a resize takes effect once
allocated, live or by a restart as each container's ``resizePolicy`` says.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import enum
import logging
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from memwarden.quantity import QuantityError, parse_bytes, parse_millicores
from nodesim import env as envres
from nodesim import resize
from nodesim.allocation import Allocation, AllocationBook
from nodesim.identity import ROOT, Identity, effective_identity
from nodesim.images import PLACEHOLDER_CODE, container_program, listen_address, map_path
from nodesim.ipam import AddressPool
from nodesim.kubeapi import ApiError, Conflict, Kube, NotFound, namespaced_path, pod_path
from nodesim.metrics import ContainerSample, LogRange
from nodesim.procs import NEW_PID_NAMESPACE, Launch, Proc, StartFailed, Supervisor, reach_paths
from nodesim.resize import Resources
from nodesim.settings import Settings
from nodesim.status import (
    TERMINAL_PHASES,
    ContainerState,
    ContainerView,
    PodView,
    ResizeCondition,
    Running,
    Terminated,
    Waiting,
    backoff_seconds,
    build_pod_status,
    exit_code_of,
    is_sidecar,
    should_restart,
    terminated_reason,
    termination_message,
)

log = logging.getLogger("nodesim.pods")

#: How much of a log the FallbackToLogsOnError policy reads.
_LOG_TAIL_BYTES = 8192
#: The pause container's user in the Kubernetes image (registry.k8s.io/pause).
_PAUSE_IDENTITY = Identity(uid=65535, gid=65535, capabilities=frozenset(), no_new_privs=True)


def _utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _parse_time(text: str | None) -> dt.datetime | None:
    if not text:
        return None
    try:
        return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def memory_limit(container: Mapping[str, Any]) -> int | None:
    limit = ((container.get("resources") or {}).get("limits") or {}).get("memory")
    if limit is None:
        return None
    try:
        return parse_bytes(limit)
    except QuantityError:
        return None


def _newer(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether object ``a`` is at least as new as ``b`` (resourceVersions as integers)."""
    rv_a = str((a.get("metadata") or {}).get("resourceVersion", ""))
    rv_b = str((b.get("metadata") or {}).get("resourceVersion", ""))
    if rv_a.isdigit() and rv_b.isdigit():
        return int(rv_a) >= int(rv_b)
    return True


@dataclass
class Runtime:
    """What every pod worker shares."""

    kube: Kube
    settings: Settings
    supervisor: Supervisor
    addresses: AddressPool
    allocations: AllocationBook
    python: str
    base_env: Mapping[str, str]
    stopping: threading.Event = field(default_factory=threading.Event)

    def log_path(self, namespace: str, pod: str, container: str) -> Path:
        return self.settings.state_dir / f"{namespace}_{pod}_{container}.log"


class Kind(enum.Enum):
    INIT = "init"
    SIDECAR = "sidecar"
    REGULAR = "regular"
    EPHEMERAL = "ephemeral"


@dataclass
class Slot:
    """One container of the pod and its current process, if any."""

    name: str
    kind: Kind
    spec: Mapping[str, Any]
    metrics_name: str
    termination_file: Path
    log_path: Path
    proc: Proc | None = None
    #: (uid, gid) its current process runs as.
    user: tuple[int, int] | None = None
    container_id: str | None = None
    state: ContainerState = field(default_factory=lambda: Waiting(reason="ContainerCreating"))
    last_state: Terminated | None = None
    restart_count: int = 0
    failures: int = 0
    next_start: float = 0.0
    attempted: bool = False
    #: Will not run again (init container succeeded, ephemeral done, no restart).
    finished: bool = False
    oom_events: int = 0
    started_wall: dt.datetime | None = None
    started_mono: float = 0.0
    #: Where each instance's output starts in the (appended) log file.
    log_starts: list[int] = field(default_factory=list)
    #: The resources its current (or last) process runs with: the allocation at its start,
    #: or a later one applied live. ``None`` before its first start.
    actuated: Mapping[str, Any] | None = None

    @property
    def succeeded(self) -> bool:
        return self.finished and isinstance(self.state, Terminated) and self.state.exit_code == 0

    def view(self, allocated: Mapping[str, Any] | None = None) -> ContainerView:
        """Its status; ``resources`` are those in effect while it runs, else those allocated
        (the kubelet's convertContainerStatusResources), ``allocatedResources`` the requests."""
        own = allocated if allocated is not None else (self.spec.get("resources") or {})
        current = own
        if isinstance(self.state, Running) and self.actuated is not None:
            current = self.actuated
        image = str(self.spec.get("image", ""))
        ephemeral = self.kind is Kind.EPHEMERAL
        return ContainerView(
            name=self.name,
            image=image,
            image_id=f"nodesim://{image}",
            state=self.state,
            last_state=self.last_state,
            restart_count=self.restart_count,
            container_id=self.container_id,
            user=self.user,
            resources=(
                None
                if ephemeral
                else {k: v for k, v in current.items() if k in ("requests", "limits") and v}
            ),
            allocated_resources=None if ephemeral else (own.get("requests") or None),
        )


class PodWorker:
    """Owns one pod bound to the node, from its first sighting until it is gone."""

    def __init__(
        self,
        *,
        pod: Mapping[str, Any],
        rt: Runtime,
        on_exit: Callable[[PodWorker], None],
    ) -> None:
        metadata = pod["metadata"]
        self.namespace = str(metadata["namespace"])
        self.name = str(metadata["name"])
        self.uid = str(metadata["uid"])
        self._rt = rt
        self._on_exit = on_exit
        self._latest: Mapping[str, Any] = pod
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._gone = False
        self._slots: dict[str, Slot] = {}
        self._run_dir = rt.settings.state_dir / "run" / self.uid
        self.pod_ip: str | None = None
        self._start_time: dt.datetime | None = None
        self._initialized = False
        self._terminal = False
        self._stopping_all = False
        self._last_written: dict[str, Any] | None = None
        self._status_failures = 0
        self._status_retry_at = 0.0
        #: The pause process holding the pod's shared PID namespace (shareProcessNamespace).
        self._pause: Proc | None = None
        #: The pod's allocation (``AllocationBook``) and the resize conditions it reports.
        self._allocation: Allocation | None = None
        self._accepted_seen = 0
        self._resize_pending: ResizeCondition | None = None
        self._resize_in_progress: ResizeCondition | None = None
        self._thread = threading.Thread(
            target=self._run, name=f"pod-{self.namespace}/{self.name}", daemon=True
        )

    # --- called from other threads ---------------------------------------------------

    def start(self) -> None:
        self._thread.start()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)

    def update(self, pod: Mapping[str, Any]) -> None:
        with self._lock:
            if _newer(pod, self._latest):
                self._latest = pod
        self._wake.set()

    def mark_gone(self) -> None:
        self._gone = True
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def samples(self) -> list[ContainerSample]:
        with self._lock:
            slots = list(self._slots.values())
        out = []
        for slot in slots:
            proc = slot.proc
            running = proc is not None and isinstance(slot.state, Running)
            usage = proc.usage if proc is not None else None
            out.append(
                ContainerSample(
                    namespace=self.namespace,
                    pod=self.name,
                    container=slot.name,
                    image=str(slot.spec.get("image", "")),
                    name=slot.metrics_name,
                    running=running and usage is not None and usage.sampled_at > 0,
                    working_set_bytes=usage.rss_bytes if usage else 0,
                    rss_bytes=usage.rss_bytes if usage else 0,
                    limit_bytes=(
                        Resources.of(slot.actuated).memory_limit
                        if slot.actuated is not None
                        else memory_limit(slot.spec) or 0
                    ),
                    pgfault=usage.pgfault if usage else 0,
                    pgmajfault=usage.pgmajfault if usage else 0,
                    oom_events=slot.oom_events,
                    start_time_seconds=slot.started_wall.timestamp() if slot.started_wall else 0,
                )
            )
        return out

    def log_range(self, container: str, *, previous: bool) -> LogRange | None:
        with self._lock:
            slot = self._slots.get(container)
            starts = list(slot.log_starts) if slot is not None else []
        if slot is None or not starts:
            return None
        if previous:
            if len(starts) < 2:
                return None
            return LogRange(path=slot.log_path, start=starts[-2], end=starts[-1])
        return LogRange(path=slot.log_path, start=starts[-1])

    def debug(self) -> dict[str, Any]:
        with self._lock:
            slots = list(self._slots.values())
        return {
            "namespace": self.namespace,
            "name": self.name,
            "uid": self.uid,
            "podIP": self.pod_ip,
            "containers": [
                {
                    "name": s.name,
                    "kind": s.kind.value,
                    "pid": s.proc.init_pid(wait=0) if s.proc else None,
                    "pids": list(s.proc.usage.pids) if s.proc else [],
                    "rssBytes": s.proc.usage.rss_bytes if s.proc else 0,
                    "state": type(s.state).__name__,
                    "restartCount": s.restart_count,
                    "oomEvents": s.oom_events,
                    "log": str(s.log_path),
                }
                for s in slots
            ],
        }

    # --- the worker thread -----------------------------------------------------------

    def _current(self) -> Mapping[str, Any]:
        with self._lock:
            return self._latest

    def _run(self) -> None:
        try:
            self._main()
        except Exception:
            log.exception("pod %s/%s: worker failed; stopping its processes", *self._key())
        finally:
            self._stopping_all = True
            self._stop_processes(grace=0)
            self._stop_pause()
            self._rt.allocations.release(self.uid)
            if self.pod_ip and self.pod_ip != self._rt.settings.host_ip:
                self._rt.addresses.release(self.pod_ip)
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._on_exit(self)

    def _key(self) -> tuple[str, str]:
        return self.namespace, self.name

    def _main(self) -> None:
        settings = self._rt.settings
        while True:
            if self._gone:
                log.info("pod %s/%s is gone: killing its processes", *self._key())
                return
            pod = self._current()
            stopping = self._rt.stopping.is_set()
            if (pod.get("metadata") or {}).get("deletionTimestamp"):
                # Even when the simulator stops: finish the deletion (a shorter grace),
                # so the pod does not hang in Terminating on a node that is going away.
                cap = settings.shutdown_grace_seconds if stopping else None
                self._terminate(pod, max_grace=cap)
                return
            if stopping:
                self._stopping_all = True
                self._stop_processes(grace=settings.shutdown_grace_seconds)
                return
            self._sync(pod)
            self._wake.wait(settings.tick_seconds)
            self._wake.clear()

    def _sync(self, pod: Mapping[str, Any]) -> None:
        if self.pod_ip is None:
            self._setup_sandbox(pod)
        self._refresh_slots(pod)
        self._reap(pod)
        if not self._terminal:
            if self._allocate(pod):
                # As the kubelet: the sync that allocates a resize reports it in progress;
                # the next one actuates it (and a later one reports it done).
                self._wake.set()
            else:
                self._actuate(pod)
            self._start_due(pod)
        self._write_status(pod)

    def _setup_sandbox(self, pod: Mapping[str, Any]) -> None:
        spec = pod.get("spec") or {}
        status = pod.get("status") or {}
        if spec.get("hostNetwork"):
            self.pod_ip = self._rt.settings.host_ip
        else:
            existing = status.get("podIP")
            if existing and self._rt.addresses.reserve(str(existing)):
                self.pod_ip = str(existing)
            else:
                self.pod_ip = self._rt.addresses.allocate()
        self._start_time = _parse_time(status.get("startTime")) or _utcnow()
        self._rt.allocations.admit(self.uid, pod, wake=self._wake.set)
        self._run_dir.mkdir(parents=True, exist_ok=True)
        if spec.get("shareProcessNamespace") and not spec.get("hostPID"):
            self._start_pause()
        log.info("pod %s/%s: sandbox ready, pod IP %s", self.namespace, self.name, self.pod_ip)

    def _start_pause(self) -> None:
        """The pod's shared PID namespace, held by a pause process (its PID 1), as the
        runtime's sandbox does; containers join it."""
        argv = (self._rt.python, "-c", PLACEHOLDER_CODE)
        env = dict(self._rt.base_env)
        launch = Launch(
            argv=argv,
            env=env,
            cwd=self._run_dir,
            log_path=self._rt.log_path(self.namespace, self.name, "POD"),
            identity=_PAUSE_IDENTITY,
            pid_namespace=NEW_PID_NAMESPACE,
            reach=reach_paths(argv[0], env=env, files=()),
        )
        self._pause = self._rt.supervisor.start(
            launch, key=f"{self.namespace}/{self.name}/POD", limit_bytes=None
        )

    def _stop_pause(self) -> None:
        pause, self._pause = self._pause, None
        if pause is None:
            return
        self._rt.supervisor.signal(pause, signal.SIGKILL)
        with contextlib.suppress(Exception):
            pause.popen.wait(timeout=10)
        self._rt.supervisor.release(pause)

    def _pid_namespace(self, pod: Mapping[str, Any], slot: Slot) -> str | int | None:
        """Where the container's processes live: the host's (``hostPID``), the pod's shared
        one, its target's (an ephemeral container with ``targetContainerName``), or its own."""
        spec = pod.get("spec") or {}
        if spec.get("hostPID"):
            return None
        if slot.kind is Kind.EPHEMERAL:
            target = self._slots.get(str(slot.spec.get("targetContainerName") or ""))
            if target is not None and target.proc is not None:
                return target.proc.init_pid()
        if self._pause is not None:
            return self._pause.init_pid()
        return NEW_PID_NAMESPACE

    def _refresh_slots(self, pod: Mapping[str, Any]) -> None:
        spec = pod.get("spec") or {}
        previous = {
            s.get("name"): s
            for key in ("containerStatuses", "initContainerStatuses")
            for s in (pod.get("status") or {}).get(key) or []
        }
        entries: list[tuple[Mapping[str, Any], Kind]] = [
            (c, Kind.SIDECAR if is_sidecar(c) else Kind.INIT)
            for c in spec.get("initContainers") or []
        ]
        entries += [(c, Kind.REGULAR) for c in spec.get("containers") or []]
        entries += [(c, Kind.EPHEMERAL) for c in spec.get("ephemeralContainers") or []]
        with self._lock:
            for container, kind in entries:
                name = str(container["name"])
                slot = self._slots.get(name)
                if slot is None:
                    slot = Slot(
                        name=name,
                        kind=kind,
                        spec=container,
                        metrics_name=f"nodesim-{self.uid[:8]}-{name}",
                        termination_file=self._run_dir / f"{name}.termination-log",
                        log_path=self._rt.log_path(self.namespace, self.name, name),
                        # A simulator restart keeps counting where the last one stopped.
                        restart_count=int((previous.get(name) or {}).get("restartCount", 0)),
                    )
                    self._slots[name] = slot
                slot.spec = container

    # --- in-place resize -------------------------------------------------------------

    def _allocated(self, slot: Slot) -> Mapping[str, Any] | None:
        """The resources the node allocated to a resizable container (None: not one)."""
        if self._allocation is None or slot.kind not in (Kind.REGULAR, Kind.SIDECAR):
            return None
        return self._allocation.containers.get(slot.name)

    def _allocate(self, pod: Mapping[str, Any]) -> bool:
        """Ask the allocation book about a resize; mirror its answer in the conditions.
        True when a resize was newly allocated."""
        allocation = self._rt.allocations.sync(self.uid, pod)
        if allocation is None:
            return False
        self._allocation = allocation
        now = _utcnow()
        pending = allocation.pending
        before = self._resize_pending
        if pending is None:
            self._resize_pending = None
        elif (
            before is None
            or before.reason != pending.reason
            or before.message != pending.message
            or before.observed_generation != allocation.pending_generation
        ):
            same_reason = before is not None and before.reason == pending.reason
            self._resize_pending = ResizeCondition(
                kind="PodResizePending",
                observed_generation=allocation.pending_generation,
                last_transition=before.last_transition if before and same_reason else now,
                last_probe=now,
                reason=pending.reason,
                message=pending.message,
            )
        if allocation.accepted != self._accepted_seen:
            # A newly allocated resize starts its PodResizeInProgress afresh (an Error of
            # an earlier one is cleared), at the generation that asked for it.
            self._accepted_seen = allocation.accepted
            self._resize_in_progress = ResizeCondition(
                kind="PodResizeInProgress",
                observed_generation=allocation.accepted_generation,
                last_transition=now,
                last_probe=now,
            )
            return True
        return False

    def _actuate(self, pod: Mapping[str, Any]) -> None:
        """Make the allocated resources take effect in the running containers: restart those
        whose ``resizePolicy`` asks for it, update the others live unless that would set a
        memory limit at or below current usage (then ``PodResizeInProgress`` says ``Error``
        and it is tried again at every sync, as the kubelet's best-effort check does)."""
        restarts: list[Slot] = []
        updates: list[tuple[Slot, Mapping[str, Any]]] = []
        for slot in self._ordered(Kind.SIDECAR, Kind.REGULAR):
            allocated = self._allocated(slot)
            if allocated is None or slot.proc is None or not isinstance(slot.state, Running):
                continue
            if allocated == slot.actuated:  # the common case, without parsing quantities
                continue
            action = resize.container_action(
                allocated=Resources.of(allocated),
                actuated=Resources.of(slot.actuated),
                resize_policy=slot.spec.get("resizePolicy") or [],
            )
            if action is resize.Action.RESTART:
                restarts.append(slot)
            elif action is resize.Action.UPDATE:
                updates.append((slot, allocated))
        for slot in restarts:
            self._restart_for_resize(slot, pod)
        if updates:
            error = self._memory_decrease_error(pod, updates)
            if error is not None:
                self._resize_error(pod, error)
            else:
                for slot, allocated in updates:
                    self._update_live(slot, allocated)
        running = [
            s
            for s in self._ordered(Kind.SIDECAR, Kind.REGULAR)
            if s.proc is not None and isinstance(s.state, Running)
        ]
        in_progress = any(
            Resources.of(allocated) != Resources.of(s.actuated)
            for s in running
            if (allocated := self._allocated(s)) is not None and allocated != s.actuated
        )
        if in_progress and self._resize_in_progress is None:
            now = _utcnow()
            self._resize_in_progress = ResizeCondition(
                kind="PodResizeInProgress",
                observed_generation=int((pod.get("metadata") or {}).get("generation") or 0),
                last_transition=now,
                last_probe=now,
            )
        elif not in_progress and self._resize_in_progress is not None:
            log.info(
                "pod %s/%s: resize completed (generation %d)",
                *self._key(),
                self._resize_in_progress.observed_generation,
            )
            self._resize_in_progress = None

    def _update_live(self, slot: Slot, allocated: Mapping[str, Any]) -> None:
        assert slot.proc is not None
        limit = Resources.of(allocated).memory_limit or None
        if limit != slot.proc.limit_bytes:
            log.info(
                "pod %s/%s container %s: memory limit %s -> %s (in-place resize)",
                *self._key(),
                slot.name,
                slot.proc.limit_bytes,
                limit,
            )
            self._rt.supervisor.set_limit(slot.proc, limit)
        with self._lock:
            slot.actuated = allocated

    def _memory_decrease_error(
        self, pod: Mapping[str, Any], updates: list[tuple[Slot, Mapping[str, Any]]]
    ) -> str | None:
        spec = pod.get("spec") or {}
        allocation = self._allocation
        assert allocation is not None
        allocated = dict(allocation.containers)
        actuated = {
            s.name: s.actuated
            for s in self._ordered(Kind.SIDECAR, Kind.REGULAR)
            if s.actuated is not None
        }
        usage = {
            s.name: s.proc.usage.rss_bytes
            for s in self._slots.values()
            if s.proc is not None and s.proc.poll() is None
        }
        decreasing = {}
        for slot, wanted in updates:
            new, old = Resources.of(wanted), Resources.of(slot.actuated)
            memory_changed = (new.memory_limit, new.memory_request) != (
                old.memory_limit,
                old.memory_request,
            )
            if (
                memory_changed
                and new.memory_limit
                and (not old.memory_limit or new.memory_limit < old.memory_limit)
            ):
                decreasing[slot.name] = new.memory_limit
        return resize.memory_decrease_error(
            pod_limit_before=resize.pod_memory_limit(spec, {**allocated, **actuated}),
            pod_limit_after=resize.pod_memory_limit(spec, allocated),
            pod_usage=sum(usage.values()),
            decreasing=decreasing,
            container_usage=usage,
        )

    def _resize_error(self, pod: Mapping[str, Any], message: str) -> None:
        before = self._resize_in_progress
        if before is not None and before.reason == "Error" and before.message == message:
            return
        now = _utcnow()
        generation = int((pod.get("metadata") or {}).get("generation") or 0)
        log.warning("pod %s/%s: resize error: %s", *self._key(), message)
        self._resize_in_progress = ResizeCondition(
            kind="PodResizeInProgress",
            # The condition keeps the generation it was started at (status manager).
            observed_generation=before.observed_generation if before else generation,
            last_transition=(
                before.last_transition if before is not None and before.reason == "Error" else now
            ),
            last_probe=now,
            reason="Error",
            message=message,
        )

    def _restart_for_resize(self, slot: Slot, pod: Mapping[str, Any]) -> None:
        """Kill the container as the kubelet does (SIGTERM, the pod's grace, SIGKILL); it
        starts again at once with its allocated resources, one restart more."""
        proc = slot.proc
        assert proc is not None
        spec = pod.get("spec") or {}
        grace = float(spec.get("terminationGracePeriodSeconds", 30))
        log.info("pod %s/%s: container %s resize requires restart", *self._key(), slot.name)
        self._rt.supervisor.signal(proc, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and proc.poll() is None and not self._gone:
            time.sleep(0.05)
        self._kill_and_record(slot, proc, pod, resize_restart=True)

    def _kill_and_record(self, slot: Slot, proc: Any, pod: Any, **exit_kind: bool) -> None:
        """SIGKILL ``proc`` if it still runs, reap it and record the container's exit."""
        if proc.poll() is None:
            self._rt.supervisor.signal(proc, signal.SIGKILL)
        try:
            returncode = proc.popen.wait(timeout=10)
        except Exception:
            log.exception("pod %s/%s: %s did not die", *self._key(), slot.name)
            return
        self._record_exit(slot, proc, returncode, pod, **exit_kind)

    # --- exits -----------------------------------------------------------------------

    def _reap(self, pod: Mapping[str, Any]) -> None:
        for slot in list(self._slots.values()):
            proc = slot.proc
            if proc is None:
                continue
            returncode = proc.poll()
            if returncode is None:
                continue
            self._record_exit(slot, proc, returncode, pod)

    def _record_exit(
        self,
        slot: Slot,
        proc: Proc,
        returncode: int,
        pod: Mapping[str, Any],
        *,
        resize_restart: bool = False,
    ) -> None:
        self._rt.supervisor.release(proc)
        exit_code = 137 if proc.sigkilled else exit_code_of(returncode)
        oom = proc.oom_killed
        if oom:
            exit_code = 137  # SIGKILL, whatever the process made of it
            slot.oom_events += 1
        policy = str(slot.spec.get("terminationMessagePolicy") or "File")
        message = termination_message(
            policy=policy,
            file_bytes=_read_head(slot.termination_file, 4096),
            log_tail=_read_tail(slot.log_path, _LOG_TAIL_BYTES),
            exit_code=exit_code,
        )
        term = Terminated(
            exit_code=exit_code,
            reason=terminated_reason(exit_code, oom_killed=oom),
            started_at=slot.started_wall,
            finished_at=_utcnow(),
            message=message,
            container_id=slot.container_id,
        )
        log.info(
            "pod %s/%s container %s exited: code %d (%s)",
            self.namespace,
            self.name,
            slot.name,
            exit_code,
            term.reason,
        )
        with self._lock:
            slot.proc = None
        if resize_restart and not (self._stopping_all or self._terminal):
            # Not a failure: no back-off, whatever the pod's restartPolicy.
            slot.last_state = term
            slot.restart_count += 1
            slot.next_start = time.monotonic()
            slot.state = Waiting(reason="ContainerCreating")
            return
        self._after_exit(slot, term, pod)

    def _after_exit(self, slot: Slot, term: Terminated, pod: Mapping[str, Any]) -> None:
        settings = self._rt.settings
        policy = str((pod.get("spec") or {}).get("restartPolicy") or "Always")
        if slot.kind is Kind.EPHEMERAL or self._stopping_all or self._terminal:
            restart = False
        elif slot.kind is Kind.SIDECAR:
            restart = not slot.finished
        elif slot.kind is Kind.INIT:
            restart = term.exit_code != 0 and policy != "Never"
        else:
            restart = should_restart(policy, term.exit_code)
        if not restart:
            slot.state = term
            slot.finished = True
            return
        ran = time.monotonic() - slot.started_mono if slot.started_mono else 0.0
        slot.failures = 1 if ran >= settings.backoff_reset_seconds else slot.failures + 1
        delay = backoff_seconds(
            slot.failures, base=settings.backoff_base_seconds, cap=settings.backoff_max_seconds
        )
        slot.next_start = time.monotonic() + delay
        slot.last_state = term
        slot.restart_count += 1
        slot.state = Waiting(
            reason="CrashLoopBackOff",
            message=(
                f"back-off {delay:g}s restarting failed container={slot.name} "
                f"pod={self.name}_{self.namespace}({self.uid})"
            ),
        )

    # --- starts ----------------------------------------------------------------------

    def _ordered(self, *kinds: Kind) -> list[Slot]:
        return [s for s in self._slots.values() if s.kind in kinds]

    def _start_due(self, pod: Mapping[str, Any]) -> None:
        now = time.monotonic()
        init_done = True
        for slot in self._ordered(Kind.INIT, Kind.SIDECAR):
            if slot.kind is Kind.SIDECAR:
                if slot.proc is None and not slot.finished and now >= slot.next_start:
                    self._start(slot, pod)
                if slot.proc is None and not self._initialized:
                    init_done = False
                    break
                continue
            if slot.succeeded:
                continue
            init_done = False
            if slot.proc is None and not slot.finished and now >= slot.next_start:
                self._start(slot, pod)
            break
        if init_done:
            self._initialized = True
        if not self._initialized:
            return
        regular = self._ordered(Kind.REGULAR)
        for slot in regular:
            if slot.proc is None and not slot.finished and now >= slot.next_start:
                self._start(slot, pod)
        if regular and all(s.finished for s in regular):
            # Regular containers are done for good: sidecars stop too, and stay stopped.
            for slot in self._ordered(Kind.SIDECAR):
                if not slot.finished:
                    slot.finished = True
                    if slot.proc is not None:
                        self._rt.supervisor.signal(slot.proc, signal.SIGTERM)
        for slot in self._ordered(Kind.EPHEMERAL):
            if not slot.attempted and now >= slot.next_start:
                self._start(slot, pod)

    def _sources(self, container: Mapping[str, Any]) -> envres.Sources:
        config_map_names, secret_names = envres.referenced_objects(container)
        config_maps: dict[str, dict[str, str]] = {}
        secrets: dict[str, dict[str, str]] = {}
        kube = self._rt.kube
        for name in config_map_names:
            with contextlib.suppress(NotFound):
                obj = kube.get(namespaced_path("configmaps", self.namespace, name))
                config_maps[name] = envres.config_map_data(obj)
        for name in secret_names:
            with contextlib.suppress(NotFound):
                obj = kube.get(namespaced_path("secrets", self.namespace, name))
                secrets[name] = envres.secret_data(obj)
        return envres.Sources(config_maps=config_maps, secrets=secrets)

    def _allocated_pod(self, pod: Mapping[str, Any]) -> Mapping[str, Any]:
        """The pod as allocated: its resizable containers' resources are the allocation's
        (the kubelet runs and resolves the downward API from this, not the raw spec)."""
        if self._allocation is None:
            return pod
        containers = self._allocation.containers
        spec = dict(pod.get("spec") or {})
        for key in ("containers", "initContainers"):
            if key in spec:
                spec[key] = [
                    {**c, "resources": containers[c["name"]]} if c.get("name") in containers else c
                    for c in spec[key]
                ]
        return {**pod, "spec": spec}

    def _start(self, slot: Slot, pod: Mapping[str, Any]) -> None:
        settings = self._rt.settings
        allocated = self._allocated(slot)
        container = slot.spec if allocated is None else {**slot.spec, "resources": allocated}
        pod = self._allocated_pod(pod)
        slot.attempted = True
        assert self.pod_ip is not None
        allocatable = settings.resources
        ctx = envres.PodContext(
            pod=pod,
            pod_ip=self.pod_ip,
            host_ip=settings.host_ip,
            node_allocatable_memory=parse_bytes(allocatable.memory),
            node_allocatable_millicores=parse_millicores(allocatable.cpu),
            node_allocatable_ephemeral_storage=parse_bytes(allocatable.ephemeral_storage),
        )
        try:
            own = envres.resolve_env(container, ctx=ctx, sources=self._sources(container))
        except envres.EnvError as exc:
            slot.state = Waiting(reason="CreateContainerConfigError", message=str(exc))
            slot.next_start = time.monotonic() + 2.0
            slot.attempted = False  # retried until the config appears, as the kubelet does
            return
        except ApiError as exc:
            log.warning("pod %s/%s: reading env sources failed: %s", *self._key(), exc)
            slot.next_start = time.monotonic() + 1.0
            slot.attempted = False
            return
        program = container_program(
            image=str(container.get("image", "")),
            command=envres.expand_all(container.get("command") or [], own),
            args=envres.expand_all(container.get("args") or [], own),
            rules=settings.images,
            python=self._rt.python,
        )
        defaults = {"HOSTNAME": self.name}
        ports = [int(p["containerPort"]) for p in container.get("ports") or []]
        listen = listen_address(rule=program.rule, pod_ip=self.pod_ip, ports=ports)
        if listen is not None and program.rule is not None and program.rule.listen_env:
            defaults[program.rule.listen_env] = listen
        forced = {"MEMWARDEN_TERMINATION_LOG": str(slot.termination_file)}
        if slot.kind is Kind.EPHEMERAL:
            forced["MEMWARDEN_PPROF_HOST"] = self.pod_ip
            # The pod's "network namespace": uploads leave from the pod's address, as
            # they would on a real node (the evidence API checks it).
            forced["MEMWARDEN_UPLOAD_SOURCE_ADDRESS"] = self.pod_ip
        process_env = envres.runtime_env(
            base=self._rt.base_env, own=own, defaults=defaults, forced=forced
        )
        identity = effective_identity(
            pod_spec=pod.get("spec") or {},
            container=container,
            image_user=program.rule.user if program.rule is not None else ROOT,
        )
        cwd = self._run_dir / slot.name
        cwd.mkdir(parents=True, exist_ok=True)
        slot.termination_file.parent.mkdir(parents=True, exist_ok=True)
        slot.termination_file.write_bytes(b"")
        # The container's "writable layer" and its termination message belong to its user.
        for owned in (cwd, slot.termination_file):
            os.chown(owned, identity.uid, identity.gid)
        message_path = str(container.get("terminationMessagePath") or "/dev/termination-log")
        argv = map_path(program.argv, path=message_path, host_path=str(slot.termination_file))
        launch = Launch(
            argv=argv,
            env=process_env,
            cwd=cwd,
            log_path=slot.log_path,
            identity=identity,
            pid_namespace=self._pid_namespace(pod, slot),
            reach=reach_paths(argv[0], env=process_env, files=(cwd, slot.termination_file)),
        )
        started = _utcnow()
        try:
            log_start = slot.log_path.stat().st_size
        except OSError:
            log_start = 0
        with self._lock:
            slot.log_starts.append(log_start)
        try:
            proc = self._rt.supervisor.start(
                launch,
                key=f"{self.namespace}/{self.name}/{slot.name}",
                limit_bytes=None if slot.kind is Kind.EPHEMERAL else memory_limit(container),
                notify=self._wake.set,
            )
        except StartFailed as exc:
            log.warning("pod %s/%s container %s: %s", *self._key(), slot.name, exc)
            slot.started_wall, slot.started_mono = None, time.monotonic()
            term = Terminated(
                exit_code=128, reason="StartError", finished_at=started, message=str(exc)
            )
            self._after_exit(slot, term, pod)
            return
        with self._lock:
            slot.proc = proc
            if slot.kind is not Kind.EPHEMERAL:
                slot.actuated = container.get("resources") or {}
            slot.user = (identity.uid, identity.gid)
            slot.container_id = f"nodesim://{uuid.uuid4().hex}"
            slot.started_wall = started
            slot.started_mono = time.monotonic()
            slot.state = Running(started_at=started)

    # --- status ----------------------------------------------------------------------

    def _view(self, *, terminal: bool = False) -> PodView:
        with self._lock:
            slots = list(self._slots.values())
        return PodView(
            host_ip=self._rt.settings.host_ip,
            pod_ip=self.pod_ip,
            start_time=self._start_time,
            init_containers=tuple(
                s.view(self._allocated(s)) for s in slots if s.kind in (Kind.INIT, Kind.SIDECAR)
            ),
            containers=tuple(s.view(self._allocated(s)) for s in slots if s.kind is Kind.REGULAR),
            ephemeral_containers=tuple(s.view() for s in slots if s.kind is Kind.EPHEMERAL),
            terminal=terminal,
            initialized=self._initialized,
            resize_conditions=tuple(
                c for c in (self._resize_pending, self._resize_in_progress) if c is not None
            ),
        )

    def _write_status(self, pod: Mapping[str, Any], *, terminal: bool = False) -> None:
        if time.monotonic() < self._status_retry_at:
            return
        view = self._view(terminal=terminal)
        status = build_pod_status(pod=pod, view=view, previous=self._last_written, now=_utcnow())
        if status == self._last_written:
            return
        kube = self._rt.kube
        for _ in range(4):
            try:
                result = kube.replace(
                    pod_path(self.namespace, self.name, "status"), {**pod, "status": status}
                )
            except Conflict:
                try:
                    pod = kube.get(pod_path(self.namespace, self.name))
                except NotFound:
                    self.mark_gone()
                    return
                except ApiError as exc:
                    self._status_failed(exc)
                    return
                if str(pod["metadata"].get("uid")) != self.uid:
                    self.mark_gone()
                    return
                self.update(pod)
                status = build_pod_status(
                    pod=pod, view=view, previous=self._last_written, now=_utcnow()
                )
                continue
            except NotFound:
                self.mark_gone()
                return
            except ApiError as exc:
                self._status_failed(exc)
                return
            self.update(result)
            self._last_written = status
            self._status_failures = 0
            if status.get("phase") in TERMINAL_PHASES and not self._terminal:
                self._terminal = True
                # A terminal pod holds no resources: deferred resizes may fit now.
                self._rt.allocations.release(self.uid)
                self._resize_pending = self._resize_in_progress = None
                log.info("pod %s/%s reached phase %s", *self._key(), status["phase"])
            return
        self._status_failed(ApiError("status update: repeated conflicts"))

    def _status_failed(self, exc: ApiError) -> None:
        self._status_failures += 1
        delay = min(5.0, 0.25 * 2**self._status_failures)
        self._status_retry_at = time.monotonic() + delay
        log.warning(
            "pod %s/%s: status update failed (retry in %.1fs): %s", *self._key(), delay, exc
        )

    # --- stopping --------------------------------------------------------------------

    def _stop_processes(self, *, grace: float) -> None:
        """SIGTERM every process of the pod, wait up to ``grace``, SIGKILL the rest."""
        supervisor = self._rt.supervisor
        running = [s for s in self._slots.values() if s.proc is not None]
        if not running:
            return
        if grace > 0:
            for slot in running:
                assert slot.proc is not None
                supervisor.signal(slot.proc, signal.SIGTERM)
            deadline = time.monotonic() + grace
            while time.monotonic() < deadline and not self._gone:
                if all(s.proc is None or s.proc.poll() is not None for s in running):
                    break
                self._wake.wait(0.1)
                self._wake.clear()
        pod = self._current()
        for slot in running:
            proc = slot.proc
            if proc is None:
                continue
            self._kill_and_record(slot, proc, pod)

    def _terminate(self, pod: Mapping[str, Any], *, max_grace: float | None = None) -> None:
        metadata = pod.get("metadata") or {}
        grace = metadata.get("deletionGracePeriodSeconds")
        if grace is None:
            grace = (pod.get("spec") or {}).get("terminationGracePeriodSeconds", 30)
        if max_grace is not None:
            grace = min(float(grace), max_grace)
        log.info("pod %s/%s deleted: stopping (grace %ss)", *self._key(), grace)
        self._stopping_all = True
        self._stop_processes(grace=float(grace))
        if self._gone:
            return
        self._status_retry_at = 0.0
        if self.pod_ip is not None:
            self._write_status(self._current(), terminal=True)
        try:
            self._rt.kube.delete(
                pod_path(self.namespace, self.name), grace_period_seconds=0, uid=self.uid
            )
        except (NotFound, Conflict):
            pass
        except ApiError as exc:
            log.warning("pod %s/%s: final delete failed: %s", *self._key(), exc)
        log.info("pod %s/%s: stopped and removed", *self._key())


def _read_head(path: Path, size: int) -> bytes:
    try:
        with path.open("rb") as handle:
            return handle.read(size)
    except OSError:
        return b""


def _read_tail(path: Path, size: int) -> bytes:
    try:
        with path.open("rb") as handle:
            handle.seek(0, 2)
            end = handle.tell()
            handle.seek(max(0, end - size))
            return handle.read()
    except OSError:
        return b""


class PodManager:
    """Watches the pods bound to the node and runs a ``PodWorker`` for each."""

    def __init__(self, rt: Runtime) -> None:
        self._rt = rt
        self._lock = threading.Lock()
        self._workers: dict[str, PodWorker] = {}
        self._done: set[str] = set()
        self._thread = threading.Thread(target=self._watch_loop, name="pod-watch", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def shutdown(self, *, timeout: float) -> None:
        """Stop every worker (each stops its processes); wait for them."""
        self._rt.stopping.set()
        with self._lock:
            workers = list(self._workers.values())
        for worker in workers:
            worker.wake()
        deadline = time.monotonic() + timeout
        for worker in workers:
            worker.join(max(0.1, deadline - time.monotonic()))

    # --- views for the HTTP server ----------------------------------------------------

    def workers(self) -> list[PodWorker]:
        with self._lock:
            return list(self._workers.values())

    def samples(self) -> list[ContainerSample]:
        return [sample for worker in self.workers() for sample in worker.samples()]

    def debug(self) -> list[dict[str, Any]]:
        return [worker.debug() for worker in self.workers()]

    def log_range(
        self, namespace: str, pod: str, container: str, previous: bool
    ) -> LogRange | None:
        """The log of a container instance; for pods no longer here, the whole file."""
        for worker in self.workers():
            if worker.namespace == namespace and worker.name == pod:
                return worker.log_range(container, previous=previous)
        path = self._rt.log_path(namespace, pod, container)
        return None if previous or not path.exists() else LogRange(path=path)

    # --- watch -----------------------------------------------------------------------

    def _watch_loop(self) -> None:
        selector = f"spec.nodeName={self._rt.settings.node_name}"
        kube = self._rt.kube
        resource_version: str | None = None
        failures = 0
        while not self._rt.stopping.is_set():
            try:
                if resource_version is None:
                    listing = kube.get("/api/v1/pods", query={"fieldSelector": selector})
                    self._reconcile(listing.get("items") or [])
                    resource_version = str(listing["metadata"]["resourceVersion"])
                query = {
                    "fieldSelector": selector,
                    "resourceVersion": resource_version,
                    "allowWatchBookmarks": "true",
                }
                for event in kube.watch("/api/v1/pods", query=query, timeout_seconds=60):
                    if self._rt.stopping.is_set():
                        return
                    obj = event.get("object") or {}
                    resource_version = str(
                        (obj.get("metadata") or {}).get("resourceVersion", resource_version)
                    )
                    if event.get("type") == "BOOKMARK":
                        continue
                    if event.get("type") == "DELETED":
                        self._deleted(obj)
                    else:
                        self._observed(obj)
                failures = 0
            except ApiError as exc:
                if exc.status == 410:
                    log.info("pod watch expired: relisting")
                else:
                    failures += 1
                    log.warning("pod watch failed (retrying): %s", exc)
                    self._rt.stopping.wait(min(5.0, 0.5 * failures))
                resource_version = None
            except Exception:  # a bug must not silently end the watch: relist and go on
                failures += 1
                log.exception("pod watch broke (relisting)")
                self._rt.stopping.wait(min(5.0, 0.5 * failures))
                resource_version = None

    def _reconcile(self, pods: list[dict[str, Any]]) -> None:
        seen = set()
        for pod in pods:
            seen.add(str(pod["metadata"]["uid"]))
            self._observed(pod)
        for worker in self.workers():
            if worker.uid not in seen:
                worker.mark_gone()

    def _observed(self, pod: Mapping[str, Any]) -> None:
        metadata = pod.get("metadata") or {}
        uid = str(metadata.get("uid"))
        with self._lock:
            worker = self._workers.get(uid)
            finished = uid in self._done
        if worker is not None:
            worker.update(pod)
            return
        deleting = bool(metadata.get("deletionTimestamp"))
        terminal = (pod.get("status") or {}).get("phase") in TERMINAL_PHASES
        if deleting:
            # Nothing of it runs here: confirm the deletion, as the kubelet does.
            try:
                self._rt.kube.delete(
                    pod_path(str(metadata["namespace"]), str(metadata["name"])),
                    grace_period_seconds=0,
                    uid=uid,
                )
            except (NotFound, Conflict):
                pass
            except ApiError as exc:
                log.warning("deleting pod %s: %s", metadata.get("name"), exc)
            return
        if terminal or finished:
            return  # nothing to run: completed, or a late event about a pod let go of
        worker = PodWorker(pod=pod, rt=self._rt, on_exit=self._forget)
        with self._lock:
            self._workers[uid] = worker
        log.info("pod %s/%s bound here: starting", metadata.get("namespace"), metadata.get("name"))
        worker.start()

    def _deleted(self, pod: Mapping[str, Any]) -> None:
        uid = str((pod.get("metadata") or {}).get("uid"))
        with self._lock:
            worker = self._workers.get(uid)
        if worker is not None:
            worker.mark_gone()

    def _forget(self, worker: PodWorker) -> None:
        with self._lock:
            self._workers.pop(worker.uid, None)
            self._done.add(worker.uid)
