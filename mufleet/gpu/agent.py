"""The GPU agent: polls a node's GPU telemetry and serves ``/metrics`` and ``/health``.

One thread polls every ``interval_s``; a threaded HTTP server answers from the latest poll,
so a slow scrape never delays a poll and a wedged telemetry source (NVML calls can hang on a
wedged GPU) shows as a stale verdict — ``/health`` turns ``warn`` once the last poll is older
than ``stale_after_s`` — instead of a hung endpoint. ``/health`` always answers 200: the
status is in the body. A telemetry failure is a ``warn`` verdict naming the error.

Run it with ``python -m mufleet.gpu.agent gpu-agent --node NAME …`` (or ``mufleet
gpu-agent`` once the main command line registers ``mufleet.gpu.cli.add_commands``).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from mufleet.gpu.telemetry import CLOCK_EVENT_REASONS, GpuSample, GpuTelemetry
from mufleet.gpu.verdict import STATUSES, GpuHealthJudge, GpuVerdict

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class _Poll:
    """What one poll saw and concluded."""

    samples: tuple[GpuSample, ...]
    verdict: GpuVerdict
    latched: dict[int, tuple[int, ...]]
    xid_counts: dict[tuple[int, int], int]
    failed_polls: int


class GpuAgent:
    """Polls ``telemetry`` for node ``node`` and serves what it concludes over HTTP."""

    def __init__(
        self,
        telemetry: GpuTelemetry,
        node: str,
        *,
        judge: GpuHealthJudge | None = None,
        host: str = "127.0.0.1",
        port: int = 9400,
        interval_s: float = 1.0,
        stale_after_s: float | None = None,
        source: str = "",
        clock: Callable[[], float] = time.time,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.telemetry = telemetry
        self.node = node
        self.judge = judge or GpuHealthJudge()
        self.host = host
        self.interval_s = interval_s
        self.stale_after_s = (
            stale_after_s if stale_after_s is not None else max(10.0, 5 * interval_s)
        )
        self.source = source
        self._clock = clock
        self._requested_port = port
        self._lock = threading.Lock()
        self._poll_lock = threading.Lock()
        self._xid_counts: Counter[tuple[int, int]] = Counter()
        self._failed_polls = 0
        self._last: _Poll | None = None
        self._stop = threading.Event()
        self._server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.registry = CollectorRegistry()
        self.registry.register(_Collector(self))

    # --- polling ---------------------------------------------------------------------------

    def poll_once(self) -> GpuVerdict:
        """Read the telemetry once and judge it; never raises for a telemetry failure."""
        with self._poll_lock:
            errors: list[str] = []
            samples: list[GpuSample] = []
            events = []
            try:
                samples = self.telemetry.sample()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            try:
                events = self.telemetry.xid_events()
            except Exception as exc:
                errors.append(f"{type(exc).__name__}: {exc}")
            now = self._clock()
            verdict = self.judge.judge(samples, events, now, errors)
            with self._lock:
                previous = self._last.verdict.status if self._last else None
                self._xid_counts.update((e.gpu_index, e.xid) for e in events)
                self._failed_polls += bool(errors)
                self._last = _Poll(
                    samples=tuple(samples),
                    verdict=verdict,
                    latched=self.judge.latched(),
                    xid_counts=dict(self._xid_counts),
                    failed_polls=self._failed_polls,
                )
        if verdict.status != previous:
            log.warning(
                "%s: GPU health %s -> %s: %s",
                self.node,
                previous or "start",
                verdict.status,
                "; ".join(verdict.reasons) or "ok",
            )
        return verdict

    def _poll_loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                self.poll_once()
            except Exception:  # a judge bug must not end the loop silently
                log.exception("%s: GPU poll failed", self.node)

    # --- what is served --------------------------------------------------------------------

    def _current(self) -> _Poll:
        with self._lock:
            last = self._last
        if last is None:
            raise RuntimeError("the agent has not polled yet; call start() or poll_once()")
        return last

    def verdict(self) -> GpuVerdict:
        """The latest verdict, turned ``warn`` when it is older than ``stale_after_s``."""
        verdict = self._current().verdict
        age = self._clock() - verdict.at
        if age <= self.stale_after_s or verdict.status == "drain":
            return verdict
        reasons = (f"telemetry stale: last poll {age:.0f} s ago", *verdict.reasons)
        return GpuVerdict("warn", verdict.capacity_factor, reasons, verdict.at, verdict.gpus)

    def health(self) -> dict[str, Any]:
        """The ``/health`` body."""
        poll = self._current()
        verdict = self.verdict()
        gpus = []
        sampled = {s.index: s for s in poll.samples}
        for index in sorted(set(sampled) | set(verdict.gpus)):
            gpu_verdict = verdict.gpus.get(index)
            entry: dict[str, Any] = {"index": index}
            if index in sampled:
                entry.update(_sample_json(sampled[index]))
            entry["status"] = gpu_verdict.status if gpu_verdict else "healthy"
            entry["capacity_factor"] = gpu_verdict.capacity_factor if gpu_verdict else 1.0
            entry["reasons"] = list(gpu_verdict.reasons) if gpu_verdict else []
            entry["latched_xids"] = list(poll.latched.get(index, ()))
            gpus.append(entry)
        return {
            "node": self.node,
            "status": verdict.status,
            "capacity_factor": verdict.capacity_factor,
            "reasons": list(verdict.reasons),
            "at": verdict.at,
            "source": self.source,
            "gpus": gpus,
        }

    def metrics_text(self) -> bytes:
        return generate_latest(self.registry)

    # --- lifecycle -------------------------------------------------------------------------

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("the agent is not serving")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> GpuAgent:
        """Poll once (so the first answer is real), then serve and keep polling."""
        self.poll_once()
        self._server = ThreadingHTTPServer((self.host, self._requested_port), _handler(self))
        self._server.daemon_threads = True
        self._threads = [
            threading.Thread(target=self._server.serve_forever, name="gpu-agent-http", daemon=True),
            threading.Thread(target=self._poll_loop, name="gpu-agent-poll", daemon=True),
        ]
        for thread in self._threads:
            thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop serving and polling and close the telemetry; idempotent."""
        self._stop.set()
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        for thread in self._threads:
            thread.join(timeout_s)
        self._threads = []
        self.telemetry.close()


