"""Copying with a deadline, hashing on the way: nothing is held in memory."""

from __future__ import annotations

import hashlib
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import BinaryIO

from memwarden.capture.toolbox.model import CHUNK, StepError

# --- copying with a deadline, hashing on the way -----------------------------------------


def _copy_stream(source: BinaryIO, dest: Path, *, deadline: float) -> tuple[int, str]:
    """Copy ``source`` to ``dest`` in chunks; (bytes, sha256). Never the whole body at once."""
    digest = hashlib.sha256()
    size = 0
    with dest.open("wb") as out:
        while chunk := source.read(CHUNK):
            if time.monotonic() > deadline:
                raise StepError("timed out while reading")
            digest.update(chunk)
            out.write(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as source:
        while chunk := source.read(CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()


def _fetch(url: str, dest: Path, *, timeout: float) -> tuple[int, str]:
    """GET ``url`` into ``dest``; ``timeout`` bounds the whole transfer, not one read."""
    deadline = time.monotonic() + timeout
    try:
        response = urllib.request.urlopen(url, timeout=timeout)
    except urllib.error.HTTPError as exc:
        detail = exc.read(300).decode("utf-8", "replace").strip()
        raise StepError(f"HTTP {exc.code} from {url}: {detail}") from exc
    except urllib.error.URLError as exc:
        raise StepError(f"{url}: {exc.reason}") from exc
    with response:
        return _copy_stream(response, dest, deadline=deadline)


def _copy_file(source: Path, dest: Path, *, timeout: float) -> tuple[int, str]:
    # /proc and cgroup files report size 0 until read: copy them to learn the real size.
    with source.open("rb") as stream:
        return _copy_stream(stream, dest, deadline=time.monotonic() + timeout)
