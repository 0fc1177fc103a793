"""What one stream has delivered to its client, and whether it can go on elsewhere."""

from __future__ import annotations

from collections import Counter

import numpy as np
from tritonclient.grpc import service_pb2

from python_backends.text_codec import TextDecoder
from router.migration.resume import (
    ADDED_OUTPUTS_PARAMETER,
    ENGINE_MODEL,
    TEXT_FRONTS,
    continuation_request,
    input_int,
    prompt_ids,
)
from router.migration.translate import Continuation, Seam, decoder_for
from router.pipeline import Job
from router.wire import is_final, read_input, read_output

FRONTS = (*TEXT_FRONTS, ENGINE_MODEL)
STATE_INPUTS: dict[str, str] = {
    "guided_decoding_guide": "guided decoding: the guide's state covers the tokens already sent",
    "guided_decoding_guide_type": "guided decoding: the guide's state covers the tokens sent",
    "draft_input_ids": "speculative decoding: draft tokens belong to the failed node",
    "draft_logits": "speculative decoding: draft logits belong to the failed node",
    "context_phase_params": "disaggregated serving: the context phase lives on the failed node",
    "decoder_input_ids": "encoder-decoder inputs",
    "encoder_input_features": "encoder-decoder inputs",
    "prompt_embedding_table": "prompt-tuning tables are not carried over",
    "mrope_position_deltas": "multimodal rotary positions are not carried over",
}
"""Inputs whose state a continuation cannot rebuild from token ids (any name, any front)."""
LOGITS_INPUTS = ("return_context_logits", "return_generation_logits")


class MigrationError(RuntimeError):
    """A continuation was asked of a stream that cannot migrate (the reason is the message)."""


def prepare_request(job: Job) -> None:
    """Make the node return what migration needs: the token ids behind the text.

    A request that lists its outputs gets ``output_ids`` added (one that lists none gets
    every output already), and the :data:`ADDED_OUTPUTS_PARAMETER` says so, for
    :meth:`StreamLedger.for_client` to strip it. Idempotent.
    """
    request = job.request
    if request.outputs and not any(o.name == "output_ids" for o in request.outputs):
        request.outputs.add().name = "output_ids"
        request.parameters[ADDED_OUTPUTS_PARAMETER].string_param = "output_ids"


def _client_outputs(request: service_pb2.ModelInferRequest) -> frozenset[str] | None:
    """The outputs the client named (None: it named none, so it gets every output)."""
    added = request.parameters.get(ADDED_OUTPUTS_PARAMETER)
    ours = set(added.string_param.split(",")) if added is not None else set()
    return frozenset(o.name for o in request.outputs if o.name not in ours) or None


def _asks(value: np.ndarray) -> bool:
    """Sent with a value that asks for something (not empty, not false, not "none")."""
    arr = np.asarray(value)
    if arr.dtype == np.object_:
        return any(v not in (b"", "", b"none", "none") for v in arr.reshape(-1).tolist())
    return bool(arr.any()) if arr.dtype == np.bool_ else arr.size > 0


def _refusal(request: service_pb2.ModelInferRequest) -> str | None:
    """Why the request itself can never migrate, or None."""
    front = request.model_name
    if front not in FRONTS:
        return f"model {front!r} is not a front the router can resume ({', '.join(FRONTS)})"
    try:
        rows_of = read_input(request, "text_input" if front in TEXT_FRONTS else "input_ids")
        rows = 1 if rows_of is None or rows_of.ndim < 2 else int(rows_of.shape[0])
        if rows != 1:
            return f"a batch of {rows} rows"
        if (n := input_int(request, "num_return_sequences", 1)) > 1:
            return f"num_return_sequences={n}: several sequences share the stream"
        if (beams := input_int(request, "beam_width", 1)) > 1:
            return f"beam search (beam_width={beams}) revises tokens it has sent"
        if not input_int(request, "streaming" if front == ENGINE_MODEL else "stream", 0):
            return "not streamed: the client gets one response, so the request is resent whole"
        for name in LOGITS_INPUTS:
            if input_int(request, name, 0):
                return f"{name}: logits cover the failed node's context"
        for name, reason in STATE_INPUTS.items():
            value = read_input(request, name)
            if value is not None and _asks(value):
                return reason
    except ValueError as exc:  # WireError included: the node refuses such a request too
        return f"an input cannot be read: {exc}"
    return None


