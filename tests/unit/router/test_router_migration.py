"""Unit tests for router.migration: a stream cut after k responses and resumed on another
node's tensorrt_llm gives the client what an unbroken stream gives.

The nodes are emulated with the engines' own response code (``parse_request``,
``ResponseAssembler`` with its UTF-8 holdback) and the postprocessing's decoder, over the
seeded tiny tokenizer; the "model" picks each token by its position after the original
prompt, so its output depends on the context only, as the engines' does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from pydantic import SecretStr
from tritonclient.grpc import service_pb2

from python_backends.engine_types import TokenEvent
from python_backends.generation import parse_request
from python_backends.preprocess import preprocess
from python_backends.text_codec import TextDecoder, TextEncoder
from python_backends.token_bytes import TokenBytes, Utf8Holdback
from python_backends.triton_responses import ResponseAssembler
from python_backends.word_lists import encode_word_lists
from router.admission import TenantConfig
from router.api.openai import TEXT_OUTPUTS, CompletionRequest, ensemble_inputs
from router.migration import MigrationError, StreamLedger, prepare_request
from router.models import ModelConfig, ServedModel
from router.pipeline import Job
from router.wire import (
    add_input,
    build_request,
    is_final,
    read_input,
    read_output,
    serialize_bytes,
    set_parameter,
)

PROMPT = "Tell me about"
OUTPUT = " héllo wörld — 日本語 ❤ done"
"""What the emulated model writes: two-, three- and four-byte characters among ASCII."""
ENSEMBLE_PARAMETERS = {"sequence_id": 0, "sequence_start": False, "sequence_end": False}
"""Parameters Triton's ensemble puts on each of its responses (seen on a real node)."""


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> ServedModel:
    return ServedModel(ModelConfig(name="tiny", tokenizer_dir=tiny_model_dir))


@pytest.fixture(scope="module")
def decoder(tiny_model_dir: Path) -> TextDecoder:
    return TextDecoder(tiny_model_dir)


@pytest.fixture(scope="module")
def target(model: ServedModel) -> list[int]:
    ids = list(model.tokenizer.encode(OUTPUT, add_special_tokens=False))
    pieces = [TokenBytes.from_tokenizer(model.tokenizer).of(t) for t in ids]
    split = [p for p in pieces if p.decode("utf-8", errors="replace").encode() != p]
    assert split, "the text must split characters across tokens to test the seam"
    return ids


# -- building jobs as the fronts do ----------------------------------------------------------
def _tenant() -> TenantConfig:
    return TenantConfig(name="acme", api_key=SecretStr("key-acme"), reserved_mu_s=1000.0)


def openai_job(model: ServedModel, max_tokens: int, **sampling: Any) -> Job:
    """A job as the OpenAI front builds it (ensemble, listed outputs)."""
    req = CompletionRequest(model="tiny", prompt=PROMPT, stream=True, **sampling)
    inputs = ensemble_inputs(req, PROMPT, max_tokens)
    request = build_request("ensemble", inputs, request_id="req-7", outputs=TEXT_OUTPUTS)
    request.parameters["priority"].uint64_param = 3
    request.parameters["timeout"].int64_param = 30_000_000
    set_parameter(request, "priority_level", 3)
    ids = model.encode(PROMPT)
    return Job(_tenant(), model, request, ids, max_tokens)


def kserve_job(model: ServedModel, front: str, inputs: Mapping[str, np.ndarray]) -> Job:
    """A job as the KServe fronts build it (every output, token counts asked for)."""
    values = {"return_num_output_tokens": np.array([[True]]), **inputs}
    request = build_request(front, values, request_id="req-9")
    if front == "tensorrt_llm":
        ids = [int(t) for t in np.asarray(values["input_ids"]).reshape(-1)]
        budget = int(np.asarray(values["request_output_len"]).sum())
    else:
        ids = model.encode(PROMPT)
        budget = int(np.asarray(values["max_tokens"]).sum())
    return Job(_tenant(), model, request, ids, budget)


def text_inputs(max_tokens: int, **extra: np.ndarray) -> dict[str, np.ndarray]:
    return {
        "text_input": np.array([[PROMPT.encode()]], dtype=object),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        "stream": np.array([[True]]),
        **extra,
    }


