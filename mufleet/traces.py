"""Public LLM request traces: Mooncake JSONL (with prefix ``hash_ids``) and Azure CSV.

A :class:`Trace` is a list of :class:`TraceRequest` sorted by arrival, the first at 0 s. It
is what the fleet simulator and the trace-replay load test both read, so that a replay on
a real fleet and a simulated one see the same requests.

* Mooncake (``timestamp`` ms, ``input_length``, ``output_length``, ``hash_ids``): each hash
  id names one ``block_tokens`` (512) token block *and everything before it*, so two
  requests share a KV prefix exactly as far as their leading ids agree. Its timestamps are
  quantised to about 3 s buckets; :func:`load_trace` spreads the requests of a bucket
  uniformly over it with a seeded RNG (``spread=False`` keeps the bursts). The quantum is
  detected from the data, not assumed.
* Azure LLM inference 2023 (``TIMESTAMP``, ``ContextTokens``, ``GeneratedTokens``): no
  prefixes are known, so ``hash_ids`` is empty and no prompt shares a prefix with another.

Files may be gzip-compressed (``.gz``).
"""

from __future__ import annotations

import calendar
import csv
import gzip
import io
import itertools
import json
import random
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import datetime
from pathlib import Path

__all__ = ["MOONCAKE_BLOCK_TOKENS", "Trace", "TraceError", "TraceRequest", "load_trace"]

MOONCAKE_BLOCK_TOKENS = 512
"""Tokens per Mooncake ``hash_ids`` entry (``len(hash_ids) == ceil(input_length / 512)``)."""


class TraceError(ValueError):
    """A trace file that cannot be read (the message names the file and line)."""


@dataclass(frozen=True, slots=True)
class TraceRequest:
    arrival_s: float
    """Seconds after the trace's first request."""
    input_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()
    """Prefix-block ids (Mooncake); empty when the trace carries none."""


@dataclass(frozen=True)
class Trace:
    name: str
    requests: tuple[TraceRequest, ...]
    block_tokens: int | None = None
    """Tokens per hash id, ``None`` when the trace has no prefix information."""
    bucket_s: float | None = None
    """The timestamp quantum whose buckets were spread (``None``: none was)."""

    def __len__(self) -> int:
        return len(self.requests)

    def __iter__(self) -> Iterator[TraceRequest]:
        return iter(self.requests)

    @property
    def duration_s(self) -> float:
        return self.requests[-1].arrival_s if self.requests else 0.0

    @property
    def rate_rps(self) -> float:
        """Mean arrival rate over the trace's span."""
        span = self.duration_s
        return len(self.requests) / span if span > 0 else float(len(self.requests))

    def scaled(self, rate_scale: float) -> Trace:
        """The same requests arriving ``rate_scale`` times as fast (time compressed)."""
        if rate_scale <= 0:
            raise ValueError(f"rate_scale must be > 0, got {rate_scale}")
        return replace(
            self,
            requests=tuple(replace(r, arrival_s=r.arrival_s / rate_scale) for r in self.requests),
        )

    def window(self, start_s: float, duration_s: float) -> Trace:
        """Requests arriving in ``[start_s, start_s + duration_s)``, re-based to 0."""
        chosen = [r for r in self.requests if start_s <= r.arrival_s < start_s + duration_s]
        return replace(self, requests=_rebase(chosen))

    def head(self, n: int) -> Trace:
        return replace(self, requests=self.requests[:n])


def _rebase(requests: Iterable[TraceRequest]) -> tuple[TraceRequest, ...]:
    items = sorted(requests, key=lambda r: r.arrival_s)
    if not items:
        return ()
    t0 = items[0].arrival_s
    return tuple(replace(r, arrival_s=r.arrival_s - t0) for r in items)


def _open_text(path: Path) -> io.TextIOBase:
    if path.suffix == ".gz":
        return io.TextIOWrapper(gzip.open(path, "rb"), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")


def _trace_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".csv", ".json"):
        name = name.removesuffix(suffix)
    return name


def _quantum(stamps: list[float]) -> float | None:
    """The bucket width if arrivals are quantised (most share a stamp, gaps are regular)."""
    distinct = sorted(set(stamps))
    if len(distinct) < 3 or len(distinct) > 0.5 * len(stamps):
        return None
    gaps = sorted(b - a for a, b in itertools.pairwise(distinct))
    median = gaps[len(gaps) // 2]
    if median <= 0 or gaps[0] < 0.5 * median:
        return None
    return median


def _spread(
    stamps: list[float], quantum: float | None, seed: int
) -> tuple[list[float], float | None]:
    if quantum is None:
        return stamps, None
    rng = random.Random(seed)
    return [t + rng.random() * quantum for t in stamps], quantum


def _read_mooncake(path: Path) -> list[tuple[float, int, int, tuple[int, ...]]]:
    rows = []
    with _open_text(path) as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                item = json.loads(line)
                rows.append(
                    (
                        float(item["timestamp"]) / 1000.0,
                        int(item["input_length"]),
                        int(item["output_length"]),
                        tuple(int(h) for h in item.get("hash_ids", ())),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise TraceError(f"{path}:{number}: not a Mooncake trace row ({exc})") from None
    return rows


def _parse_azure_time(text: str) -> float:
    # 7 fractional digits: more than fromisoformat takes before Python 3.11. The stamps
    # carry no zone; read as UTC, so no daylight-saving change can shift them.
    head, _, frac = text.strip().partition(".")
    stamp = calendar.timegm(datetime.strptime(head, "%Y-%m-%d %H:%M:%S").timetuple())
    return stamp + (float("0." + frac) if frac else 0.0)


def _read_azure(path: Path) -> list[tuple[float, int, int, tuple[int, ...]]]:
    rows: list[tuple[float, int, int, tuple[int, ...]]] = []
    with _open_text(path) as f:
        reader = csv.DictReader(f)
        for number, item in enumerate(reader, 2):
            try:
                rows.append(
                    (
                        _parse_azure_time(item["TIMESTAMP"]),
                        int(item["ContextTokens"]),
                        int(item["GeneratedTokens"]),
                        (),
                    )
                )
            except (ValueError, KeyError, TypeError) as exc:
                raise TraceError(f"{path}:{number}: not an Azure trace row ({exc})") from None
    return rows


def load_trace(path: str | Path, *, seed: int = 0, spread: bool = True) -> Trace:
    """Read a Mooncake JSONL or Azure CSV trace (optionally ``.gz``).

    ``spread`` spreads the requests of a quantised timestamp over its bucket with a
    ``seed``-ed RNG; within a bucket, requests are then ordered by their draw.
    """
    path = Path(path)
    if not path.is_file():
        raise TraceError(f"no trace file {path}")
    base = path.name.removesuffix(".gz")
    if base.endswith(".csv"):
        rows = _read_azure(path)
        block_tokens = None
    elif base.endswith((".jsonl", ".json")):
        rows = _read_mooncake(path)
        block_tokens = MOONCAKE_BLOCK_TOKENS if any(r[3] for r in rows) else None
    else:
        raise TraceError(f"{path}: unknown trace format (want .jsonl or .csv, optionally .gz)")
    if not rows:
        raise TraceError(f"{path}: the trace is empty")
    stamps = [r[0] for r in rows]
    quantum = _quantum(stamps) if spread else None
    stamps, bucket = _spread(stamps, quantum, seed)
    requests = [
        TraceRequest(t, max(inp, 1), max(out, 1), hashes)
        for t, (_, inp, out, hashes) in zip(stamps, rows, strict=True)
    ]
    return Trace(_trace_name(path), _rebase(requests), block_tokens, bucket)
