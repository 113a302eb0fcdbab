"""Who a simulated container's processes are: uid, gid and capabilities. Pure.

Test infrastructure. The simulator starts each container's process with the identity a
container runtime (containerd + runc) would give it, so the kernel, not memwarden's code,
decides whether a debug container may ptrace its target or read its ``/proc`` files:

- uid/gid: the container's ``securityContext``, else the pod's, else the image's default
  user (``ImageRule.user``). ``runAsUser`` without ``runAsGroup`` gets gid 0 unless the
  uid is the image's own user (the runtime would look the uid up in the image's
  ``/etc/passwd``; the simulator has none).
- capabilities: the runtime's default set, minus ``drop``, plus ``add`` (``ALL`` in
  either works as in Kubernetes); every capability for ``privileged``. They bound the
  process (``CapBnd``); they are permitted and effective only for uid 0: a non-root
  process gets none, even those listed in ``add`` (no ambient capabilities;
  kubernetes/kubernetes issue 56374).
- ``allowPrivilegeEscalation: false`` sets ``no_new_privs``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

#: containerd's default capabilities (``oci.DefaultCaps`` / the CRI plugin's default), which
#: a container gets when its securityContext changes nothing.
DEFAULT_CAPABILITIES: frozenset[str] = frozenset(
    {
        "AUDIT_WRITE",
        "CHOWN",
        "DAC_OVERRIDE",
        "FOWNER",
        "FSETID",
        "KILL",
        "MKNOD",
        "NET_BIND_SERVICE",
        "NET_RAW",
        "SETFCAP",
        "SETGID",
        "SETPCAP",
        "SETUID",
        "SYS_CHROOT",
    }
)

#: Root and root's group: the user of an image that names none.
ROOT = (0, 0)


@dataclass(frozen=True)
class Identity:
    """The credentials a container's process runs with."""

    uid: int
    gid: int
    #: The bounding set; None means every capability (``privileged``).
    capabilities: frozenset[str] | None
    no_new_privs: bool = False

    @property
    def effective(self) -> frozenset[str] | None:
        """Permitted = effective capabilities: the bounding set for root, none otherwise
        (None: all)."""
        if self.uid != 0:
            return frozenset()
        return self.capabilities


def _normalise(names: Sequence[Any] | None) -> set[str]:
    out = set()
    for name in names or ():
        text = str(name).upper()
        out.add(text.removeprefix("CAP_"))
    return out


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def effective_identity(
    *, pod_spec: Mapping[str, Any], container: Mapping[str, Any], image_user: tuple[int, int]
) -> Identity:
    """The identity the runtime gives ``container`` of a pod with ``pod_spec``."""
    own = container.get("securityContext") or {}
    pod = pod_spec.get("securityContext") or {}
    uid = _int(own.get("runAsUser"))
    if uid is None:
        uid = _int(pod.get("runAsUser"))
    gid = _int(own.get("runAsGroup"))
    if gid is None:
        gid = _int(pod.get("runAsGroup"))
    if uid is None:
        uid = image_user[0]
        if gid is None:
            gid = image_user[1]
    if gid is None:
        gid = image_user[1] if uid == image_user[0] else 0
    caps: frozenset[str] | None
    if own.get("privileged") is True:
        caps = None
    else:
        wanted = own.get("capabilities") or {}
        drop, add = _normalise(wanted.get("drop")), _normalise(wanted.get("add"))
        if "ALL" in add:
            caps = None
        else:
            base = set() if "ALL" in drop else DEFAULT_CAPABILITIES - drop
            caps = frozenset(base | add)
    return Identity(
        uid=uid,
        gid=gid,
        capabilities=caps,
        no_new_privs=own.get("allowPrivilegeEscalation") is False,
    )


def setpriv_argv(setpriv: str, identity: Identity) -> list[str]:
    """``setpriv`` options that switch to ``identity`` before exec'ing the program.

    For uid 0 the bounding set becomes permitted and effective at exec (root's file
    capabilities are all); for another uid setresuid(2) clears them, and nothing raises
    them again: inheritable and ambient sets are cleared.
    """
    caps = identity.capabilities
    bounding = (
        "+all" if caps is None else ",".join(["-all", *(f"+{c.lower()}" for c in sorted(caps))])
    )
    argv = [
        setpriv,
        f"--reuid={identity.uid}",
        f"--regid={identity.gid}",
        "--clear-groups",
        "--inh-caps=-all",
        "--ambient-caps=-all",
        f"--bounding-set={bounding}",
    ]
    if identity.no_new_privs:
        argv.append("--no-new-privs")
    return [*argv, "--"]
