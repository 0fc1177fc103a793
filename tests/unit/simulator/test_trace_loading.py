"""load_trace: Mooncake JSONL and Azure CSV, gzip, quantised timestamps, bad files."""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest

from mufleet.traces import MOONCAKE_BLOCK_TOKENS, TraceError, load_trace


def _mooncake_rows(buckets: int = 12, seed: int = 0) -> list[dict[str, object]]:
    """Requests in ~3 s buckets (2999–3003 ms apart, as the real trace's), 3–6 per bucket,
    each with a distinct input length that identifies it."""
    rng = random.Random(seed)
    rows: list[dict[str, object]] = []
    stamp = 0
    for _ in range(buckets):
        for _ in range(rng.randint(3, 6)):
            n = 1000 + len(rows)
            rows.append(
                {
                    "timestamp": stamp,
                    "input_length": n,
                    "output_length": 10 + len(rows),
                    "hash_ids": list(range(len(rows) * 10, len(rows) * 10 + -(-n // 512))),
                }
            )
        stamp += rng.randint(2999, 3003)
    return rows


def _write_jsonl(path: Path, rows: Sequence[Mapping[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_mooncake_buckets_are_detected_and_spread(tmp_path: Path) -> None:
    rows = _mooncake_rows()
    trace = load_trace(_write_jsonl(tmp_path / "bucketed.jsonl", rows), seed=3)

    assert trace.block_tokens == MOONCAKE_BLOCK_TOKENS
    assert trace.bucket_s is not None
    assert 2.999 <= trace.bucket_s <= 3.003
    assert len(trace) == len(rows)
    assert trace.requests[0].arrival_s == 0.0
    arrivals = [r.arrival_s for r in trace.requests]
    assert arrivals == sorted(arrivals)
    # Every request lies in its own bucket, shifted by the one offset the re-basing took.
    stamp = {int(r["input_length"]): int(r["timestamp"]) / 1000 for r in rows}  # type: ignore[call-overload]
    low = max(stamp[r.input_tokens] - r.arrival_s for r in trace.requests)
    high = min(stamp[r.input_tokens] + trace.bucket_s - r.arrival_s for r in trace.requests)
    assert 0 <= low < high <= trace.bucket_s
    # Spread, not kept in bursts: no two requests share a time.
    assert len(set(arrivals)) == len(arrivals)
    per_bucket: dict[float, list[float]] = {}
    for r in trace.requests:
        per_bucket.setdefault(stamp[r.input_tokens], []).append(r.arrival_s)
    widest = max(max(v) - min(v) for v in per_bucket.values())
    assert widest > 0.3 * trace.bucket_s


def test_mooncake_fields_are_kept(tmp_path: Path) -> None:
    rows = _mooncake_rows(buckets=3)
    trace = load_trace(_write_jsonl(tmp_path / "t.jsonl", rows), spread=False)

    by_len = {r.input_tokens: r for r in trace.requests}
    for row in rows:
        request = by_len[int(row["input_length"])]  # type: ignore[call-overload]
        assert request.output_tokens == row["output_length"]
        assert list(request.hash_ids) == row["hash_ids"]
        assert request.arrival_s == pytest.approx(int(row["timestamp"]) / 1000)  # type: ignore[call-overload]


def test_spreading_is_seeded_and_optional(tmp_path: Path) -> None:
    path = _write_jsonl(tmp_path / "bucketed.jsonl", _mooncake_rows())

    a = load_trace(path, seed=1)
    b = load_trace(path, seed=1)
    c = load_trace(path, seed=2)
    bursts = load_trace(path, spread=False)

    assert a == b
    assert [r.arrival_s for r in a] != [r.arrival_s for r in c]
    assert bursts.bucket_s is None
    assert len({r.arrival_s for r in bursts}) == 12  # one time per bucket


def test_unquantised_stamps_are_left_alone(tmp_path: Path) -> None:
    rng = random.Random(5)
    rows = []
    t = 0
    for i in range(50):
        t += rng.randint(1, 900)
        rows.append({"timestamp": t, "input_length": 100 + i, "output_length": 5})
    trace = load_trace(_write_jsonl(tmp_path / "plain.json", rows))

    assert trace.bucket_s is None
    assert trace.block_tokens is None  # no hash_ids: no prefix information
    assert [r.arrival_s for r in trace] == pytest.approx(
        [(r["timestamp"] - rows[0]["timestamp"]) / 1000 for r in rows]
    )
    assert trace.name == "plain"


AZURE = (
    "TIMESTAMP,ContextTokens,GeneratedTokens\r\n"
    "2023-11-16 18:17:03.9799600,4808,10\r\n"
    "2023-11-16 18:17:04.0319600,3180,8\r\n"
    "2023-11-16 18:17:04.0319601,0,0\r\n"
    "2023-11-16 18:17:59,200,300\r\n"
    "2023-11-16 18:18:00.5000000,1,1\r\n"
)


def test_azure_csv(tmp_path: Path) -> None:
    path = tmp_path / "azure_code.csv"
    path.write_bytes(AZURE.encode())

    trace = load_trace(path)

    assert trace.name == "azure_code"
    assert trace.block_tokens is None and trace.bucket_s is None
    assert [r.input_tokens for r in trace] == [4808, 3180, 1, 200, 1]  # 0 tokens count as 1
    assert [r.output_tokens for r in trace] == [10, 8, 1, 300, 1]
    assert all(r.hash_ids == () for r in trace)
    expected = [0.0, 0.052, 0.0520001, 55.02004, 56.52004]
    assert [r.arrival_s for r in trace] == pytest.approx(expected, abs=1e-6)


def test_gzip_reads_as_the_plain_file(tmp_path: Path) -> None:
    rows = _mooncake_rows()
    plain = _write_jsonl(tmp_path / "m.jsonl", rows)
    packed = tmp_path / "m.jsonl.gz"
    packed.write_bytes(gzip.compress(plain.read_bytes()))
    csv_plain = tmp_path / "a.csv"
    csv_plain.write_bytes(AZURE.encode())
    csv_packed = tmp_path / "a.csv.gz"
    csv_packed.write_bytes(gzip.compress(AZURE.encode()))

    assert load_trace(packed, seed=4) == load_trace(plain, seed=4)
    assert load_trace(csv_packed).requests == load_trace(csv_plain).requests
    assert load_trace(packed).name == "m"


@pytest.mark.parametrize(
    ("name", "text", "line"),
    [
        ("bad.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\nnot json\n', 2),
        ("bad.jsonl", '{"timestamp": 0, "input_length": 5, "output_length": 1}\n\n{"x": 1}\n', 3),
        ("bad.jsonl", '{"timestamp": 0, "input_length": "many", "output_length": 1}\n', 1),
        (
            "bad.csv",
            "TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:17:03.1,5,1\nx,5,1\n",
            3,
        ),
        ("bad.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\r\n2023-11-16 18:17:03.1,5,z\r\n", 2),
        ("bad.csv", "Time,In,Out\n2023-11-16 18:17:03.1,5,1\n", 2),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, name: str, text: str, line: int) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(TraceError, match=f"{path}:{line}: not an? (Mooncake|Azure) trace row"):
        load_trace(path)


def test_a_bad_row_in_a_gzip_file_names_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.jsonl.gz"
    good = '{"timestamp": 0, "input_length": 5, "output_length": 1}\n'
    path.write_bytes(gzip.compress((good * 4 + "{]\n").encode()))
    with pytest.raises(TraceError, match=f"{path}:5:"):
        load_trace(path)


@pytest.mark.parametrize("name", ["trace.txt", "trace.parquet", "trace.gz", "trace.csv.bz2"])
def test_unknown_extension_is_rejected(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.raises(TraceError, match="unknown trace format"):
        load_trace(path)


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(TraceError, match="no trace file"):
        load_trace(tmp_path / "nowhere.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(TraceError, match="empty"):
        load_trace(empty)
    header_only = tmp_path / "empty.csv"
    header_only.write_text("TIMESTAMP,ContextTokens,GeneratedTokens\n")
    with pytest.raises(TraceError, match="empty"):
        load_trace(header_only)


def test_requests_are_rebased_and_sorted(tmp_path: Path) -> None:
    rows = [
        {"timestamp": 5000, "input_length": 1, "output_length": 1},
        {"timestamp": 2000, "input_length": 2, "output_length": 1},
        {"timestamp": 9000, "input_length": 3, "output_length": 1},
    ]
    trace = load_trace(_write_jsonl(tmp_path / "unsorted.jsonl", rows))
    assert [(r.arrival_s, r.input_tokens) for r in trace] == [(0.0, 2), (3.0, 1), (7.0, 3)]
    assert trace.duration_s == 7.0
    assert trace.rate_rps == pytest.approx(3 / 7)
