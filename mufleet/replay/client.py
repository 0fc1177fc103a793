"""The replay client (each request at its arrival time over KServe gRPC streaming) and the
figures of a replay."""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio

from mufleet.replay.fleet import RouterProcess
from mufleet.replay.spec import FRONT, OUTPUTS, ReplayItem, Timing

# -- the client ---------------------------------------------------------------------------------


def _tensor(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def _inputs(prompt: str, max_tokens: int) -> list[grpcclient.InferInput]:
    return [
        _tensor("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
        _tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        _tensor("stream", np.array([[True]], dtype=bool), "BOOL"),
        _tensor("return_perf_metrics", np.array([[True]], dtype=bool), "BOOL"),
    ]


def _scalar(result: Any, name: str) -> int | None:
    value = result.as_numpy(name)
    return None if value is None or not value.size else int(value.reshape(-1)[0])


async def send_one(
    client: grpcaio.InferenceServerClient,
    prompt: str,
    prompt_tokens: int,
    max_tokens: int,
    *,
    api_key: str | None,
    index: int = 0,
    arrival_s: float = 0.0,
    block_tokens: int = 32,
    t0: float = 0.0,
    timeout_s: float = 600.0,
) -> Timing:
    """One streamed request to ``client`` (the router, or a node when ``api_key`` is None),
    timed from the moment it is sent."""

    async def one() -> AsyncIterator[dict[str, Any]]:
        yield {
            "model_name": FRONT,
            "inputs": _inputs(prompt, max_tokens),
            "outputs": [grpcclient.InferRequestedOutput(n) for n in OUTPUTS],
        }

    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    sent = time.monotonic()
    first: float | None = None
    last = sent
    tokens = 0
    reused: int | None = None
    perf: dict[str, int] = {}
    node = ""
    error: str | None = None
    try:
        async for result, err in client.stream_infer(
            one(), stream_timeout=timeout_s, headers=headers
        ):
            if err is not None:
                error = str(err)
                break
            now = time.monotonic()
            ids = result.as_numpy("output_ids")
            count = 0 if ids is None else int(ids.size)
            if count:
                first = now if first is None else first
                last = now
                tokens += count
            params = result.get_response().parameters
            if "mufleet_node" in params:
                node = params["mufleet_node"].string_param
            reused = _scalar(result, "kv_cache_reused_blocks") if reused is None else reused
            for name in ("arrival", "first_scheduled", "first_token", "last_token"):
                value = _scalar(result, f"{name}_time_ns")
                if value:
                    perf[name] = value
    except Exception as exc:  # every failure is a result
        error = f"{type(exc).__name__}: {exc}"
    engine: dict[str, float] = {}
    if {"arrival", "first_token"} <= perf.keys():
        arrival = perf["arrival"] / 1e9
        engine["to_engine_s"] = arrival - sent
        engine["ttft_s"] = perf["first_token"] / 1e9 - arrival
        if first is not None:
            engine["from_engine_s"] = first - perf["first_token"] / 1e9
        if "first_scheduled" in perf:
            engine["queue_s"] = perf["first_scheduled"] / 1e9 - arrival
        if "last_token" in perf and tokens > 1:
            engine["tpot_s"] = (perf["last_token"] - perf["first_token"]) / 1e9 / (tokens - 1)
    if error is None and tokens != max_tokens:
        error = f"{tokens} tokens of {max_tokens}"
    cached = min((reused or 0) * block_tokens, max(prompt_tokens - 1, 0))
    return Timing(
        index=index,
        arrival_s=arrival_s,
        prompt_tokens=prompt_tokens,
        output_tokens=tokens,
        cached_tokens=cached,
        ttft_s=None if first is None else first - sent,
        tpot_s=(last - first) / (tokens - 1) if first is not None and tokens > 1 else None,
        node=node,
        error=error,
        lag_s=sent - t0 - arrival_s if t0 else 0.0,
        engine=engine,
    )


async def _replay(
    items: Sequence[ReplayItem], grpc_url: str, api_key: str, block_tokens: int, lead_s: float
) -> list[Timing]:
    client = grpcaio.InferenceServerClient(grpc_url)
    try:
        t0 = time.monotonic() + lead_s

        async def due(item: ReplayItem) -> Timing:
            await asyncio.sleep(max(t0 + item.arrival_s - time.monotonic(), 0.0))
            return await send_one(
                client,
                item.prompt,
                item.prompt_tokens,
                item.output_tokens,
                api_key=api_key,
                index=item.index,
                arrival_s=item.arrival_s,
                block_tokens=block_tokens,
                t0=t0,
            )

        return list(await asyncio.gather(*(due(item) for item in items)))
    finally:
        await client.close()


def replay(
    items: Sequence[ReplayItem],
    router: RouterProcess,
    block_tokens: int = 32,
    lead_s: float = 0.5,
) -> list[Timing]:
    """Send every item at its arrival time (wall clock) to the router; every request's
    :class:`Timing`. ``block_tokens`` is the engines' KV block (reused blocks → tokens)."""
    return asyncio.run(_replay(items, router.grpc, router.api_key, block_tokens, lead_s))


# -- figures --------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else math.nan


def figures(timings: Sequence[Timing]) -> dict[str, Any]:
    """Percentiles (ms), KV hit rate and counts of one side's requests."""
    ok = [t for t in timings if t.ok]
    ttft = [t.ttft_s for t in ok if t.ttft_s is not None]
    tpot = [t.tpot_s for t in ok if t.tpot_s is not None]
    prompt = sum(t.prompt_tokens for t in ok)
    out: dict[str, Any] = {
        "requests": len(timings),
        "completed": len(ok),
        "errors": sorted({t.error for t in timings if t.error})[:5],
        "kv_hit_rate": sum(t.cached_tokens for t in ok) / prompt if prompt else 0.0,
        "prompt_tokens": prompt,
        "cached_tokens": sum(t.cached_tokens for t in ok),
        "output_tokens": sum(t.output_tokens for t in ok),
        "requests_per_node": sorted(
            (sum(1 for t in ok if t.node == n) for n in {t.node for t in ok}), reverse=True
        ),
    }
    for q in (50, 90, 99):
        out[f"ttft_p{q}_ms"] = 1000 * _pct(ttft, q)
        out[f"tpot_p{q}_ms"] = 1000 * _pct(tpot, q)
    out["ttft_mean_ms"] = 1000 * float(np.mean(ttft)) if ttft else math.nan
    out["tpot_mean_ms"] = 1000 * float(np.mean(tpot)) if tpot else math.nan
    engine = [t.engine for t in ok if t.engine]
    if engine:
        for key in ("to_engine_s", "queue_s", "ttft_s", "from_engine_s", "tpot_s"):
            values = [e[key] for e in engine if key in e]
            name = key.removesuffix("_s")
            for q in (50, 90, 99):
                out[f"engine_{name}_p{q}_ms"] = 1000 * _pct(values, q)
        lag = [t.lag_s for t in timings]
        out["client_lag_p50_ms"] = 1000 * _pct(lag, 50)
        out["client_lag_max_ms"] = 1000 * max(lag)
    return out


def timings_json(timings: Sequence[Timing]) -> list[dict[str, Any]]:
    return [asdict(t) for t in timings]
