"""Requests shaped as the TensorRT-LLM backend's own example clients send them.

``end_to_end_grpc_client.py`` (text to ``ensemble`` or ``tensorrt_llm_bls``, always over the
gRPC stream API) and ``inflight_batcher_llm_client.py`` (token ids straight to
``tensorrt_llm``), from ``triton_backend/inflight_batcher_llm/client/`` in TensorRT-LLM:
the same tensor names, numpy dtypes, shapes and defaults, each with a leading batch
dimension.
"""

from __future__ import annotations

import queue
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient


def tensor(name: str, value: np.ndarray) -> grpcclient.InferInput:
    dtype = {
        np.dtype(np.int32): "INT32",
        np.dtype(np.uint64): "UINT64",
        np.dtype(np.float32): "FP32",
        np.dtype(np.bool_): "BOOL",
        np.dtype(np.object_): "BYTES",
        np.dtype(np.float16): "FP16",
    }[value.dtype]
    t = grpcclient.InferInput(name, list(value.shape), dtype)
    t.set_data_from_numpy(value)
    return t


def end_to_end_inputs(
    prompts: Sequence[str],
    max_tokens: int = 100,
    *,
    stream: bool = False,
    exclude_input_in_output: bool = False,
    **extra: np.ndarray,
) -> list[grpcclient.InferInput]:
    """``end_to_end_grpc_client``'s default tensors (batched as ``--batch-inputs`` does)."""
    rows = len(prompts)
    values: dict[str, np.ndarray] = {
        "text_input": np.array([[p] for p in prompts], dtype=object),
        "max_tokens": np.full((rows, 1), max_tokens, dtype=np.int32),
        "stream": np.full((rows, 1), stream, dtype=bool),
        "beam_width": np.ones((rows, 1), dtype=np.int32),
        "temperature": np.ones((rows, 1), dtype=np.float32),
        "exclude_input_in_output": np.full((rows, 1), exclude_input_in_output, dtype=bool),
        **extra,
    }
    return [tensor(name, value) for name, value in values.items()]


def inflight_batcher_inputs(
    input_ids: Sequence[int],
    request_output_len: int = 16,
    *,
    streaming: bool = False,
    end_id: int = 2,
    pad_id: int = 2,
    top_k: int = 1,
    top_p: float = 0.0,
    **extra: np.ndarray,
) -> list[grpcclient.InferInput]:
    """``inflight_batcher_llm_client``'s default tensors for one prompt of token ids."""
    values: dict[str, np.ndarray] = {
        "input_ids": np.array([list(input_ids)], dtype=np.int32),
        "input_lengths": np.array([[len(input_ids)]], dtype=np.int32),
        "request_output_len": np.array([[request_output_len]], dtype=np.int32),
        "beam_width": np.array([[1]], dtype=np.int32),
        "temperature": np.array([[1.0]], dtype=np.float32),
        "streaming": np.array([[streaming]], dtype=bool),
        "end_id": np.array([[end_id]], dtype=np.int32),
        "pad_id": np.array([[pad_id]], dtype=np.int32),
        "runtime_top_k": np.array([[top_k]], dtype=np.int32),
        "runtime_top_p": np.array([[top_p]], dtype=np.float32),
        **extra,
    }
    return [tensor(name, value) for name, value in values.items()]


@dataclass
class StreamResult:
    """Every response of one request on the gRPC stream, or the error that ended it."""

    responses: list[Any] = field(default_factory=list)
    error: str | None = None

    def outputs(self, name: str) -> list[np.ndarray]:
        return [r.as_numpy(name) for r in self.responses if r.as_numpy(name) is not None]

    def texts(self) -> list[bytes]:
        return [t.reshape(-1)[0] for t in self.outputs("text_output")]


def stream_call(
    url: str,
    model: str,
    inputs: list[grpcclient.InferInput],
    outputs: Sequence[str] | None = None,
    timeout: float = 120.0,
) -> StreamResult:
    """One request over the gRPC stream API, as ``end_to_end_grpc_client`` makes every call."""
    client = grpcclient.InferenceServerClient(url)
    events: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)))
    result = StreamResult()
    try:
        requested = [grpcclient.InferRequestedOutput(n) for n in outputs] if outputs else None
        client.async_stream_infer(
            model, inputs, outputs=requested, enable_empty_final_response=True
        )
        while True:
            response, error = events.get(timeout=timeout)
            if error is not None:
                result.error = str(error)
                break
            result.responses.append(response)
            params = response.get_response().parameters
            if params["triton_final_response"].bool_param:
                break
    finally:
        client.stop_stream()
        client.close()
    return result
