"""Timed streaming requests over Triton's gRPC API (benchmarks, calibration, canaries).

Latencies follow genai-perf's definitions: time to first token (TTFT) from sending to the
first response with tokens; inter-token latency (TPOT) as ``(e2e - ttft) / (tokens - 1)``.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio


@dataclass(frozen=True)
class RequestTiming:
    """What one streamed request took."""

    sent_at: float
    first_token_at: float | None
    finished_at: float
    tokens: int
    error: str | None = None

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_at is None else self.first_token_at - self.sent_at

    @property
    def e2e_s(self) -> float:
        return self.finished_at - self.sent_at

    @property
    def tpot_s(self) -> float | None:
        if self.first_token_at is None or self.tokens < 2:
            return None
        return (self.finished_at - self.first_token_at) / (self.tokens - 1)


def _tensor(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def text_inputs(
    prompt: str, max_tokens: int, *, min_tokens: int | None = None, stream: bool = True
) -> list[grpcclient.InferInput]:
    """Inputs of the ``ensemble`` model."""
    inputs = [
        _tensor("text_input", np.array([[prompt]], dtype=object), "BYTES"),
        _tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        _tensor("stream", np.array([[stream]], dtype=bool), "BOOL"),
    ]
    if min_tokens is not None:
        inputs.append(_tensor("min_tokens", np.array([[min_tokens]], dtype=np.int32), "INT32"))
    return inputs


def token_inputs(
    input_ids: Sequence[int],
    max_tokens: int,
    *,
    end_id: int,
    min_tokens: int | None = None,
    stream: bool = True,
) -> list[grpcclient.InferInput]:
    """Inputs of the ``tensorrt_llm`` model (token ids, no pre/post-processing)."""
    ids = np.asarray([list(input_ids)], dtype=np.int32)
    inputs = [
        _tensor("input_ids", ids, "INT32"),
        _tensor("input_lengths", np.array([[ids.shape[1]]], dtype=np.int32), "INT32"),
        _tensor("request_output_len", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        _tensor("end_id", np.array([[end_id]], dtype=np.int32), "INT32"),
        _tensor("streaming", np.array([[stream]], dtype=bool), "BOOL"),
    ]
    if min_tokens is not None:
        inputs.append(_tensor("min_tokens", np.array([[min_tokens]], dtype=np.int32), "INT32"))
    return inputs


async def stream_request(
    client: grpcaio.InferenceServerClient,
    model: str,
    inputs: list[grpcclient.InferInput],
    *,
    priority: int = 0,
    timeout_s: float = 300.0,
) -> RequestTiming:
    """Send one request on its own stream and time its responses until the final one."""

    async def one() -> AsyncIterator[dict[str, Any]]:
        yield {"model_name": model, "inputs": inputs, "priority": priority}

    sent = time.perf_counter()
    first: float | None = None
    tokens = 0
    error: str | None = None
    async for result, err in client.stream_infer(one(), stream_timeout=timeout_s):
        if err is not None:
            error = str(err)
            break
        ids = result.as_numpy("output_ids")
        count = 0 if ids is None else int(ids.size)
        if count and first is None:
            first = time.perf_counter()
        tokens += count
        final = result.get_response().parameters.get("triton_final_response")
        if final is not None and final.bool_param:
            break
    return RequestTiming(sent, first, time.perf_counter(), tokens, error)
