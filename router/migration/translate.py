"""The continuation's ``tensorrt_llm`` responses, in the shape of the original front's."""

from __future__ import annotations

from collections import Counter, deque
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np
from tritonclient.grpc import service_pb2

from python_backends.contract import MODELS, front_from_trtllm
from python_backends.text_codec import TextDecoder
from router.wire import NUMPY_TO_TRITON, is_final, read_output, serialize_bytes

FINAL = "triton_final_response"
AHEAD_WINDOW = 16
"""Responses after the seam in which a text the client already has (:attr:`Seam.ahead`)
is looked for: the ensemble's texts run at most a few responses ahead of their ids."""


@lru_cache(maxsize=8)
def decoder_for(tokenizer_dir: Path, skip_special_tokens: bool) -> TextDecoder:
    """The postprocessing model's decoder for a served model."""
    return TextDecoder(Path(tokenizer_dir), skip_special_tokens=skip_special_tokens)


@dataclass(frozen=True)
class Seam:
    """Where a stream broke: what its client already has."""

    front: str
    generated: tuple[int, ...]
    """Token ids sent, from the original start."""
    cum_log_prob: float
    """Their summed log-probability (0 when none were asked for)."""
    prompt_tokens: int
    template: service_pb2.ModelInferResponse
    """The front's response header: model name and version, request id, parameters."""
    accumulate_tokens: bool
    """BLS ``accumulate_tokens``: each response carries every token so far."""
    owed: tuple[bytes, ...] = ()
    """Texts of tokens in :attr:`generated` that the client has not had, in order."""
    ahead: tuple[bytes, ...] = ()
    """Texts the client has had beyond :attr:`generated`: those of the next responses."""


def add_output(response: service_pb2.ModelInferResponse, name: str, value: np.ndarray) -> None:
    """Append ``value`` as a raw output tensor (object arrays become BYTES)."""
    tensor = response.outputs.add(name=name)
    tensor.shape.extend(value.shape)
    if value.dtype == np.object_:
        tensor.datatype = "BYTES"
        response.raw_output_contents.append(serialize_bytes(value))
    else:
        tensor.datatype = NUMPY_TO_TRITON[value.dtype]
        response.raw_output_contents.append(np.ascontiguousarray(value).tobytes())


class Continuation:
    """A migrated stream's rest: :attr:`request` for another node's ``tensorrt_llm``, and
    :meth:`translate` for each of its responses, in order."""

    def __init__(
        self,
        request: service_pb2.ModelInferRequest,
        seam: Seam,
        decoder: TextDecoder | None,
    ) -> None:
        """``decoder``: the postprocessing's, for a text front; None for the engine front."""
        self.request = request
        self.seam = seam
        self._decoder = decoder
        self._ids = list(seam.generated)
        self._queue: deque[bytes] = deque(seam.owed)
        """Texts due to the client, oldest first: each response carries the oldest."""
        self._ahead = Counter(seam.ahead)
        self._window = AHEAD_WINDOW if seam.ahead else 0

    def translate(
        self, response: service_pb2.ModelInferResponse
    ) -> list[service_pb2.ModelInferResponse]:
        """The front's responses for one engine response: one, or none for an engine
        response without tokens that is not the last (an empty final stays one)."""
        final = is_final(response)
        ids = read_output(response, "output_ids")
        if ids is None or not ids.size:
            if not final:
                return []
            out = self._header(final)
            if self._queue:  # texts still due go with the end of the stream
                add_output(out, "text_output", self._text(None, final))
                add_output(out, "output_ids", np.zeros((1, 1, 0), dtype=np.int32))
                add_output(out, "sequence_length", np.zeros((1, 1), dtype=np.int32))
            return [out]
        length = read_output(response, "sequence_length")
        chunk = ids.reshape(-1)
        if length is not None:
            chunk = chunk[: int(length.sum())]
        self._ids.extend(int(t) for t in chunk)
        out = self._header(final)
        for name, value in self._outputs(response).items():
            add_output(out, name, value)
        return [out]

    def _header(self, final: bool) -> service_pb2.ModelInferResponse:
        out = service_pb2.ModelInferResponse()
        out.CopyFrom(self.seam.template)
        out.parameters[FINAL].bool_param = final
        return out

    def _outputs(self, response: service_pb2.ModelInferResponse) -> dict[str, np.ndarray]:
        seam = self.seam
        text_front = self._decoder is not None
        names = front_from_trtllm(seam.front) if text_front else MODELS[seam.front].output_names
        values = {
            name: np.array(value)
            for name in names
            if (value := read_output(response, name)) is not None
        }
        if seam.accumulate_tokens:
            values["output_ids"] = np.asarray(self._ids, dtype=np.int32).reshape(1, 1, -1)
            values["sequence_length"] = np.array([[len(self._ids)]], dtype=np.int32)
        elif "sequence_length" not in values:
            size = values["output_ids"].size
            values["sequence_length"] = np.array([[size]], dtype=np.int32)
        if "num_output_tokens" in values:
            values["num_output_tokens"] = np.array([[len(self._ids)]], dtype=np.int32)
        if "num_input_tokens" in values:
            values["num_input_tokens"] = np.array([[seam.prompt_tokens]], dtype=np.int32)
        if "cum_log_probs" in values:
            cum = seam.cum_log_prob + float(values["cum_log_probs"].reshape(-1)[-1])
            values["cum_log_probs"] = np.array([[cum]], dtype=np.float32)
        if self._decoder is None:
            return values
        text = self._decoder.decode_batch(values["output_ids"], values["sequence_length"])
        if self._queue or self._ahead:
            text = self._text(b"".join(text.reshape(-1).tolist()), is_final(response))
        return {"text_output": text, **values}

    def _text(self, decoded: bytes | None, final: bool) -> np.ndarray:
        """The text a response carries while the seam's texts are settled.

        ``decoded`` (this response's own) joins the queue unless the client already has
        it (:attr:`Seam.ahead`, looked for in the first :data:`AHEAD_WINDOW` responses);
        the response carries the oldest text of the queue, the last one all that is left.
        One text per response keeps the ledger's pairing for a later migration.
        """
        if decoded is not None:
            if self._ahead[decoded] > 0:
                self._ahead[decoded] -= 1
                if not self._ahead[decoded]:
                    del self._ahead[decoded]
            else:
                self._queue.append(decoded)
            self._window -= 1
            if self._window <= 0:
                self._ahead.clear()  # the engine went another way: nothing to drop
        if final:
            data = b"".join(self._queue)
            self._queue.clear()
        else:
            data = self._queue.popleft() if self._queue else b""
        return np.array([[data]], dtype=np.object_)
