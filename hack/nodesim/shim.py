"""The container's filesystem view, then exec: ``shim.py --user UID:GID --reach PATH ... -- ARGV``.

Test infrastructure (the node simulator), run as root inside the container's own mount
namespace, before ``setpriv`` switches to the container's user. There are no images here:
a container runs host programs (the leaky binary under ``/root/.cache``, Python under
``/root/.pyenv``) and writes host files (its termination message under the state
directory), some below directories only root may enter (mode 0700). A runtime would give
the container a root filesystem of its own; the shim instead covers each such directory on
the way to a path the container needs with a tmpfs (mode 0755, visible only in this mount
namespace) holding bind mounts of just the entries on those paths. Nothing else changes:
file modes and owners are the host's, so a non-root container still cannot read what the
host's permissions deny it. Standard library only; no nodesim import.
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys
from pathlib import Path

MS_BIND = 4096
MS_REC = 16384

_libc = ctypes.CDLL(None, use_errno=True)


def _mount(source: str, target: str, fstype: str | None, flags: int, data: str | None) -> None:
    rc = _libc.mount(
        source.encode(),
        target.encode(),
        fstype.encode() if fstype else None,
        ctypes.c_ulong(flags),
        data.encode() if data else None,
    )
    if rc != 0:
        errno = ctypes.get_errno()
        raise OSError(errno, f"mount {source} on {target}: {os.strerror(errno)}")


def _traversable(path: Path, uid: int, gid: int) -> bool:
    """Whether ``uid``/``gid`` may search the directory (by its owner, group or others bit)."""
    info = path.stat()
    if info.st_uid == uid:
        return bool(info.st_mode & stat.S_IXUSR)
    if info.st_gid == gid:
        return bool(info.st_mode & stat.S_IXGRP)
    return bool(info.st_mode & stat.S_IXOTH)


def reach(paths: list[str], *, uid: int, gid: int) -> None:
    """Make every directory on the way to each of ``paths`` searchable by ``uid``/``gid``.
    Entries of a covered directory that are on none of the paths disappear from this
    mount namespace: the user could not have reached them anyway."""
    covered: dict[Path, int] = {}  # covered directory -> O_PATH fd of the original
    for text in paths:
        current = Path("/")
        for part in Path(text).parts[1:]:
            child = current / part
            original = covered.get(current)
            if original is not None and not os.path.lexists(child):
                source = f"/proc/self/fd/{original}/{part}"
                if not os.path.lexists(source):
                    break
                if os.path.isdir(source):
                    child.mkdir()
                else:
                    child.touch()
                _mount(source, str(child), None, MS_BIND | MS_REC, None)
            if not child.is_dir() or child.is_symlink():
                break
            if child not in covered and not _traversable(child, uid, gid):
                covered[child] = os.open(child, os.O_PATH | os.O_DIRECTORY)
                _mount("nodesim", str(child), "tmpfs", 0, "mode=0755")
            current = child


def main(argv: list[str]) -> None:
    paths: list[str] = []
    uid = gid = 0
    while argv and argv[0] in ("--reach", "--user"):
        if argv[0] == "--user":
            uid, gid = (int(n) for n in argv[1].split(":"))
        else:
            paths.append(argv[1])
        argv = argv[2:]
    if not argv or argv[0] != "--":
        sys.exit("usage: shim.py [--user UID:GID] [--reach PATH]... -- PROGRAM [ARG]...")
    argv = argv[1:]
    try:
        if uid != 0:  # root enters root's directories as it is
            reach(paths, uid=uid, gid=gid)
    except OSError as exc:
        sys.exit(f"nodesim shim: {exc}")
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
