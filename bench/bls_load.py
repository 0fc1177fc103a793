"""Unary load through tensorrt_llm_bls: requests, levels, metric scrapes and their summary."""

from __future__ import annotations

import re
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient

MODEL = "tensorrt_llm_bls"
ENGINE = "tensorrt_llm"
RESULTS = Path(__file__).parent / "results"
REPO_ROOT = Path(__file__).resolve().parents[1]

_SAMPLE = re.compile(r"^([A-Za-z_:][A-Za-z0-9_:]*)\{([^}]*)\}\s+(\S+)\s*$")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')


@dataclass(frozen=True)
class RequestResult:
    """One unary request; times in seconds from the start of its level."""

    index: int
    sent_s: float
    done_s: float
    tokens: int
    token_source: str
    error: str | None = None

    @property
    def latency_s(self) -> float:
        return self.done_s - self.sent_s


@dataclass(frozen=True)
class LevelResult:
    """What one concurrency level measured."""

    concurrency: int
    requests: int
    errors: int
    wall_s: float
    requests_per_s: float
    tokens: int
    tokens_per_s: float
    token_source: str
    short_requests: int
    p50_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    loadavg_before: tuple[float, float, float]
    loadavg_after: tuple[float, float, float]
    bls_executions: float | None
    bls_requests: float | None
    bls_requests_per_execution: float | None
    engine_executions: float | None
    engine_requests: float | None
    engine_active_peak: float | None
    first_error: str | None
    per_request: list[dict[str, Any]]


