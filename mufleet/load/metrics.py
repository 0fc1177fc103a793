"""LLM request records, their metrics (genai-perf's definitions), errors by kind and SLOs.

Per request (:class:`RequestRecord`):

* **TTFT**: from sending the request to the first response that carries output text
  (empty first chunks, such as OpenAI's role-only delta, do not count).
* **E2E**: from sending the request to its last response.
* **TPOT** (genai-perf's inter-token latency): ``(E2E - TTFT) / (output tokens - 1)``,
  defined for two output tokens or more.
* **Output tokens/s per request**: ``1 / TPOT``, the decode speed one user sees.

Over a run: output tokens/s is the output tokens of the successful requests over the run's
duration; request/s likewise. A request *attains* the SLO when it succeeded and each given
threshold holds; a failed request (429 included) is a miss, so attainment is goodput over
all requests sent.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from enum import Enum
from typing import Any


class ErrorKind(str, Enum):
    """Why a request failed, kept apart because each calls for a different response."""

    RATE_LIMITED = "rate_limited"
    """429: admission shed the request (the router doing its job under overload)."""
    SERVER_ERROR = "server_error"
    """5xx: the service failed the request."""
    TIMEOUT = "timeout"
    """The client gave up waiting, or a deadline passed."""
    BROKEN_STREAM = "broken_stream"
    """The response began but did not end properly (cut, or an error event mid-way)."""
    CLIENT_ERROR = "client_error"
    """Another 4xx: the load test sent something the service refuses."""
    CONNECTION = "connection"
    """No response at all: refused or reset before the status line."""


ERROR_KINDS: tuple[ErrorKind, ...] = tuple(ErrorKind)


def classify_status(status: int) -> ErrorKind | None:
    """The kind of an HTTP status (``None``: not an error)."""
    if status < 400:
        return None
    if status == 429:
        return ErrorKind.RATE_LIMITED
    if status == 408:
        return ErrorKind.TIMEOUT
    if status >= 500:
        return ErrorKind.SERVER_ERROR
    return ErrorKind.CLIENT_ERROR


_GRPC_KINDS = {
    "RESOURCE_EXHAUSTED": ErrorKind.RATE_LIMITED,
    "DEADLINE_EXCEEDED": ErrorKind.TIMEOUT,
    "UNAVAILABLE": ErrorKind.SERVER_ERROR,
    "INTERNAL": ErrorKind.SERVER_ERROR,
    "UNKNOWN": ErrorKind.SERVER_ERROR,
    "ABORTED": ErrorKind.SERVER_ERROR,
    "DATA_LOSS": ErrorKind.SERVER_ERROR,
    "CANCELLED": ErrorKind.BROKEN_STREAM,
}
_STATUS_IN_MESSAGE = re.compile(r"^\s*\[(\d{3})\]")
"""The router's stream errors start with the HTTP status: ``[429] …``."""


def classify_grpc(code: str | None, message: str = "") -> ErrorKind:
    """The kind of a gRPC failure: its status code name (``StatusCode.X`` or ``X``), else
    the ``[NNN]`` status the router puts at the head of an in-stream error message."""
    found = _STATUS_IN_MESSAGE.match(message or "")
    if found:
        kind = classify_status(int(found.group(1)))
        if kind is not None:
            return kind
    name = (code or "").rsplit(".", 1)[-1].upper()
    if name in _GRPC_KINDS:
        return _GRPC_KINDS[name]
    if name:
        return ErrorKind.CLIENT_ERROR
    return ErrorKind.SERVER_ERROR


@dataclass(frozen=True)
class RequestRecord:
    """One LLM request as the load generator saw it."""

    start_s: float
    """Wall-clock time (epoch seconds) the request was sent."""
    user_class: str
    tenant: str
    endpoint: str
    """Front door: ``openai``, ``kserve``, ``direct`` (a Triton node) or ``grpc``."""
    e2e_s: float
    ttft_s: float | None = None
    output_tokens: int = 0
    input_tokens: int | None = None
    error: ErrorKind | None = None
    status: int | None = None
    node: str | None = None
    """The node that served it, where the router says (``x-mufleet-node``)."""
    lag_s: float = 0.0
    """Trace replay: how late the request was sent against its scheduled arrival."""

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def end_s(self) -> float:
        return self.start_s + self.e2e_s

    @property
    def tpot_s(self) -> float | None:
        return tpot(self.e2e_s, self.ttft_s, self.output_tokens) if self.ok else None

    def as_row(self) -> dict[str, str]:
        row = {}
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, ErrorKind):
                value = value.value
            row[f.name] = "" if value is None else str(value)
        return row

    @classmethod
    def from_row(cls, row: Mapping[str, str]) -> RequestRecord:
        def opt_float(key: str) -> float | None:
            return float(row[key]) if row.get(key) else None

        def opt_int(key: str) -> int | None:
            return int(row[key]) if row.get(key) else None

        return cls(
            start_s=float(row["start_s"]),
            user_class=row["user_class"],
            tenant=row["tenant"],
            endpoint=row["endpoint"],
            e2e_s=float(row["e2e_s"]),
            ttft_s=opt_float("ttft_s"),
            output_tokens=int(row.get("output_tokens") or 0),
            input_tokens=opt_int("input_tokens"),
            error=ErrorKind(row["error"]) if row.get("error") else None,
            status=opt_int("status"),
            node=row.get("node") or None,
            lag_s=float(row.get("lag_s") or 0.0),
        )


RECORD_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(RequestRecord))


