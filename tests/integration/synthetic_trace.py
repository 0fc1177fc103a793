"""A Mooncake-format trace for tests that replay one, when the shared trace is not at hand.

The shape the replays rely on, seeded: timestamps in 3 s buckets, every prompt opening
with the shared system block 0, and conversations whose follow-up turns extend an earlier
turn's ``hash_ids`` (512 tokens each), so prefixes are really shared.
"""

from __future__ import annotations

import gzip
import json
import random
from pathlib import Path

SHARED_TRACE = (
    Path(__file__).resolve().parents[3]
    / "shared"
    / "traces"
    / "mooncake_conversation_trace.first40min.jsonl.gz"
)


def write_mooncake_like(
    path: Path, *, seed: int = 0, duration_s: float = 900.0, rate_rps: float = 3.3
) -> Path:
    """Write a seeded Mooncake-format ``.jsonl.gz`` trace of about ``duration_s`` seconds."""
    rng = random.Random(seed)
    conversations: list[list[int]] = []
    next_id = 1
    rows = []
    for bucket in range(int(duration_s // 3)):
        for _ in range(rng.randint(int(rate_rps * 3) - 3, int(rate_rps * 3) + 3)):
            if conversations and rng.random() < 0.4:
                ids = rng.choice(conversations)
                ids.extend(range(next_id, next_id + rng.randint(1, 3)))
            else:
                ids = [0, *range(next_id, next_id + rng.randint(1, 12))]
                conversations.append(ids)
            next_id = max(ids) + 1
            rows.append(
                {
                    "timestamp": bucket * 3000,
                    "input_length": 512 * len(ids) - rng.randint(0, 511),
                    "output_length": rng.randint(20, 600),
                    "hash_ids": list(ids),
                }
            )
    with gzip.open(path, "wt", encoding="utf-8") as f:
        for row in rows:
            f.write(json.dumps(row) + "\n")
    return path


def mooncake_trace(folder: Path) -> Path:
    """The shared Mooncake slice if it is here, else a synthetic one written in ``folder``."""
    if SHARED_TRACE.is_file():
        return SHARED_TRACE
    return write_mooncake_like(folder / "mooncake_like.jsonl.gz")
