"""The continuation request: the rest of a stream, for another node's ``tensorrt_llm``.

A text front's request goes through the preprocessing model's own code
(:func:`python_backends.preprocess.preprocess`, the same tokenizer directory) for stop,
bad and bias words and the end and pad ids, and its sampling inputs are renamed by the
contract's routing maps, exactly as the ensemble and the BLS model route them. An
engine-front request keeps every input. Then the prompt grows by the tokens the client
has, and the budget and ``min_tokens`` shrink by as many.
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2

from python_backends.contract import (
    MODELS,
    PREPROCESSING_FROM_FRONT,
    TRTLLM_FROM_FRONT,
    TRTLLM_FROM_PREPROCESSING,
    routed_inputs,
)
from python_backends.preprocess import preprocess
from python_backends.text_codec import TextEncoder
from router.pipeline import Job
from router.wire import build_request, read_input

ENGINE_MODEL = "tensorrt_llm"
TEXT_FRONTS = ("ensemble", "tensorrt_llm_bls")
ENGINE_INPUTS = frozenset(MODELS[ENGINE_MODEL].input_names)
ADDED_OUTPUTS_PARAMETER = "mufleet_added_outputs"
"""Request parameter: the outputs the router added to the client's list (comma-separated),
so that they are stripped from the client's responses whatever the order of the calls."""


def input_int(request: service_pb2.ModelInferRequest, name: str, default: int) -> int:
    """The first value of input ``name`` as an int (``default`` when absent or empty)."""
    value = read_input(request, name)
    if value is None or not np.asarray(value).size:
        return default
    return int(np.asarray(value).reshape(-1)[0])


def prompt_ids(job: Job) -> list[int]:
    """The prompt's token ids: the router's tokenization for a text front (the nodes'
    preprocessing tokenizes alike), ``input_ids`` up to ``input_lengths`` for the engine."""
    if job.request.model_name in TEXT_FRONTS:
        return list(job.prompt_ids)
    ids = np.asarray(read_input(job.request, "input_ids")).reshape(-1)
    length = input_int(job.request, "input_lengths", ids.size)
    return [int(t) for t in ids[:length]]


@lru_cache(maxsize=8)
def encoder_for(tokenizer_dir: Path, max_context: int) -> TextEncoder:
    """The preprocessing model's encoder for a served model (special tokens added)."""
    return TextEncoder(tokenizer_dir, max_context=max_context, add_special_tokens=True)


def _batch_row(value: np.ndarray) -> np.ndarray:
    """A front input as the engine takes it: ``[1, ...]`` (BLS scalars arrive as ``[1]``)."""
    arr = np.asarray(value)
    return arr.reshape(1, -1) if arr.ndim < 2 else arr


def _text_front_inputs(job: Job) -> dict[str, np.ndarray]:
    """What the ensemble (or BLS) hands ``tensorrt_llm`` for this request."""
    request = job.request
    front = request.model_name
    given = {t.name: v for t in request.inputs if (v := read_input(request, t.name)) is not None}
    pre_inputs = {
        target: np.asarray(given[source])
        for target, source in routed_inputs(front, PREPROCESSING_FROM_FRONT).items()
        if source in given
    }
    encoder = encoder_for(Path(job.model.config.tokenizer_dir), job.model.max_context)
    preprocessed = preprocess(pre_inputs, encoder)
    inputs = {
        target: preprocessed[source]
        for target, source in TRTLLM_FROM_PREPROCESSING.items()
        if source in preprocessed and target in ENGINE_INPUTS
    }
    for target, source in routed_inputs(front, TRTLLM_FROM_FRONT).items():
        if source in given:
            inputs[target] = _batch_row(given[source])
    return inputs


def continuation_request(
    job: Job, generated: Sequence[int], remaining: int
) -> service_pb2.ModelInferRequest:
    """The ``tensorrt_llm`` request that generates the rest of ``job``'s stream.

    Same request id and request parameters (priority, ``priority_level``, timeout …) as
    the original; streamed; ``exclude_input_in_output`` so that no response repeats the
    (longer) prompt.
    """
    request = job.request
    if request.model_name in TEXT_FRONTS:
        inputs = _text_front_inputs(job)
    else:
        inputs = {
            t.name: v for t in request.inputs if (v := read_input(request, t.name)) is not None
        }
    ids = [*prompt_ids(job), *generated]
    inputs["input_ids"] = np.asarray(ids, dtype=np.int32).reshape(1, -1)
    inputs["input_lengths"] = np.array([[len(ids)]], dtype=np.int32)
    inputs["request_output_len"] = np.array([[remaining]], dtype=np.int32)
    inputs["streaming"] = np.array([[True]])
    inputs["exclude_input_in_output"] = np.array([[True]])
    if "min_tokens" in inputs:
        left = int(np.asarray(inputs["min_tokens"]).reshape(-1)[0]) - len(generated)
        inputs["min_tokens"] = np.array([[max(left, 0)]], dtype=np.int32)
    out = build_request(ENGINE_MODEL, inputs, request_id=request.id)
    for key, value in request.parameters.items():
        if key != ADDED_OUTPUTS_PARAMETER:
            out.parameters[key].CopyFrom(value)
    return out
