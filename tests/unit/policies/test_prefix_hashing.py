"""block_hashes and the PrefixIndex."""

from __future__ import annotations

import os
import subprocess
import sys
from hashlib import blake2b
from pathlib import Path

import pytest

from router.policies.prefix import ROOT_HASH, PrefixIndex, block_hashes

ROOT = Path(__file__).resolve().parents[3]


def test_chained_full_blocks_only() -> None:
    tokens = list(range(50))
    hashes = block_hashes(tokens, 16)
    assert len(hashes) == 3  # 48 tokens in full blocks, 2 left over
    assert block_hashes(tokens[:48], 16) == hashes
    assert block_hashes(tokens[:15], 16) == ()
    assert all(0 <= h < 2**64 for h in hashes)
    # each hash covers everything before it
    changed = [999, *tokens[1:]]
    assert all(a != b for a, b in zip(block_hashes(changed, 16), hashes, strict=True))
    tail_changed = [*tokens[:40], 999, *tokens[41:]]
    assert block_hashes(tail_changed, 16)[:2] == hashes[:2]
    assert block_hashes(tail_changed, 16)[2] != hashes[2]


def test_pinned_value() -> None:
    """The function is BLAKE2b-64 over parent (8 bytes LE) + ids (int64 LE)."""
    ids = list(range(16))
    digest = blake2b(ROOT_HASH.to_bytes(8, "little"), digest_size=8)
    digest.update(b"".join(i.to_bytes(8, "little") for i in ids))
    first = int.from_bytes(digest.digest(), "little")
    assert block_hashes(ids, 16) == (first,)
    assert block_hashes(ids, 16, parent=7) != (first,)


def test_deterministic_across_processes() -> None:
    code = (
        "from router.policies.prefix import block_hashes; print(block_hashes(list(range(100)), 16))"
    )
    outputs = set()
    for seed in ("1", "2"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        out = subprocess.run(
            [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
        )
        outputs.add(out.stdout.strip())
    assert outputs == {str(block_hashes(list(range(100)), 16))}


def test_bad_block_size() -> None:
    with pytest.raises(ValueError):
        block_hashes([1, 2, 3], 0)


def test_match_counts_leading_blocks_per_node() -> None:
    index = PrefixIndex(capacity_blocks=100)
    a = (1, 2, 3, 4, 5)
    index.insert("n1", a)
    index.insert("n2", a[:2])
    index.insert("n3", (1, 2, 3, 9))  # shares 3 blocks with a
    index.insert("n4", (7, 8))
    assert index.match(a) == {"n1": 5, "n2": 2, "n3": 3}
    assert index.match((7, 8, 9)) == {"n4": 2}
    assert index.match((6,)) == {}
    assert index.match(()) == {}
    assert len(index) == 8


def test_lru_eviction_keeps_prefixes_closed() -> None:
    index = PrefixIndex(capacity_blocks=4)
    index.insert("n", (1, 2, 3))
    index.insert("n", (10, 11))  # 5 blocks > 4: the LRU block goes, tail first
    assert not index.holds("n", 3)
    assert index.match((1, 2, 3)) == {"n": 2}
    index.insert("n", (1, 2))  # touch: now 10, 11 are older than 1, 2
    index.insert("n", (20,))
    assert index.match((10, 11)) == {"n": 1}
    assert index.match((1, 2)) == {"n": 2}
    assert index.blocks_on("n") == 4


def test_matched_blocks_vector_and_unknown_names() -> None:
    index = PrefixIndex(capacity_blocks=100)
    for i in range(20):  # > 8 holders takes the bit-unpacking path
        index.insert(f"n{i}", (1, 2, 3) if i % 2 else (1, 2))
    names = ("stranger", *(f"n{i}" for i in range(20)))
    blocks = index.matched_blocks((1, 2, 3), names)
    assert blocks is not None
    assert blocks.tolist() == [0.0] + [3.0 if i % 2 else 2.0 for i in range(20)]
    assert index.matched_blocks((5,), names) is None


def test_ttl_expires_unused_blocks() -> None:
    index = PrefixIndex(capacity_blocks=100, ttl_s=10.0)
    index.insert("n", (1, 2, 3), now=0.0)
    index.insert("m", (1, 2), now=5.0)
    index.insert("n", (1,), now=8.0)  # block 1 on n used again
    assert index.match((1, 2, 3), now=9.0) == {"n": 3, "m": 2}
    assert index.match((1, 2, 3), now=12.0) == {"n": 1, "m": 2}
    assert index.match((1, 2, 3), now=16.0) == {"n": 1}
    assert index.match((1, 2, 3), now=30.0) == {}


def test_forget() -> None:
    index = PrefixIndex(capacity_blocks=100)
    index.insert("n", (1, 2))
    index.insert("m", (1,))
    index.forget("n")
    index.forget("never-seen")
    assert index.match((1, 2)) == {"m": 1}
    assert index.blocks_on("n") == 0


def test_stride_indexes_every_kth_block() -> None:
    index = PrefixIndex(capacity_blocks=100, stride=4)
    chain = tuple(range(100, 110))  # 10 blocks: indexed are positions 3 and 7
    index.insert("n", chain)
    assert index.blocks_on("n") == 8
    assert index.match(chain) == {"n": 8}
    assert index.match(chain[:7]) == {"n": 4}
    assert index.match(chain[:3]) == {}


def test_many_evictions_compact_the_reverse_index() -> None:
    index = PrefixIndex(capacity_blocks=8)
    for i in range(2000):
        index.insert("n", (i * 10, i * 10 + 1))
    assert index.blocks_on("n") == 8
    assert len(index) == 8
    assert len(index._holders) < 2 * 1024 + 8  # dead keys are compacted away


def test_arbitrary_ids_do_not_break_the_index() -> None:
    index = PrefixIndex(capacity_blocks=5)
    index.insert("n", (5, 5, 6))
    index.insert("n", (6, 5, 7, 8, 9, 10))
    index.insert("m", (6, 7))
    assert set(index.match((6, 5))) <= {"n", "m"}
    assert index.blocks_on("n") <= 5