# -- emulated nodes --------------------------------------------------------------------------
def _response(
    model: str, tensors: Mapping[str, np.ndarray] | None, final: bool, request_id: str
) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name=model, model_version="1", id=request_id)
    for name, value in (tensors or {}).items():
        arr = np.asarray(value)
        tensor = response.outputs.add(name=name, shape=list(arr.shape))
        if arr.dtype == np.object_:
            tensor.datatype = "BYTES"
            response.raw_output_contents.append(serialize_bytes(arr))
        else:
            tensor.datatype = {"int32": "INT32", "float32": "FP32"}[arr.dtype.name]
            response.raw_output_contents.append(arr.tobytes())
    if model == "ensemble":
        for key, value in ENSEMBLE_PARAMETERS.items():
            set_parameter(response, key, value)
    response.parameters["triton_final_response"].bool_param = final
    return response


class Node:
    """The engines' response path over a model that writes ``target`` after the prompt."""

    def __init__(self, model: ServedModel, decoder: TextDecoder, target: Sequence[int]) -> None:
        self.model, self.decoder, self.target = model, decoder, list(target)
        self.token_bytes = TokenBytes.from_tokenizer(model.tokenizer)
        self.prompt_tokens = len(model.encode(PROMPT))

    def engine(self, inputs: Mapping[str, np.ndarray]) -> list[tuple[dict | None, bool]]:
        """tensorrt_llm's streamed ``(tensors, final)`` for ``inputs``."""
        request = parse_request(inputs, "cpu", len(self.model.tokenizer), self.model.max_context)
        sent: list[tuple[dict | None, bool]] = []
        assembler = ResponseAssembler(
            request,
            lambda tensors, error, final: sent.append((tensors, final)),
            decoupled=True,
            holdback=lambda: Utf8Holdback(self.token_bytes),
        )
        spec = request.specs[0]
        start = len(spec.input_ids) - self.prompt_tokens
        for step in range(spec.max_new_tokens):
            position = start + step
            token = self.target[position]
            last = step == spec.max_new_tokens - 1 or position == len(self.target) - 1
            assembler.on_event(0, TokenEvent((token,), (-0.25 * (position + 1),), last))
            if last:
                break
        return sent

    def front(self, job: Job) -> list[service_pb2.ModelInferResponse]:
        """The front's responses to ``job``'s request, unbroken."""
        request = job.request
        given = {t.name: read_input(request, t.name) for t in request.inputs}
        front = request.model_name
        if front != "tensorrt_llm":  # what preprocessing makes of it, and the return_ flags
            given = {
                "input_ids": np.array([job.prompt_ids], dtype=np.int32),
                "input_lengths": np.array([[len(job.prompt_ids)]], dtype=np.int32),
                "request_output_len": given["max_tokens"],
                "streaming": given["stream"],
                **{k: v for k, v in given.items() if k.startswith("return_")},
            }
        out = []
        for tensors, final in self.engine(given):
            if tensors is not None and front != "tensorrt_llm":
                text = self.decoder.decode_batch(tensors["output_ids"], tensors["sequence_length"])
                tensors = {"text_output": text, **tensors}
            out.append(_response(front, tensors, final, request.id))
        return out

    def continuation(self, request: service_pb2.ModelInferRequest) -> list[Any]:
        given = {t.name: read_input(request, t.name) for t in request.inputs}
        return [
            _response("tensorrt_llm", tensors, final, request.id)
            for tensors, final in self.engine(given)
        ]


def texts(responses: Sequence[service_pb2.ModelInferResponse]) -> list[bytes]:
    return [b"".join(v.reshape(-1).tolist()) for v in outputs(responses, "text_output")]


def outputs(responses: Sequence[service_pb2.ModelInferResponse], name: str) -> list[Any]:
    return [v for r in responses if (v := read_output(r, name)) is not None]


def firsts(responses: Sequence[service_pb2.ModelInferResponse], name: str) -> list[Any]:
    return [v.reshape(-1)[0].item() for v in outputs(responses, name)]