def _tensor(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def bls_inputs(prompt: str, max_tokens: int) -> list[grpcclient.InferInput]:
    """Inputs of ``tensorrt_llm_bls`` for exactly ``max_tokens`` output tokens."""
    return [
        _tensor("text_input", np.array([[prompt]], dtype=object), "BYTES"),
        _tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        _tensor("min_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
    ]


def count_tokens(result: grpcclient.InferResult, max_tokens: int) -> tuple[int, str]:
    """Output tokens of one response and where the count came from.

    ``sequence_length`` (prompt excluded) first, then the size of ``output_ids``, else the
    requested ``max_tokens``.
    """
    lengths = result.as_numpy("sequence_length")
    if lengths is not None and lengths.size:
        return int(np.asarray(lengths).reshape(-1)[0]), "sequence_length"
    ids = result.as_numpy("output_ids")
    if ids is not None:
        return int(ids.size), "output_ids"
    return max_tokens, "assumed"


def scrape(metrics_url: str, timeout: float = 2.0) -> dict[tuple[str, str, str], float]:
    """Triton counters and engine gauges, keyed by (metric, model, request_type)."""
    wanted = ("nv_inference_exec_count", "nv_inference_count", "nv_trt_llm_request_metrics")
    try:
        with urllib.request.urlopen(metrics_url, timeout=timeout) as response:
            text = response.read().decode()
    except (urllib.error.URLError, OSError):
        return {}
    out: dict[tuple[str, str, str], float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None or match.group(1) not in wanted:
            continue
        labels = dict(_LABEL.findall(match.group(2)))
        key = (match.group(1), labels.get("model", ""), labels.get("request_type", ""))
        out[key] = out.get(key, 0.0) + float(match.group(3))
    return out


class PeakSampler:
    """Polls the metrics endpoint in a thread for the engine's peak active requests."""

    def __init__(self, metrics_url: str, interval_s: float) -> None:
        self.metrics_url = metrics_url
        self.interval_s = interval_s
        self.peak: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        key = ("nv_trt_llm_request_metrics", ENGINE, "active")
        while not self._stop.is_set():
            value = scrape(self.metrics_url).get(key)
            if value is not None:
                self.peak = value if self.peak is None else max(self.peak, value)
            self._stop.wait(self.interval_s)

    def __enter__(self) -> PeakSampler:
        if self.interval_s > 0:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)


def run_level(
    url: str,
    concurrency: int,
    indices: Sequence[int],
    make_inputs: Callable[[int], list[grpcclient.InferInput]],
    max_tokens: int,
    timeout_s: float = 300.0,
) -> tuple[list[RequestResult], float]:
    """Send ``indices`` as unary requests from ``concurrency`` closed-loop threads."""
    pending = list(reversed(indices))
    lock = threading.Lock()
    results: list[RequestResult] = []
    clients = [grpcclient.InferenceServerClient(url) for _ in range(concurrency)]
    start_gate = threading.Barrier(concurrency + 1)
    t0 = 0.0

    def worker(client: grpcclient.InferenceServerClient) -> None:
        start_gate.wait()
        while True:
            with lock:
                if not pending:
                    return
                index = pending.pop()
            inputs = make_inputs(index)
            sent = time.perf_counter()
            try:
                response = client.infer(MODEL, inputs, client_timeout=timeout_s)
                tokens, source = count_tokens(response, max_tokens)
                error = None
            except Exception as exc:
                tokens, source, error = 0, "error", str(exc)
            done = time.perf_counter()
            with lock:
                results.append(RequestResult(index, sent - t0, done - t0, tokens, source, error))

    threads = [threading.Thread(target=worker, args=(c,), daemon=True) for c in clients]
    for thread in threads:
        thread.start()
    t0 = time.perf_counter()
    start_gate.wait()
    for thread in threads:
        thread.join()
    wall = time.perf_counter() - t0
    for client in clients:
        client.close()
    return sorted(results, key=lambda r: r.sent_s), wall


def _ms(values: Sequence[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


def _delta(
    before: dict[tuple[str, str, str], float],
    after: dict[tuple[str, str, str], float],
    metric: str,
    model: str,
) -> float | None:
    key = (metric, model, "")
    if key not in before or key not in after:
        return None
    return after[key] - before[key]


def summarize(
    concurrency: int,
    results: list[RequestResult],
    wall_s: float,
    max_tokens: int,
    loadavg: tuple[tuple[float, float, float], tuple[float, float, float]],
    metrics: tuple[dict[tuple[str, str, str], float], dict[tuple[str, str, str], float]],
    engine_active_peak: float | None,
) -> LevelResult:
    """One level's figures from its requests, wall time, load and metrics deltas."""
    ok = [r for r in results if r.error is None]
    latencies = [r.latency_s for r in ok]
    tokens = sum(r.tokens for r in ok)
    sources = sorted({r.token_source for r in ok}) or ["none"]
    before, after = metrics
    bls_exec = _delta(before, after, "nv_inference_exec_count", MODEL)
    bls_count = _delta(before, after, "nv_inference_count", MODEL)
    errors = [r.error for r in results if r.error is not None]
    return LevelResult(
        concurrency=concurrency,
        requests=len(results),
        errors=len(errors),
        wall_s=wall_s,
        requests_per_s=len(ok) / wall_s,
        tokens=tokens,
        tokens_per_s=tokens / wall_s,
        token_source=",".join(sources),
        short_requests=sum(1 for r in ok if r.tokens != max_tokens),
        p50_ms=_ms(latencies, 50),
        p99_ms=_ms(latencies, 99),
        mean_ms=float(np.mean(latencies)) * 1000 if latencies else float("nan"),
        max_ms=max(latencies) * 1000 if latencies else float("nan"),
        loadavg_before=loadavg[0],
        loadavg_after=loadavg[1],
        bls_executions=bls_exec,
        bls_requests=bls_count,
        bls_requests_per_execution=(bls_count / bls_exec) if bls_exec and bls_count else None,
        engine_executions=_delta(before, after, "nv_inference_exec_count", ENGINE),
        engine_requests=_delta(before, after, "nv_inference_count", ENGINE),
        engine_active_peak=engine_active_peak,
        first_error=errors[0] if errors else None,
        per_request=[asdict(r) | {"latency_ms": r.latency_s * 1000} for r in results],
    )
