"""Each LLM request as Locust stats, and as a record for the report.

Per request, rows named ``<UserClass> [<tenant>]`` in Locust's stats:

* type ``openai`` / ``kserve`` / ``direct`` / ``grpc``: the request itself, its response
  time the end-to-end latency and its "content size" the output tokens (so requests/s ×
  average size is output tokens/s). A failure's error names its kind: ``RateLimited``,
  ``ServerError``, ``ClientTimeout``, ``BrokenStream``, ``ClientError``, ``ConnectionFailed``.
* type ``TTFT`` and ``TPOT``: those latencies, in milliseconds, for successful requests.
* type ``OUT_TOK/S``: the output tokens per second one user saw (1 / TPOT); its
  "response time" columns hold tokens per second, not milliseconds.

These extra rows also count in Locust's ``Aggregated`` row; read the per-type rows, or
``llm_summary.csv``, for request totals. Records travel from workers to the master with
Locust's own stats reports (``report_to_master`` / ``worker_report``); the master (or a
standalone run) writes ``llm_requests.csv``, ``llm_summary.csv`` and ``llm_meta.json``.
"""

from __future__ import annotations

import csv
import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mufleet.load.metrics import (
    RECORD_FIELDS,
    SUMMARY_FIELDS,
    ErrorKind,
    RequestRecord,
    Slo,
    summarize,
)

log = logging.getLogger("loadtests")


class LlmFailure(Exception):
    """A failed LLM request; the subclass names the kind, the message stays short so that
    Locust's failure table groups alike failures."""

    kind: ErrorKind = ErrorKind.SERVER_ERROR


class RateLimited(LlmFailure):
    kind = ErrorKind.RATE_LIMITED


class ServerError(LlmFailure):
    kind = ErrorKind.SERVER_ERROR


class ClientTimeout(LlmFailure):
    kind = ErrorKind.TIMEOUT


class BrokenStream(LlmFailure):
    kind = ErrorKind.BROKEN_STREAM


class ClientError(LlmFailure):
    kind = ErrorKind.CLIENT_ERROR


class ConnectionFailed(LlmFailure):
    kind = ErrorKind.CONNECTION


FAILURES: dict[ErrorKind, type[LlmFailure]] = {
    cls.kind: cls
    for cls in (
        RateLimited,
        ServerError,
        ClientTimeout,
        BrokenStream,
        ClientError,
        ConnectionFailed,
    )
}


def failure(kind: ErrorKind | None, detail: str) -> LlmFailure | None:
    """The exception Locust is given for a request that failed with ``kind``."""
    return None if kind is None else FAILURES[kind](detail or kind.value)


def failure_for(record: RequestRecord, detail: str = "") -> LlmFailure | None:
    return failure(record.error, detail or (str(record.status) if record.status else ""))


def stats_name(record: RequestRecord) -> str:
    return f"{record.user_class} [{record.tenant}]"


class Recorder:
    """The process's collector. ``role`` is ``local``, ``master`` or ``worker``: a worker
    ships its records to the master; the others keep them to write at the end."""

    def __init__(self) -> None:
        self.role = "local"
        self.records: list[RequestRecord] = []
        self._unsent: list[RequestRecord] = []
        self.started_s: float | None = None
        self.stopped_s: float | None = None

    def add(self, environment: Any, record: RequestRecord, detail: str = "") -> None:
        fire = environment.events.request.fire
        name = stats_name(record)
        context = {"tenant": record.tenant, "user_class": record.user_class}
        fire(
            request_type=record.endpoint,
            name=name,
            response_time=record.e2e_s * 1e3,
            response_length=record.output_tokens,
            exception=failure_for(record, detail),
            context=context,
        )
        if record.ok and record.ttft_s is not None:
            fire(
                request_type="TTFT",
                name=name,
                response_time=record.ttft_s * 1e3,
                response_length=0,
                exception=None,
                context=context,
            )
        tpot = record.tpot_s
        if tpot:
            for kind, value in (("TPOT", tpot * 1e3), ("OUT_TOK/S", 1.0 / tpot)):
                fire(
                    request_type=kind,
                    name=name,
                    response_time=value,
                    response_length=0,
                    exception=None,
                    context=context,
                )
        if self.role == "worker":
            self._unsent.append(record)
        else:
            self.records.append(record)

    def take_unsent(self) -> list[dict[str, str]]:
        rows = [r.as_row() for r in self._unsent]
        self._unsent.clear()
        return rows

    def receive(self, rows: Sequence[dict[str, str]]) -> None:
        self.records.extend(RequestRecord.from_row(row) for row in rows)

    def duration_s(self) -> float:
        if self.started_s is None:
            return 0.0
        return max((self.stopped_s or time.time()) - self.started_s, 1e-9)

    def write(self, out_dir: Path, slo: Slo, meta: dict[str, Any]) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        records = sorted(self.records, key=lambda r: r.start_s)
        with open(out_dir / "llm_requests.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=RECORD_FIELDS)
            writer.writeheader()
            writer.writerows(r.as_row() for r in records)
        rows = summarize(records, self.duration_s(), slo)
        with open(out_dir / "llm_summary.csv", "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=SUMMARY_FIELDS)
            writer.writeheader()
            writer.writerows(s.as_row() for s in rows)
        total = rows[-1]
        full = {
            **meta,
            "start_s": self.started_s,
            "stop_s": self.stopped_s,
            "slo": {"ttft_s": slo.ttft_s, "tpot_s": slo.tpot_s, "e2e_s": slo.e2e_s},
            "requests": total.requests,
        }
        (out_dir / "llm_meta.json").write_text(json.dumps(full, indent=2) + "\n")
        attained = total.slo_attainment
        log.warning(
            "LLM requests: %d (%d ok, errors %s); SLO %s attained by %s",
            total.requests,
            total.ok,
            total.errors or "none",
            slo.describe(),
            "n/a" if attained is None else f"{100 * attained:.1f}%",
        )


RECORDER = Recorder()
