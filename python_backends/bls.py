"""The ``tensorrt_llm_bls`` pipeline: preprocessing → tensorrt_llm → postprocessing by BLS.

The flow is the ensemble's, driven from Python: inputs go where the contract's routing maps
send them (:mod:`python_backends.contract`), every tensorrt_llm response is decoded by the
postprocessing model, and the front response carries ``text_output`` plus every
tensorrt_llm output the front declares. Unlike upstream's BLS this one also forwards
``num_return_sequences`` and the caller's request parameters (the router's priority level
among them), and reuses the caller's request id for the inner requests.

With ``accumulate_tokens`` a streamed response carries the text of every token so far for
its (batch index, sequence index); otherwise the text of its new tokens only (the engines
never split a character across responses).

Model calls go through a :data:`Call`, so the pipeline runs outside Triton in tests.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import numpy as np

from python_backends.contract import (
    MODELS,
    POSTPROCESSING_FROM_TRTLLM,
    PREPROCESSING_FROM_FRONT,
    TRTLLM_FROM_FRONT,
    TRTLLM_FROM_PREPROCESSING,
    front_from_trtllm,
    routed_inputs,
)

FRONT = "tensorrt_llm_bls"
Tensors = dict[str, np.ndarray]
Call = Callable[[str, Tensors, bool], Iterator[Tensors]]
"""``call(model, inputs, decoupled)``: the responses of one inner request (raises on error)."""

REFUSED = {
    "image_input": "image_input: this repository serves a text model",
    "num_draft_tokens": "num_draft_tokens: no speculative decoding",
    "use_draft_logits": "use_draft_logits: no speculative decoding",
}


class BlsError(ValueError):
    """The request cannot be served as sent (maps to HTTP 400)."""


def _present(value: np.ndarray) -> bool:
    """Sent with a value that asks for something: any element, or a true flag."""
    arr = np.asarray(value)
    return bool(arr.any()) if arr.dtype == np.bool_ else arr.size > 0


def _with_batch_dims(name: str, value: np.ndarray) -> np.ndarray:
    """Undo the front's ``reshape: []``: an input Triton hands over as ``[B]`` is ``[B, 1]``."""
    arr = np.asarray(value)
    declared = MODELS[FRONT].inputs_by_name.get(name)
    return arr.reshape(-1, 1) if declared is not None and declared.scalar else arr


@dataclass
class _Accumulated:
    tokens: dict[tuple[int, int], list[int]] = field(default_factory=dict)

    def add(self, key: tuple[int, int], ids: np.ndarray, length: int) -> np.ndarray:
        held = self.tokens.setdefault(key, [])
        held.extend(int(t) for t in ids.reshape(-1)[:length])
        return np.asarray(held, dtype=np.int32).reshape(1, 1, -1)


class BlsPipeline:
    """Serves one front request at a time per call of :meth:`run` (thread-safe, stateless)."""

    def __init__(
        self, call: Call, decoupled: bool, accumulate_tokens: bool, trtllm_model: str
    ) -> None:
        self.call = call
        self.decoupled = decoupled
        self.accumulate = accumulate_tokens and decoupled
        self.trtllm_model = trtllm_model
        self.outputs = front_from_trtllm(FRONT)

    def run(self, inputs: Mapping[str, np.ndarray]) -> Iterator[Tensors]:
        """The front responses of one request, in order."""
        inputs = {name: _with_batch_dims(name, value) for name, value in inputs.items()}
        for name, reason in REFUSED.items():
            if name in inputs and _present(inputs[name]):
                raise BlsError(f"input not supported: {reason}")
        stream = "stream" in inputs and bool(np.asarray(inputs["stream"]).reshape(-1)[0])
        if stream and not self.decoupled:
            raise BlsError(
                "stream=true needs a decoupled model: render the repository with "
                "--decoupled true, or send stream=false"
            )
        pre_inputs = {
            target: np.asarray(inputs[source])
            for target, source in routed_inputs(FRONT, PREPROCESSING_FROM_FRONT).items()
            if source in inputs
        }
        preprocessed = next(self.call("preprocessing", pre_inputs, False))
        trt_inputs = {
            target: preprocessed[source]
            for target, source in TRTLLM_FROM_PREPROCESSING.items()
            if source in preprocessed and target in MODELS["tensorrt_llm"].input_names
        }
        for target, source in routed_inputs(FRONT, TRTLLM_FROM_FRONT).items():
            if source in inputs:
                trt_inputs[target] = np.asarray(inputs[source])
        accumulated = _Accumulated()
        for response in self.call(self.trtllm_model, trt_inputs, self.decoupled):
            if "output_ids" not in response:
                continue
            yield self._front_response(response, accumulated, stream)

    def _front_response(
        self, response: Tensors, accumulated: _Accumulated, stream: bool
    ) -> Tensors:
        ids, lengths = response["output_ids"], response["sequence_length"]
        if self.accumulate and stream:
            key = (
                int(response.get("batch_index", np.zeros(1)).reshape(-1)[0]),
                int(response.get("sequence_index", np.zeros(1)).reshape(-1)[0]),
            )
            ids = accumulated.add(key, ids, int(lengths.reshape(-1)[0]))
            lengths = np.array([[ids.shape[-1]]], dtype=np.int32)
        decoded = {"output_ids": ids, "sequence_length": lengths}
        post = {k: decoded[v] for k, v in POSTPROCESSING_FROM_TRTLLM.items()}
        text = next(self.call("postprocessing", post, False))["OUTPUT"]
        out: Tensors = {"text_output": text}
        for name in self.outputs:
            if name in response:
                out[name] = response[name]
        out |= decoded  # output_ids and sequence_length are the ids behind text_output
        return out