def _sample_json(sample: GpuSample) -> dict[str, Any]:
    data = asdict(sample)
    reasons = data.pop("clock_event_reasons")
    data["clock_event_reasons"] = sorted(reasons) if reasons is not None else None
    data["query_errors"] = list(sample.query_errors)
    data.pop("index")
    return data


def _handler(agent: GpuAgent) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/metrics":
                self._send(200, CONTENT_TYPE_LATEST, agent.metrics_text())
            elif path == "/health":
                body = json.dumps(agent.health()).encode()
                self._send(200, "application/json", body)
            else:
                self._send(
                    404, "text/plain; charset=utf-8", b"not found: try /health or /metrics\n"
                )

        def _send(self, status: int, content_type: str, body: bytes) -> None:
            self.send_response(status)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            """Scrapes every second would flood the log; errors surface in /health."""

    return Handler


class _Collector:
    """Builds every family from the latest poll at scrape time, so a GPU reason that is no
    longer active reads 0 rather than lingering."""

    def __init__(self, agent: GpuAgent) -> None:
        self.agent = agent

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> Iterator[Metric]:
        poll = self.agent._current()
        verdict = self.agent.verdict()
        yield from _gpu_families(poll.samples)
        xids = CounterMetricFamily(
            "mufleet_gpu_xid_events",
            "XID errors seen since the agent started",
            labels=["gpu", "xid"],
        )
        for (gpu, xid), count in sorted(poll.xid_counts.items()):
            xids.add_metric([str(gpu), str(xid)], count)
        yield xids
        latched = GaugeMetricFamily(
            "mufleet_gpu_xid_latched", "1 while a fatal XID is latched", labels=["gpu", "xid"]
        )
        for gpu, codes in sorted(poll.latched.items()):
            for xid in codes:
                latched.add_metric([str(gpu), str(xid)], 1)
        yield latched
        status = GaugeMetricFamily(
            "mufleet_gpu_health_status", "1 for the node's current GPU health", labels=["status"]
        )
        for name in STATUSES:
            status.add_metric([name], 1.0 if verdict.status == name else 0.0)
        yield status
        yield GaugeMetricFamily(
            "mufleet_gpu_capacity_factor",
            "share of calibrated capacity the node's GPUs deliver",
            value=verdict.capacity_factor,
        )
        yield GaugeMetricFamily(
            "mufleet_gpu_last_poll_timestamp_seconds", "when telemetry was read", value=verdict.at
        )
        yield CounterMetricFamily(
            "mufleet_gpu_telemetry_errors", "polls whose telemetry failed", value=poll.failed_polls
        )


