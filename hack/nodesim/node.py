"""The simulated Node: registration, Lease renewal and status heartbeats.

Test infrastructure standing in for the kubelet's node status manager. The Node reports
Ready=True from its first status write, so the node lifecycle controller lifts the
``node.kubernetes.io/not-ready`` taint that the API server's admission puts on every new
Node, and the real scheduler binds pods to it. The Lease in ``kube-node-lease`` is
renewed every ``lease_renew_seconds``, which is what keeps the node from being marked
NotReady (the controller's grace period is ~50 s).

``node_object``, ``node_status`` and ``lease_object`` are pure; ``NodeAgent`` does I/O.
"""

from __future__ import annotations

import datetime as dt
import logging
import os
import platform
import threading
import time
import uuid
from typing import Any

from nodesim.kubeapi import ApiError, Conflict, Kube, NotFound, lease_path, node_path
from nodesim.settings import Settings
from nodesim.status import rfc3339

log = logging.getLogger("nodesim.node")

LEASE_NAMESPACE = "kube-node-lease"
SIMULATOR_LABEL = "memwarden.dev/node-simulator"
NOT_READY_TAINT = "node.kubernetes.io/not-ready"
VERSION = "v1.37.2-nodesim"

_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "arm64": "arm64"}

_PRESSURE = (
    ("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
    ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
    ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
)


def micro_time(moment: dt.datetime) -> str:
    """A ``metav1.MicroTime`` (what Lease times are)."""
    return moment.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def node_labels(settings: Settings) -> dict[str, str]:
    return {
        "kubernetes.io/hostname": settings.node_name,
        "kubernetes.io/os": "linux",
        "kubernetes.io/arch": _ARCH.get(platform.machine(), platform.machine()),
        SIMULATOR_LABEL: "true",
        **dict(settings.labels),
    }


def node_object(settings: Settings) -> dict[str, Any]:
    """The Node as first created (status is written separately)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": settings.node_name,
            "labels": node_labels(settings),
            "annotations": {
                "memwarden.dev/description": "node simulator: test infrastructure, not a kubelet"
            },
        },
        "spec": {"taints": node_taints(settings)} if settings.taints else {},
    }


def node_taints(settings: Settings) -> list[dict[str, str]]:
    return [
        {"key": key, "value": value, "effect": effect} for key, value, effect in settings.taints
    ]


def node_conditions(*, ready: bool, now: dt.datetime, since: dt.datetime) -> list[dict[str, Any]]:
    """Ready plus the three pressure conditions (never under pressure)."""
    conditions = [
        {
            "type": kind,
            "status": "False",
            "reason": reason,
            "message": message,
            "lastHeartbeatTime": rfc3339(now),
            "lastTransitionTime": rfc3339(since),
        }
        for kind, reason, message in _PRESSURE
    ]
    conditions.append(
        {
            "type": "Ready",
            "status": "True" if ready else "False",
            "reason": "KubeletReady" if ready else "KubeletNotReady",
            "message": (
                "node simulator (test infrastructure) is posting ready status"
                if ready
                else "node simulator stopped"
            ),
            "lastHeartbeatTime": rfc3339(now),
            "lastTransitionTime": rfc3339(since),
        }
    )
    return conditions


def node_resources(settings: Settings) -> dict[str, str]:
    """Capacity = allocatable (the simulator reserves nothing)."""
    r = settings.resources
    return {
        "cpu": r.cpu,
        "memory": r.memory,
        "pods": str(r.pods),
        "ephemeral-storage": r.ephemeral_storage,
    }


def node_status(
    settings: Settings,
    *,
    now: dt.datetime,
    since: dt.datetime,
    boot_id: str,
    kubelet_port: int = 0,
) -> dict[str, Any]:
    """The full status written at registration."""
    resources = node_resources(settings)
    uname = os.uname()
    return {
        "capacity": resources,
        "allocatable": resources,
        "conditions": node_conditions(ready=True, now=now, since=since),
        # InternalIP only: the API server picks the first address type it prefers, and
        # a Hostname address would not resolve.
        "addresses": [{"type": "InternalIP", "address": settings.host_ip}],
        # Where the API server sends ``kubectl logs`` (our TLS server's /containerLogs).
        "daemonEndpoints": {"kubeletEndpoint": {"Port": kubelet_port}},
        "nodeInfo": {
            "machineID": uuid.uuid5(uuid.NAMESPACE_DNS, settings.node_name).hex,
            "systemUUID": str(uuid.uuid5(uuid.NAMESPACE_DNS, settings.node_name)),
            "bootID": boot_id,
            "kernelVersion": uname.release,
            "osImage": "memwarden node simulator (test infrastructure)",
            "containerRuntimeVersion": "nodesim://0.1.0",
            "kubeletVersion": VERSION,
            "kubeProxyVersion": "",
            "operatingSystem": "linux",
            "architecture": _ARCH.get(platform.machine(), platform.machine()),
        },
    }


def lease_object(settings: Settings, *, node_uid: str | None, now: dt.datetime) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": settings.node_name, "namespace": LEASE_NAMESPACE}
    if node_uid:
        # As the kubelet does: the Lease goes away with its Node.
        metadata["ownerReferences"] = [
            {"apiVersion": "v1", "kind": "Node", "name": settings.node_name, "uid": node_uid}
        ]
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": metadata,
        "spec": {
            "holderIdentity": settings.node_name,
            "leaseDurationSeconds": settings.lease_duration_seconds,
            "renewTime": micro_time(now),
        },
    }


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class NodeAgent:
    """Registers the Node and keeps it alive from a background thread."""

    def __init__(self, *, kube: Kube, settings: Settings, kubelet_port: int = 0) -> None:
        self._kube = kube
        self._kubelet_port = kubelet_port
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="node", daemon=True)
        self._since = _now()
        self._boot_id = str(uuid.uuid4())
        self._node_uid: str | None = None
        self._lease: dict[str, Any] | None = None

    @property
    def name(self) -> str:
        return self._settings.node_name

    def register(self) -> None:
        """Create (or adopt) the Node and write a Ready status; raises ``ApiError``."""
        settings = self._settings
        try:
            node = self._kube.create(node_path(), node_object(settings))
            log.info("registered node %s", settings.node_name)
        except Conflict:
            existing = self._kube.get(node_path(settings.node_name))
            patch: dict[str, Any] = {"metadata": {"labels": node_labels(settings)}}
            if settings.taints:
                ours = {key for key, _, _ in settings.taints}
                kept = [
                    t
                    for t in (existing.get("spec") or {}).get("taints") or []
                    if t.get("key") not in ours
                ]
                patch["spec"] = {"taints": kept + node_taints(settings)}
            node = self._kube.patch(node_path(settings.node_name), patch, patch_type="merge")
            log.info("adopted existing node %s", settings.node_name)
        self._node_uid = str(node["metadata"]["uid"])
        now = _now()
        self._since = now
        status = node_status(
            settings,
            now=now,
            since=now,
            boot_id=self._boot_id,
            kubelet_port=self._kubelet_port,
        )
        node = self._kube.patch(node_path(settings.node_name, "status"), {"status": status})
        self.renew_lease()
        self._lift_not_ready_taint(node)

    def _lift_not_ready_taint(self, node: dict[str, Any]) -> None:
        """Remove the not-ready NoSchedule taint that admission put on the new Node.

        The node lifecycle controller removes it too once it sees Ready=True, but only on
        its next monitor pass (~5 s): every test that starts a simulator would wait for it.
        The write is conditional on the Node's resourceVersion; on a conflict the
        controller simply does it.
        """
        taints = (node.get("spec") or {}).get("taints") or []
        kept = [
            t
            for t in taints
            if not (t.get("key") == NOT_READY_TAINT and t.get("effect") == "NoSchedule")
        ]
        if len(kept) == len(taints):
            return
        patch = {
            "metadata": {"resourceVersion": node["metadata"]["resourceVersion"]},
            "spec": {"taints": kept or None},
        }
        try:
            self._kube.patch(node_path(self.name), patch, patch_type="merge")
        except Conflict:
            log.info("node %s changed meanwhile: leaving the taint to the controller", self.name)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)

    def renew_lease(self) -> None:
        settings = self._settings
        path = lease_path(LEASE_NAMESPACE, settings.node_name)
        now = _now()
        if self._lease is not None:
            lease = dict(self._lease)
            lease["spec"] = {**lease.get("spec", {}), "renewTime": micro_time(now)}
            lease["spec"]["holderIdentity"] = settings.node_name
            lease["spec"]["leaseDurationSeconds"] = settings.lease_duration_seconds
            try:
                self._lease = self._kube.replace(path, lease)
                return
            except (Conflict, NotFound):
                self._lease = None
        try:
            current = self._kube.get(path)
        except NotFound:
            fresh = lease_object(settings, node_uid=self._node_uid, now=now)
            self._lease = self._kube.create(lease_path(LEASE_NAMESPACE), fresh)
            return
        current["spec"] = lease_object(settings, node_uid=None, now=now)["spec"]
        self._lease = self._kube.replace(path, current)

    def heartbeat(self) -> None:
        """Conditions, and capacity/allocatable again, as the kubelet's status setters do:
        a Node status someone else changed is put right within one period."""
        now = _now()
        resources = node_resources(self._settings)
        status = {
            "capacity": resources,
            "allocatable": resources,
            "conditions": node_conditions(ready=True, now=now, since=self._since),
        }
        self._kube.patch(node_path(self.name, "status"), {"status": status})

    def _loop(self) -> None:
        settings = self._settings
        next_lease = time.monotonic() + settings.lease_renew_seconds
        next_status = time.monotonic() + settings.status_heartbeat_seconds
        while not self._stop.wait(0.5):
            now = time.monotonic()
            try:
                if now >= next_lease:
                    next_lease = now + 1.0  # until it succeeds: the lease has ~40 s of slack
                    self.renew_lease()
                    next_lease = now + settings.lease_renew_seconds
                if now >= next_status:
                    next_status = now + 1.0
                    self.heartbeat()
                    next_status = now + settings.status_heartbeat_seconds
            except NotFound:
                log.warning("node %s was deleted: registering it again", self.name)
                try:
                    self.register()
                except ApiError as exc:
                    log.warning("registering node %s failed (will retry): %s", self.name, exc)
            except ApiError as exc:
                log.warning("node heartbeat failed (will retry): %s", exc)
            except Exception:  # the Lease must keep being renewed whatever happens
                log.exception("node heartbeat broke (will retry)")

    def shut_down(self, *, delete: bool) -> None:
        """Delete the Node, or mark it NotReady (the controller then taints it)."""
        self.stop()
        try:
            if delete:
                self._kube.delete(node_path(self.name))
                log.info("deleted node %s", self.name)
                return
            now = _now()
            self._kube.patch(
                node_path(self.name, "status"),
                {"status": {"conditions": node_conditions(ready=False, now=now, since=now)}},
            )
            log.info("marked node %s NotReady", self.name)
        except ApiError as exc:
            log.warning("node shutdown: %s", exc)
