"""heap.release_free_memory: free pages in the middle of the C heap go back to the system."""

from __future__ import annotations

from pathlib import Path

from memwarden.heap import release_free_memory


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