# (name, help, sample attribute) of the per-GPU gauges.
_GAUGES: tuple[tuple[str, str, str], ...] = (
    ("mufleet_gpu_temperature_celsius", "GPU temperature", "temperature_c"),
    ("mufleet_gpu_slowdown_temperature_celsius", "slowdown threshold", "slowdown_temp_c"),
    ("mufleet_gpu_shutdown_temperature_celsius", "shutdown threshold", "shutdown_temp_c"),
    ("mufleet_gpu_power_watts", "power draw", "power_w"),
    ("mufleet_gpu_power_limit_watts", "enforced power limit", "power_limit_w"),
    ("mufleet_gpu_sm_clock_mhz", "SM clock", "sm_clock_mhz"),
    ("mufleet_gpu_max_sm_clock_mhz", "maximum SM clock", "max_sm_clock_mhz"),
    ("mufleet_gpu_utilization_percent", "GPU utilisation", "utilization_pct"),
    ("mufleet_gpu_memory_used_bytes", "framebuffer memory used", "memory_used_bytes"),
    ("mufleet_gpu_memory_total_bytes", "framebuffer memory", "memory_total_bytes"),
    (
        "mufleet_gpu_retired_pages_pending",
        "1 while a page retirement waits",
        "retired_pages_pending",
    ),
    ("mufleet_gpu_remapped_rows_pending", "1 while a row remap waits", "remapped_rows_pending"),
    ("mufleet_gpu_remapped_rows_failure", "1 once a row remap failed", "remapped_rows_failure"),
)


def _gpu_families(samples: Sequence[GpuSample]) -> Iterator[Metric]:
    info = GaugeMetricFamily("mufleet_gpu_info", "GPU identity", labels=["gpu", "uuid", "name"])
    for s in samples:
        info.add_metric([str(s.index), s.uuid or "", s.name or ""], 1)
    yield info
    for name, help_text, attr in _GAUGES:
        family = GaugeMetricFamily(name, help_text, labels=["gpu"])
        for s in samples:
            value = getattr(s, attr)
            if value is not None:
                family.add_metric([str(s.index)], float(value))
        yield family
    reasons = GaugeMetricFamily(
        "mufleet_gpu_clock_event_active",
        "1 while a clock event reason holds",
        labels=["gpu", "reason"],
    )
    ecc = GaugeMetricFamily(
        "mufleet_gpu_ecc_errors", "volatile ECC errors since reset", labels=["gpu", "type"]
    )
    retired = GaugeMetricFamily(
        "mufleet_gpu_retired_pages", "retired pages", labels=["gpu", "cause"]
    )
    replays = CounterMetricFamily("mufleet_gpu_pcie_replays", "PCIe replays", labels=["gpu"])
    for s in samples:
        gpu = str(s.index)
        if s.clock_event_reasons is not None:
            for reason in sorted(set(CLOCK_EVENT_REASONS) | s.clock_event_reasons):
                reasons.add_metric([gpu, reason], 1.0 if reason in s.clock_event_reasons else 0.0)
        for kind, count in (
            ("corrected", s.ecc_volatile_corrected),
            ("uncorrected", s.ecc_volatile_uncorrected),
        ):
            if count is not None:
                ecc.add_metric([gpu, kind], count)
        for cause, count in (("sbe", s.retired_pages_sbe), ("dbe", s.retired_pages_dbe)):
            if count is not None:
                retired.add_metric([gpu, cause], count)
        if s.pcie_replay_count is not None:
            replays.add_metric([gpu], s.pcie_replay_count)
    yield from (reasons, ecc, retired, replays)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m mufleet.gpu.agent {gpu-agent,gpu-fault} …``: the same commands as the
    main command line's."""
    from mufleet.gpu.cli import build_parser

    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