def tpot(e2e_s: float, ttft_s: float | None, output_tokens: int) -> float | None:
    """genai-perf's inter-token latency: the decode time per token after the first."""
    if ttft_s is None or output_tokens < 2:
        return None
    return max(e2e_s - ttft_s, 0.0) / (output_tokens - 1)


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0–100) by linear interpolation between closest ranks
    (numpy's default); ``None`` for no values."""
    if not 0 <= q <= 100:
        raise ValueError(f"q must lie in [0, 100], got {q}")
    if not values:
        return None
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


@dataclass(frozen=True)
class Slo:
    """Per-request thresholds (seconds); ``None`` leaves a metric unchecked."""

    ttft_s: float | None = None
    tpot_s: float | None = None
    e2e_s: float | None = None

    def miss(self, record: RequestRecord) -> str | None:
        """Why ``record`` misses the SLO (``error``, ``ttft``, ``tpot``, ``e2e``), or
        ``None`` when it attains it."""
        if not record.ok:
            return "error"
        if self.ttft_s is not None and (record.ttft_s is None or record.ttft_s > self.ttft_s):
            return "ttft"
        value = record.tpot_s
        if self.tpot_s is not None and value is not None and value > self.tpot_s:
            return "tpot"
        if self.e2e_s is not None and record.e2e_s > self.e2e_s:
            return "e2e"
        return None

    def describe(self) -> str:
        parts = [
            f"{name} ≤ {value * 1e3:g} ms"
            for name, value in (("TTFT", self.ttft_s), ("TPOT", self.tpot_s), ("E2E", self.e2e_s))
            if value is not None
        ]
        return ", ".join(parts) or "none"


def attainment(records: Iterable[RequestRecord], slo: Slo) -> float | None:
    """Share of ``records`` that attain ``slo`` (``None`` for no records)."""
    items = list(records)
    if not items:
        return None
    return sum(slo.miss(r) is None for r in items) / len(items)


PERCENTILES = (50, 90, 99)


def _round(value: float | None) -> float | str:
    return "" if value is None else round(value, 3)


@dataclass(frozen=True)
class Summary:
    """One row of ``llm_summary.csv``: a (user class, tenant) group or the whole run."""

    user_class: str
    tenant: str
    requests: int
    ok: int
    errors: dict[str, int] = field(default_factory=dict)
    ttft_ms: dict[int, float | None] = field(default_factory=dict)
    tpot_ms: dict[int, float | None] = field(default_factory=dict)
    e2e_ms: dict[int, float | None] = field(default_factory=dict)
    output_tokens: int = 0
    request_rate: float = 0.0
    output_token_rate: float = 0.0
    per_user_token_rate: float | None = None
    slo_attainment: float | None = None

    def as_row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "user_class": self.user_class,
            "tenant": self.tenant,
            "requests": self.requests,
            "ok": self.ok,
        }
        for kind in ERROR_KINDS:
            row[f"errors_{kind.value}"] = self.errors.get(kind.value, 0)
        for name, values in (("ttft", self.ttft_ms), ("tpot", self.tpot_ms), ("e2e", self.e2e_ms)):
            for q in PERCENTILES:
                row[f"{name}_p{q}_ms"] = _round(values.get(q))
        row["output_tokens"] = self.output_tokens
        row["requests_per_s"] = _round(self.request_rate)
        row["output_tokens_per_s"] = _round(self.output_token_rate)
        row["output_tokens_per_s_per_user"] = _round(self.per_user_token_rate)
        row["slo_attainment_pct"] = _round(
            None if self.slo_attainment is None else 100 * self.slo_attainment
        )
        return row


SUMMARY_FIELDS: tuple[str, ...] = tuple(Summary("", "", 0, 0).as_row())


def _pcts(values: Sequence[float]) -> dict[int, float | None]:
    return {q: (None if (p := percentile(values, q)) is None else p * 1e3) for q in PERCENTILES}


def summarize_group(
    user_class: str,
    tenant: str,
    records: Sequence[RequestRecord],
    duration_s: float,
    slo: Slo,
) -> Summary:
    good = [r for r in records if r.ok]
    errors: dict[str, int] = {}
    for r in records:
        if r.error is not None:
            errors[r.error.value] = errors.get(r.error.value, 0) + 1
    tpots = [t for r in good if (t := r.tpot_s) is not None]
    tokens = sum(r.output_tokens for r in good)
    span = max(duration_s, 1e-9)
    mean_tpot = sum(tpots) / len(tpots) if tpots else None
    return Summary(
        user_class=user_class,
        tenant=tenant,
        requests=len(records),
        ok=len(good),
        errors=errors,
        ttft_ms=_pcts([r.ttft_s for r in good if r.ttft_s is not None]),
        tpot_ms=_pcts(tpots),
        e2e_ms=_pcts([r.e2e_s for r in good]),
        output_tokens=tokens,
        request_rate=len(good) / span,
        output_token_rate=tokens / span,
        per_user_token_rate=1.0 / mean_tpot if mean_tpot else None,
        slo_attainment=attainment(records, slo),
    )


ALL = "all"


def summarize(records: Sequence[RequestRecord], duration_s: float, slo: Slo) -> list[Summary]:
    """One :class:`Summary` per (user class, tenant), sorted, then one for all requests."""
    groups: dict[tuple[str, str], list[RequestRecord]] = {}
    for r in records:
        groups.setdefault((r.user_class, r.tenant), []).append(r)
    rows = [
        summarize_group(cls, tenant, items, duration_s, slo)
        for (cls, tenant), items in sorted(groups.items())
    ]
    rows.append(summarize_group(ALL, ALL, records, duration_s, slo))
    return rows
