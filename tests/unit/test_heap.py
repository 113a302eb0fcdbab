"""heap: free pages in the middle of the C heap go back to the system; kept JSON costs its size."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import orjson

from memwarden.heap import compact_json, release_free_memory
from memwarden.mutation import PlanCache


def rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def test_free_pages_between_live_blocks_go_back_to_the_system() -> None:
    # 100,000 blocks of 2 KiB (malloc's, not pymalloc's), every 64th kept: the heap cannot
    # shrink from its top, so without a trim the freed pages stay resident.
    blocks = [bytes(2048) for _ in range(100_000)]
    kept = blocks[::64]
    del blocks
    before = rss_kib()
    assert release_free_memory()
    after = rss_kib()
    assert before - after > 100 * 1024, (before, after)  # most of ~200 MiB, at least 100
    assert len(kept) == 1563


def test_kept_json_costs_its_length_not_orjsons_buffer() -> None:
    # orjson.dumps hands back a 4 KiB buffer for 400 bytes of JSON; the pod index keeps
    # one encoded view per pod (12,000 in the scale benchmark), so each must cost its size.
    view = {"metadata": {"name": "pod-0", "labels": {"app": "x" * 300}}}
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        kept = [compact_json(view) for _ in range(1_000)]
        per_view = (tracemalloc.get_traced_memory()[0] - before) / len(kept)
    finally:
        tracemalloc.stop()
    assert orjson.loads(kept[0]) == view
    assert per_view < 2 * len(kept[0]), (per_view, len(kept[0]))


def test_plan_cache_keys_are_kept_at_their_size() -> None:
    pod = {"spec": {"containers": [{"name": "app", "resources": {}}]}}
    key = PlanCache.shape_of(pod)
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keys = [PlanCache.shape_of(pod) for _ in range(1_000)]
        per_key = (tracemalloc.get_traced_memory()[0] - before) / len(keys)
    finally:
        tracemalloc.stop()
    assert keys[0] == key
    assert per_key < 2 * len(key) + 64, (per_key, len(key))