def _flat(value: np.ndarray | None) -> np.ndarray | None:
    return None if value is None else np.asarray(value).reshape(-1)


class StreamLedger:
    """One stream's record of what reached its client; builds its continuation.

    ``accumulate_tokens`` is the BLS model's parameter of that name (each response then
    carries every token so far); the ledger also infers it from the responses' running
    ``num_output_tokens`` from the second response on. ``skip_special_tokens`` is the
    postprocessing model's parameter, for decoding the continuation's text.
    """

    def __init__(
        self, job: Job, *, accumulate_tokens: bool = False, skip_special_tokens: bool = True
    ) -> None:
        request = job.request
        self.job = job
        self.front = request.model_name
        self.accumulate_tokens = accumulate_tokens and self.front == "tensorrt_llm_bls"
        self.skip_special_tokens = skip_special_tokens
        self._client_outputs = _client_outputs(request)
        self._refusal = _refusal(request)
        budget = "request_output_len" if self.front == ENGINE_MODEL else "max_tokens"
        self.max_tokens = input_int(request, budget, 0) if self._refusal is None else 0
        self._generated: list[int] = []
        self._text = bytearray()
        self._bounds: list[tuple[int, int]] = []
        """Where each response's ids and text end in ``_generated`` and ``_text``."""
        self._paired = True
        """Every response with ids carried a text of its own (not accumulated)."""
        self._cum_log_prob: float | None = None
        self._log_prob_sum = 0.0
        self._responses = 0
        self._ended = False
        self._broken: str | None = None
        self._template = service_pb2.ModelInferResponse(model_name=self.front, id=request.id)
        self._shaped = False
        """The template holds a real response's header (one stream's headers do not change)."""

    # -- what reached the client --------------------------------------------------------------
    @property
    def generated(self) -> tuple[int, ...]:
        """Token ids the client has, in order, from the original start."""
        return tuple(self._generated)

    @property
    def client_text(self) -> bytes:
        """The text the client has (``text_output`` concatenated, or the latest accumulated)."""
        return bytes(self._text)

    def observe(self, response: service_pb2.ModelInferResponse) -> None:
        """Note one response on its way to the client (a node's, or a translated one)."""
        self._responses += 1
        self._ended = self._ended or is_final(response)
        if response.outputs and not self._shaped:
            self._remember_shape(response)
        try:
            ids = _flat(read_output(response, "output_ids"))
            text = _flat(read_output(response, "text_output"))
            length = _flat(read_output(response, "sequence_length"))
            count = _flat(read_output(response, "num_output_tokens"))
            cum = _flat(read_output(response, "cum_log_probs"))
            log_probs = _flat(read_output(response, "output_log_probs"))
        except ValueError as exc:
            self._broken = f"a response could not be read: {exc}"
            return
        accumulated = self.accumulate_tokens
        if ids is not None:
            chunk = [int(t) for t in (ids if length is None else ids[: int(length.sum())])]
            accumulated = self._take(
                chunk, None if count is None or not count.size else int(count[-1])
            )
        elif text is not None and any(bytes(t) for t in text):
            self._broken = "the node sent text without output_ids (call prepare_request)"
        if text is not None:
            data = b"".join(bytes(t) for t in text)
            if accumulated:
                self._text = bytearray(data)
            else:
                self._text += data
        if ids is not None:
            self._paired = self._paired and text is not None and not accumulated
            self._bounds.append((len(self._generated), len(self._text)))
        if cum is not None and cum.size:
            self._cum_log_prob = float(cum[-1])
        if log_probs is not None:
            self._log_prob_sum += float(log_probs.astype(np.float64).sum())

    def _take(self, chunk: list[int], count: int | None) -> bool:
        """Add a response's ids; True when they were the accumulated sequence so far."""
        had = len(self._generated)
        accumulated = self.accumulate_tokens
        if count is not None:
            if len(chunk) == count - had:
                accumulated = False
            elif (
                self.front == "tensorrt_llm_bls"
                and len(chunk) == count
                and chunk[:had] == self._generated
            ):
                accumulated = self.accumulate_tokens = True
            else:
                self._broken = (
                    f"a response with {len(chunk)} ids after {had} says num_output_tokens={count}"
                )
                return False
        if accumulated:
            self._generated = chunk
        else:
            self._generated.extend(chunk)
        return accumulated

    def _remember_shape(self, response: service_pb2.ModelInferResponse) -> None:
        """The front's response header (version, parameters) for translated responses."""
        template = service_pb2.ModelInferResponse(
            model_name=response.model_name or self.front,
            model_version=response.model_version,
            id=response.id,
        )
        for key, value in response.parameters.items():
            template.parameters[key].CopyFrom(value)
        self._template = template
        self._shaped = True

    def for_client(
        self, response: service_pb2.ModelInferResponse
    ) -> service_pb2.ModelInferResponse:
        """``response`` with only the outputs the client asked for (all, if it named none)."""
        wanted = self._client_outputs
        if wanted is None or all(o.name in wanted for o in response.outputs):
            return response
        out = service_pb2.ModelInferResponse()
        out.CopyFrom(response)
        del out.outputs[:]
        del out.raw_output_contents[:]
        for index, tensor in enumerate(response.outputs):
            if tensor.name in wanted:
                out.outputs.add().CopyFrom(tensor)
                if index < len(response.raw_output_contents):
                    out.raw_output_contents.append(response.raw_output_contents[index])
        return out
        raw = response.raw_output_contents
        for index in range(len(response.outputs) - 1, -1, -1):
            if response.outputs[index].name not in wanted:
                del response.outputs[index]
                if index < len(raw):
                    del raw[index]
        return response

    # -- migration ------------------------------------------------------------------------------
    @property
    def streamed(self) -> bool:
        """Something reached the client: a failure now needs a migration, not a resend."""
        return self._responses > 0

    @property
    def remaining(self) -> int:
        """Tokens the request may still generate."""
        return self.max_tokens - len(self._generated)

    @property
    def why_not(self) -> str | None:
        """Why the stream cannot migrate now; None when it can."""
        if self._refusal is not None:
            return self._refusal
        if self._broken is not None:
            return self._broken
        if not self.streamed:
            return "nothing reached the client yet: fail over with the original request"
        if self._ended:
            return "the stream has ended"
        if self.remaining <= 0:
            return "nothing left to generate"
        return None

    @property
    def migratable(self) -> bool:
        return self.why_not is None

    def _unpaired_texts(
        self, decoder: TextDecoder | None
    ) -> tuple[tuple[bytes, ...], tuple[bytes, ...]]:
        """The texts of the ids sent that the client lacks (in order), and the texts it has
        beyond those ids: Triton's ensemble can send a response's ``output_ids`` with the
        ``text_output`` of a later one (see the package docstring, "Text at the seam").

        Each response's ids decode as the postprocessing decodes them; the client's texts
        are matched against those as multisets, so texts that only came in another order
        (all of them before the seam) owe nothing.
        """
        if decoder is None or self.accumulate_tokens or not self._paired:
            return (), ()
        expected: list[bytes] = []
        start = 0
        for end, _ in self._bounds:
            chunk = np.asarray(self._generated[start:end], dtype=np.int64)
            expected.append(decoder.decode(chunk[None], np.array([chunk.size]))[0])
            start = end
        received: Counter[bytes] = Counter()
        offset = 0
        for _, until in self._bounds:
            received[bytes(self._text[offset:until])] += 1
            offset = until
        owed: list[bytes] = []
        for text in expected:
            if received[text] > 0:
                received[text] -= 1
            else:
                owed.append(text)
        return tuple(owed), tuple(received.elements())

    def continuation(self) -> Continuation:
        """The rest of the stream, for another node; raises :class:`MigrationError`."""
        reason = self.why_not
        if reason is not None:
            raise MigrationError(reason)
        model = self.job.model
        decoder = (
            decoder_for(model.config.tokenizer_dir, self.skip_special_tokens)
            if self.front in TEXT_FRONTS
            else None
        )
        owed, ahead = self._unpaired_texts(decoder)
        seam = Seam(
            front=self.front,
            generated=self.generated,
            cum_log_prob=(
                self._cum_log_prob if self._cum_log_prob is not None else self._log_prob_sum
            ),
            prompt_tokens=len(prompt_ids(self.job)),
            template=self._template,
            accumulate_tokens=self.accumulate_tokens,
            owed=owed,
            ahead=ahead,
        )
        request = continuation_request(self.job, self._generated, self.remaining)
        return Continuation(request, seam, decoder)