def migrate(
    node: Node,
    job: Job,
    cut: int,
    ledger: StreamLedger | None = None,
    sent: Sequence[service_pb2.ModelInferResponse] | None = None,
) -> tuple[list[service_pb2.ModelInferResponse], StreamLedger]:
    """The client's responses when the stream's node dies after ``cut`` responses (of
    ``sent``, when given: what the front sent, else what the emulated front sends)."""
    prepare_request(job)
    ledger = ledger or StreamLedger(job)
    client = []
    for response in (node.front(job) if sent is None else sent)[:cut]:
        ledger.observe(response)
        client.append(ledger.for_client(response))
    cont = ledger.continuation()
    for response in node.continuation(cont.request):
        for out in cont.translate(response):
            ledger.observe(out)
            client.append(ledger.for_client(out))
    return client, ledger


# -- the text at the seam ------------------------------------------------------------------------
def test_every_cut_gives_the_unbroken_text_and_chunks(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    node = Node(model, decoder, target)
    unbroken = node.front(openai_job(model, len(target)))
    assert b"".join(texts(unbroken)).decode() == OUTPUT
    assert len(unbroken) < len(target)  # the holdback joined split characters

    for cut in range(1, len(unbroken)):
        client, ledger = migrate(node, openai_job(model, len(target)), cut)

        assert texts(client) == texts(unbroken), f"cut after {cut} responses"
        assert ledger.generated == tuple(target)
        assert is_final(client[-1]) and not any(is_final(r) for r in client[:-1])
        assert firsts(client, "num_output_tokens") == firsts(unbroken, "num_output_tokens")


def retexted(
    responses: Sequence[service_pb2.ModelInferResponse], texts_of: Mapping[int, bytes]
) -> list[service_pb2.ModelInferResponse]:
    """``responses`` with the ``text_output`` of response ``i`` replaced by ``texts_of[i]``."""
    out = []
    for index, response in enumerate(responses):
        if index in texts_of:
            tensors = {
                o.name: value
                for o in response.outputs
                if (value := read_output(response, o.name)) is not None
            }
            tensors["text_output"] = np.array([[texts_of[index]]], dtype=object)
            response = _response(response.model_name, tensors, is_final(response), response.id)
        out.append(response)
    return out


def ensemble_race(
    unbroken: Sequence[service_pb2.ModelInferResponse], at: int, order: Sequence[int]
) -> list[service_pb2.ModelInferResponse]:
    """What Triton's ensemble sends when postprocessing instances finish out of order: it
    pairs the i-th ``output_ids`` with the i-th text to come, so response ``at + i``
    carries its own ids and the text of response ``at + order[i]``."""
    chunks = texts(unbroken)
    return retexted(unbroken, {at + i: chunks[at + j] for i, j in enumerate(order)})


@pytest.mark.parametrize("order", [(1, 0), (2, 0, 1), (1, 2, 0), (3, 0, 1, 2)])
def test_texts_the_ensemble_sent_with_other_ids_are_settled_at_the_seam(
    model: ServedModel, decoder: TextDecoder, target: list[int], order: tuple[int, ...]
) -> None:
    """A cut inside the race: the client has texts of responses beyond the ids it has and
    lacks some of those ids' texts. The continuation sends the missing ones first and
    not those the client has: every text once, none lost, none twice."""
    node = Node(model, decoder, target)
    unbroken = node.front(openai_job(model, len(target)))
    at, end = 2, 2 + len(order)
    sent = ensemble_race(unbroken, at, order)
    assert len(sent) > end

    for cut in range(1, len(sent)):
        client, ledger = migrate(node, openai_job(model, len(target)), cut, sent=sent)

        got = texts(client)
        assert ledger.generated == tuple(target), f"cut after {cut}"
        assert got[:cut] == texts(sent)[:cut]
        assert sorted(got) == sorted(texts(unbroken)), f"cut after {cut}: {got}"
        assert got[end:] == texts(unbroken)[end:]  # in step again after the race
        if cut <= at:  # the client never saw the race
            assert got == texts(unbroken)
        if cut >= end:  # the race lies wholly before the seam: nothing owed
            assert got == texts(sent)
        assert firsts(client, "num_output_tokens") == firsts(unbroken, "num_output_tokens")
        assert is_final(client[-1]) and not any(is_final(r) for r in client[:-1])


def test_a_second_failure_while_texts_are_owed_settles_them_too(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    node = Node(model, decoder, target)
    unbroken = node.front(openai_job(model, len(target)))
    sent = ensemble_race(unbroken, 1, (3, 0, 1, 2))
    job = openai_job(model, len(target))
    prepare_request(job)
    ledger = StreamLedger(job)
    client = []
    for response in sent[:2]:
        ledger.observe(response)
        client.append(ledger.for_client(response))
    first = ledger.continuation()
    assert first.seam.owed == (texts(unbroken)[1],)
    assert first.seam.ahead == (texts(unbroken)[4],)
    for response in node.continuation(first.request)[:1]:  # the second node dies too
        for out in first.translate(response):
            ledger.observe(out)
            client.append(ledger.for_client(out))

    rest, _ = migrate(node, job, 0, ledger)

    assert sorted(texts(client + rest)) == sorted(texts(unbroken))
    assert ledger.generated == tuple(target)


def test_a_text_sent_ahead_that_never_comes_owes_nothing_more(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    """The client got a text the continuation does not make (another engine went another
    way): the text it lacks still comes, and everything after, in order, the last texts
    with the final response even when that one has no tokens."""
    node = Node(model, decoder, target)
    unbroken = node.front(openai_job(model, len(target)))
    sent = retexted(unbroken, {1: b"elsewhere"})
    job = openai_job(model, len(target))
    prepare_request(job)
    ledger = StreamLedger(job)
    client = []
    for response in sent[:2]:
        ledger.observe(response)
        client.append(ledger.for_client(response))
    cont = ledger.continuation()
    engine = node.continuation(cont.request)
    engine[-1].parameters["triton_final_response"].bool_param = False
    engine.append(_response("tensorrt_llm", None, True, "req-7"))

    for response in engine:
        for out in cont.translate(response):
            ledger.observe(out)
            client.append(ledger.for_client(out))

    chunks = texts(unbroken)
    assert b"".join(texts(client)) == chunks[0] + b"elsewhere" + b"".join(chunks[1:])
    assert texts(client)[-1] == chunks[-1]  # the empty final carries what was left
    assert is_final(client[-1]) and not any(is_final(r) for r in client[:-1])
    assert ledger.generated == tuple(target)
    assert ledger.why_not == "the stream has ended"


def test_client_gets_only_what_it_listed_whatever_the_call_order(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    node = Node(model, decoder, target)
    job = openai_job(model, len(target))
    ledger = StreamLedger(job)  # before prepare_request this time

    client, _ = migrate(node, job, 2, ledger)

    assert "output_ids" in [o.name for o in job.request.outputs]
    for response in client:  # the front's header too: name, version, id, parameters
        assert {o.name for o in response.outputs} == set(TEXT_OUTPUTS)
        assert len(response.raw_output_contents) == len(TEXT_OUTPUTS)
        assert (response.model_name, response.model_version, response.id) == (
            "ensemble",
            "1",
            "req-7",
        )
        assert response.parameters["sequence_id"].int64_param == 0


def test_log_probs_and_input_counts_run_from_the_original_start(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    node = Node(model, decoder, target)
    extra = {"return_log_probs": np.array([[True]]), "return_num_input_tokens": np.array([[True]])}
    unbroken = node.front(kserve_job(model, "ensemble", text_inputs(len(target), **extra)))
    job = kserve_job(model, "ensemble", text_inputs(len(target), **extra))

    client, _ = migrate(node, job, 3)

    assert firsts(client, "cum_log_probs") == pytest.approx(firsts(unbroken, "cum_log_probs"))
    for response in client[3:]:
        assert read_output(response, "num_input_tokens").reshape(-1)[0] == len(job.prompt_ids)
        assert read_output(response, "batch_index").reshape(-1)[0] == 0


def test_bls_accumulated_texts_continue_accumulating(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    node = Node(model, decoder, target)
    job = kserve_job(model, "tensorrt_llm_bls", text_inputs(len(target)))
    ledger = StreamLedger(job)
    accumulated: list[int] = []
    for response in node.front(job)[:3]:  # the BLS model with accumulate_tokens
        ids = read_output(response, "output_ids").reshape(-1).tolist()
        accumulated += ids
        tensors = {
            "text_output": decoder.decode_batch(np.array([[accumulated]]), [[len(accumulated)]]),
            "output_ids": np.array([[accumulated]], dtype=np.int32),
            "sequence_length": np.array([[len(accumulated)]], dtype=np.int32),
            "num_output_tokens": read_output(response, "num_output_tokens"),
        }
        ledger.observe(_response("tensorrt_llm_bls", tensors, False, "req-9"))
    assert ledger.accumulate_tokens  # inferred from the running counts

    client, _ = migrate(node, job, 0, ledger)

    assert texts(client)[-1].decode() == OUTPUT
    last_ids = read_output(client[-1], "output_ids").reshape(-1).tolist()
    assert last_ids == target
    assert read_output(client[-1], "sequence_length").reshape(-1)[0] == len(target)


def test_engine_front_counts_from_the_original_start(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    node = Node(model, decoder, target)
    prompt = model.encode(PROMPT)
    inputs = {
        "input_ids": np.array([prompt], dtype=np.int32),
        "input_lengths": np.array([[len(prompt)]], dtype=np.int32),
        "request_output_len": np.array([[len(target)]], dtype=np.int32),
        "streaming": np.array([[True]]),
        "runtime_top_k": np.array([[1]], dtype=np.int32),
    }
    unbroken = node.front(kserve_job(model, "tensorrt_llm", inputs))

    client, ledger = migrate(node, kserve_job(model, "tensorrt_llm", inputs), 2)

    ids = [v.reshape(-1).tolist() for v in outputs(client, "output_ids")]
    assert ids == [v.reshape(-1).tolist() for v in outputs(unbroken, "output_ids")]
    assert firsts(client, "num_output_tokens") == firsts(unbroken, "num_output_tokens")
    assert not outputs(client, "text_output")
    assert ledger.generated == tuple(target)


def test_a_second_failure_migrates_again(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    node = Node(model, decoder, target)
    job = openai_job(model, len(target))
    prepare_request(job)
    ledger = StreamLedger(job)
    for response in node.front(job)[:1]:
        ledger.observe(response)
    first = ledger.continuation()
    for response in node.continuation(first.request)[:2]:
        for out in first.translate(response):
            ledger.observe(out)

    second = ledger.continuation()

    ids = read_input(second.request, "input_ids").reshape(-1).tolist()
    assert ids == [*job.prompt_ids, *ledger.generated]
    assert read_input(second.request, "request_output_len")[0, 0] == ledger.remaining


def test_an_empty_final_response_stays_one(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    job = openai_job(model, len(target))
    ledger = StreamLedger(job)
    ledger.observe(Node(model, decoder, target).front(job)[0])
    cont = ledger.continuation()

    assert cont.translate(_response("tensorrt_llm", None, False, "req-7")) == []
    (final,) = cont.translate(_response("tensorrt_llm", None, True, "req-7"))
    assert is_final(final) and not final.outputs and final.model_name == "ensemble"


# -- the continuation request --------------------------------------------------------------
def test_continuation_request_carries_the_sampling_and_word_lists(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    job = openai_job(model, 40, temperature=0.7, top_p=0.9, seed=11, stop=["wör", "ok"])
    add_input(job.request, "min_tokens", np.array([[5]], dtype=np.int32))
    add_input(job.request, "bad_words", np.array([[b"done"]], dtype=object))
    prepare_request(job)
    ledger = StreamLedger(job)
    for response in Node(model, decoder, target).front(job)[:2]:
        ledger.observe(response)
    k = len(ledger.generated)

    request = ledger.continuation().request

    def value(name: str) -> Any:
        found = read_input(request, name)
        assert found is not None, name
        return found.reshape(-1).tolist()

    assert request.model_name == "tensorrt_llm" and request.id == "req-7"
    assert value("input_ids") == [*job.prompt_ids, *ledger.generated]
    assert value("input_lengths") == [len(job.prompt_ids) + k]
    assert value("request_output_len") == [40 - k]
    assert value("min_tokens") == [max(5 - k, 0)]
    assert value("streaming") == [True] and value("exclude_input_in_output") == [True]
    assert value("temperature") == pytest.approx([0.7])
    assert value("runtime_top_p") == pytest.approx([0.9])
    assert value("seed") == [11] and read_input(request, "seed").dtype == np.uint64
    assert value("return_num_output_tokens") == [True]

    def words(*texts: str) -> list[list[int]]:
        ids = [model.tokenizer.encode(w, add_special_tokens=False) for w in texts]
        return encode_word_lists(ids).tolist()

    assert read_input(request, "stop_words_list").reshape(2, -1).tolist() == words("wör", "ok")
    assert read_input(request, "bad_words_list").reshape(2, -1).tolist() == words("done")
    assert value("end_id") == [model.tokenizer.eos_token_id]
    assert value("pad_id") == [model.tokenizer.pad_token_id]
    assert request.parameters["priority"].uint64_param == 3
    assert request.parameters["priority_level"].int64_param == 3
    assert request.parameters["timeout"].int64_param == 30_000_000
    assert "mufleet_added_outputs" not in request.parameters
    assert not request.outputs  # every output the engine makes
    given = {t.name: read_input(request, t.name) for t in request.inputs}
    parse_request(given, "cpu", len(model.tokenizer), model.max_context)  # the engines take it


def test_router_tokenizes_prompts_as_the_preprocessing_does(
    model: ServedModel, tiny_model_dir: Path
) -> None:
    encoder = TextEncoder(tiny_model_dir)  # preprocessing's default: add_special_tokens
    for text in (PROMPT, "héllo 日本", " leading space", "<|begin_of_text|>x"):
        out = preprocess(
            {"QUERY": np.array([[text.encode()]], dtype=object), "REQUEST_OUTPUT_LEN": [[4]]},
            encoder,
        )
        assert out["INPUT_ID"].reshape(-1).tolist() == model.encode(text)


# -- what cannot migrate ---------------------------------------------------------------------
@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        ({"num_return_sequences": np.array([[2]], dtype=np.int32)}, "num_return_sequences"),
        ({"beam_width": np.array([[2]], dtype=np.int32)}, "beam search"),
        ({"stream": np.array([[False]])}, "not streamed"),
        ({"return_generation_logits": np.array([[True]])}, "logits"),
        ({"guided_decoding_guide": np.array([[b"{}"]], dtype=object)}, "guided decoding"),
        ({"text_input": np.array([[b"a"], [b"b"]], dtype=object)}, "a batch of 2 rows"),
    ],
)
def test_requests_that_cannot_migrate(
    model: ServedModel, extra: dict[str, np.ndarray], reason: str
) -> None:
    ledger = StreamLedger(kserve_job(model, "ensemble", text_inputs(8, **extra)))
    ledger.observe(_response("ensemble", {"output_ids": np.array([[[5]]], np.int32)}, False, ""))

    assert not ledger.migratable
    assert reason in (ledger.why_not or "")
    with pytest.raises(MigrationError, match=reason):
        ledger.continuation()


def test_stream_states_that_cannot_migrate(
    model: ServedModel, decoder: TextDecoder, target: list[int]
) -> None:
    node = Node(model, decoder, target)
    job = openai_job(model, len(target))
    ledger = StreamLedger(job)
    assert not ledger.streamed and "nothing reached" in (ledger.why_not or "")

    responses = node.front(job)
    for response in responses[:-1]:
        ledger.observe(response)
    assert ledger.migratable and ledger.streamed
    ledger.observe(responses[-1])
    assert ledger.why_not == "the stream has ended"
    assert ledger.client_text.decode() == OUTPUT

    short = StreamLedger(openai_job(model, 2))
    short.observe(_response("ensemble", {"output_ids": np.array([[[5, 6]]], np.int32)}, False, ""))
    assert short.why_not == "nothing left to generate"


@pytest.mark.parametrize(
    ("tensors", "reason"),
    [
        ({"text_output": np.array([[b"Hi"]], dtype=object)}, "without output_ids"),
        (
            {
                "output_ids": np.array([[[5]]], np.int32),
                "num_output_tokens": np.array([[3]], np.int32),
            },
            "num_output_tokens=3",
        ),
    ],
)
def test_responses_the_ledger_cannot_follow(
    model: ServedModel, tensors: dict[str, np.ndarray], reason: str
) -> None:
    ledger = StreamLedger(openai_job(model, 8))

    ledger.observe(_response("ensemble", tensors, False, "req-7"))

    assert reason in (ledger.why_not or "")
