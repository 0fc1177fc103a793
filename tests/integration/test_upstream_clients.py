"""Requests shaped as TensorRT-LLM's own example clients send them, on real tritonservers.

``triton_node`` is the default rendering (decoupled: streaming); ``unary_node`` the same
repository with ``decoupled_mode`` false (unary infer on every model).
"""

from __future__ import annotations

import numpy as np
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from tritonclient.utils import InferenceServerException
from upstream import (
    StreamResult,
    end_to_end_inputs,
    inflight_batcher_inputs,
    stream_call,
    tensor,
)

from mufleet.node import TritonNode

pytestmark = pytest.mark.triton

PROMPT = "Born in north-east France, Soyer trained as a"
FRONTS = ("ensemble", "tensorrt_llm_bls")


def _text(result: StreamResult) -> str:
    assert result.error is None, result.error
    return b"".join(result.texts()).decode("utf-8")


def _ids(result: StreamResult) -> list[int]:
    assert result.error is None, result.error
    return [int(t) for ids in result.outputs("output_ids") for t in ids.reshape(-1)]


@pytest.mark.parametrize("model", FRONTS)
@pytest.mark.parametrize("stream", [False, True], ids=["unary", "streaming"])
def test_end_to_end_client_defaults(triton_node: TritonNode, model: str, stream: bool) -> None:
    """The client's defaults send exclude_input_in_output=False: the prompt leads the text
    when not streaming, and streamed chunks carry only new text (what --check-outputs
    expects)."""
    result = stream_call(
        triton_node.grpc_url, model, end_to_end_inputs([PROMPT], 12, stream=stream)
    )
    text = _text(result)
    if stream:
        assert len(result.texts()) > 1 and PROMPT not in text
    else:
        assert len(result.texts()) == 1 and PROMPT in text and len(text) > len(PROMPT)


@pytest.mark.parametrize("model", FRONTS)
def test_streamed_chunks_concatenate_to_the_unary_text(triton_node: TritonNode, model: str) -> None:
    """Sampled output biased towards multi-byte characters: no chunk splits a character."""
    bias = {
        "embedding_bias_words": np.array([["é", "日本", "—"]], dtype=object),
        "embedding_bias_weights": np.array([[6.0, 6.0, 6.0]], dtype=np.float32),
        "top_p": np.array([[1.0]], dtype=np.float32),
        "exclude_input_in_output": np.array([[True]]),
    }
    non_ascii = 0
    for seed in (1, 2, 3):
        extra = {**bias, "seed": np.array([[seed]], dtype=np.uint64)}
        inputs = end_to_end_inputs([PROMPT], 40, **extra)
        whole = _text(stream_call(triton_node.grpc_url, model, inputs))
        inputs = end_to_end_inputs([PROMPT], 40, stream=True, **extra)
        streamed = stream_call(triton_node.grpc_url, model, inputs)
        assert _text(streamed) == whole, seed
        non_ascii += sum(1 for c in whole if ord(c) > 127)
    assert non_ascii > 0, "the bias should have produced multi-byte characters"


@pytest.mark.parametrize("model", FRONTS)
def test_batch_of_two_is_served_row_by_row(triton_node: TritonNode, model: str) -> None:
    prompts = ["The first agent", "A second, longer prompt for the second row"]
    result = stream_call(
        triton_node.grpc_url,
        model,
        end_to_end_inputs(prompts, 8, exclude_input_in_output=True),
        outputs=["text_output", "batch_index", "output_ids"],
    )
    assert result.error is None, result.error
    rows = {
        int(r.as_numpy("batch_index").reshape(-1)[0]): r
        for r in result.responses
        if r.as_numpy("batch_index") is not None
    }
    assert sorted(rows) == [0, 1]
    for index, prompt in enumerate(prompts):
        alone = stream_call(
            triton_node.grpc_url,
            model,
            end_to_end_inputs([prompt], 8, exclude_input_in_output=True),
        )
        assert rows[index].as_numpy("text_output").reshape(-1)[0] == alone.texts()[0]


@pytest.mark.parametrize("model", FRONTS)
def test_two_stop_words_and_two_bad_words(triton_node: TritonNode, model: str) -> None:
    """Lists of several words (what OpenAI-style `stop` lists become) are served."""
    extra = {
        "stop_words": np.array([["zebra", "quantum leap"]], dtype=object),
        "bad_words": np.array([["three", "the"]], dtype=object),
    }
    assert _text(stream_call(triton_node.grpc_url, model, end_to_end_inputs([PROMPT], 10, **extra)))


def test_a_stop_word_ends_the_generation(triton_node: TritonNode) -> None:
    """Stop at the third generated token: that token is the last one sent."""
    base = inflight_batcher_inputs([1, 50, 60, 70], 12)
    reference = _ids(stream_call(triton_node.grpc_url, "tensorrt_llm", base))
    word = np.array([[[reference[2]], [1]]], dtype=np.int32)
    stopped = _ids(
        stream_call(
            triton_node.grpc_url,
            "tensorrt_llm",
            inflight_batcher_inputs([1, 50, 60, 70], 12, stop_words_list=word),
        )
    )
    assert stopped == reference[: reference.index(reference[2]) + 1]


@pytest.mark.parametrize("model", FRONTS)
def test_penalties_change_a_repetitive_greedy_text(triton_node: TritonNode, model: str) -> None:
    plain = _text(stream_call(triton_node.grpc_url, model, end_to_end_inputs([PROMPT], 24)))
    penalised = {
        "repetition_penalty": np.array([[3.0]], dtype=np.float32),
        "presence_penalty": np.array([[1.0]], dtype=np.float32),
        "frequency_penalty": np.array([[1.0]], dtype=np.float32),
    }
    inputs = end_to_end_inputs([PROMPT], 24, **penalised)
    assert _text(stream_call(triton_node.grpc_url, model, inputs)) != plain


@pytest.mark.parametrize("exclude", [True, False])
def test_exclude_input_in_output_on_token_ids(triton_node: TritonNode, exclude: bool) -> None:
    prompt = [1, 50, 60, 70]
    extra = {"exclude_input_in_output": np.array([[exclude]])}
    result = stream_call(
        triton_node.grpc_url, "tensorrt_llm", inflight_batcher_inputs(prompt, 6, **extra)
    )
    ids = _ids(result)
    length = int(result.outputs("sequence_length")[0].reshape(-1)[0])
    assert len(ids) == length == (6 if exclude else 6 + len(prompt))
    assert (ids[: len(prompt)] == prompt) is not exclude


@pytest.mark.parametrize("streaming", [False, True])
def test_inflight_batcher_client_with_counts_and_perf(
    triton_node: TritonNode, streaming: bool
) -> None:
    extra = {
        "return_num_input_tokens": np.array([[True]]),
        "return_num_output_tokens": np.array([[True]]),
        "return_perf_metrics": np.array([[True]]),
        "return_log_probs": np.array([[True]]),
    }
    result = stream_call(
        triton_node.grpc_url,
        "tensorrt_llm",
        inflight_batcher_inputs([1, 5, 9, 13, 17], 8, streaming=streaming, **extra),
    )
    ids = _ids(result)
    assert len(ids) == 8 and len(result.outputs("output_ids")) == (8 if streaming else 1)
    last = result.responses[-2] if result.responses[-1].as_numpy("output_ids") is None else None
    last = last or result.responses[-1]
    assert int(last.as_numpy("num_input_tokens").reshape(-1)[0]) == 5
    assert int(last.as_numpy("num_output_tokens").reshape(-1)[0]) == 8
    times = [
        int(last.as_numpy(n).reshape(-1)[0])
        for n in (
            "arrival_time_ns",
            "first_scheduled_time_ns",
            "first_token_time_ns",
            "last_token_time_ns",
        )
    ]
    assert times == sorted(times) and times[0] > 0
    total = int(last.as_numpy("kv_cache_alloc_total_blocks").reshape(-1)[0])
    new = int(last.as_numpy("kv_cache_alloc_new_blocks").reshape(-1)[0])
    reused = int(last.as_numpy("kv_cache_reused_blocks").reshape(-1)[0])
    assert total == new + reused >= 1
    log_probs = np.concatenate([p.reshape(-1) for p in result.outputs("output_log_probs")])
    assert log_probs.size == 8 and (log_probs <= 0).all()


def test_outputs_not_asked_for_are_not_sent(triton_node: TritonNode) -> None:
    result = stream_call(
        triton_node.grpc_url, "tensorrt_llm", inflight_batcher_inputs([1, 5, 9], 4)
    )
    assert result.error is None
    for name in ("cum_log_probs", "output_log_probs", "context_logits", "num_input_tokens"):
        assert not result.outputs(name), name


def test_logits_on_the_cpu_engine(triton_node: TritonNode) -> None:
    extra = {
        "return_context_logits": np.array([[True]]),
        "return_generation_logits": np.array([[True]]),
    }
    result = stream_call(
        triton_node.grpc_url, "tensorrt_llm", inflight_batcher_inputs([1, 5, 9, 13], 3, **extra)
    )
    assert result.error is None, result.error
    context = result.outputs("context_logits")[0]
    generation = result.outputs("generation_logits")[0]
    assert context.shape[:2] == (1, 4) and context.shape[2] >= 2048
    assert generation.shape[:3] == (1, 1, 3)
    greedy = generation[0, 0].argmax(axis=-1).tolist()
    assert greedy == _ids(result), "greedy tokens are the argmax of their logits"


@pytest.mark.parametrize("model", FRONTS)
def test_num_return_sequences(triton_node: TritonNode, model: str) -> None:
    extra = {
        "num_return_sequences": np.array([[2]], dtype=np.int32),
        "top_k": np.array([[40]], dtype=np.int32),
        "seed": np.array([[5]], dtype=np.uint64),
        "exclude_input_in_output": np.array([[True]]),
    }
    result = stream_call(
        triton_node.grpc_url,
        model,
        end_to_end_inputs([PROMPT], 12, **extra),
        outputs=["text_output", "sequence_index"],
    )
    assert result.error is None, result.error
    by_index = {
        int(r.as_numpy("sequence_index").reshape(-1)[0]): r.as_numpy("text_output").reshape(-1)[0]
        for r in result.responses
        if r.as_numpy("text_output") is not None
    }
    assert sorted(by_index) == [0, 1]
    assert by_index[0] != by_index[1], "two samples of one prompt should differ"


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("beam_width", np.array([[2]], dtype=np.int32)),
        ("lora_task_id", np.array([[3]], dtype=np.uint64)),
        ("guided_decoding_guide_type", np.array([[b"json"]], dtype=object)),
        ("decoder_text_input", np.array([[b"an encoder prompt"]], dtype=object)),
    ],
)
@pytest.mark.parametrize("model", FRONTS)
def test_values_an_engine_cannot_honour_are_refused(
    triton_node: TritonNode, model: str, name: str, value: np.ndarray
) -> None:
    inputs = [t for t in end_to_end_inputs([PROMPT], 4) if t.name() != name]
    result = stream_call(triton_node.grpc_url, model, [*inputs, tensor(name, value)])
    assert result.error is not None and name.split("_input")[0] in result.error, result.error
    assert _text(stream_call(triton_node.grpc_url, model, end_to_end_inputs([PROMPT], 4)))


# -- decoupled_mode false: unary infer -----------------------------------------------------


@pytest.mark.parametrize("model", FRONTS)
def test_unary_infer_on_a_non_decoupled_front(unary_node: TritonNode, model: str) -> None:
    http = httpclient.InferenceServerClient(unary_node.http_url, network_timeout=120)
    text = httpclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[PROMPT]], dtype=object))
    max_tokens = httpclient.InferInput("max_tokens", [1, 1], "INT32")
    max_tokens.set_data_from_numpy(np.array([[8]], dtype=np.int32))
    result = http.infer(model, [text, max_tokens])
    assert result.as_numpy("text_output").reshape(-1)[0]
    grpc = grpcclient.InferenceServerClient(unary_node.grpc_url)
    batch = grpc.infer(model, end_to_end_inputs(["one", "two more words"], 6))
    assert batch.as_numpy("text_output").shape[0] == 2


def test_unary_infer_on_non_decoupled_tensorrt_llm(unary_node: TritonNode) -> None:
    grpc = grpcclient.InferenceServerClient(unary_node.grpc_url)
    result = grpc.infer("tensorrt_llm", inflight_batcher_inputs([1, 50, 60], 5))
    assert result.as_numpy("output_ids").shape == (1, 1, 5)
    assert result.as_numpy("sequence_length").tolist() == [[5]]


def test_streaming_on_a_non_decoupled_model_is_refused(unary_node: TritonNode) -> None:
    grpc = grpcclient.InferenceServerClient(unary_node.grpc_url)
    for model in FRONTS:
        with pytest.raises(InferenceServerException, match="decoupled"):
            grpc.infer(model, end_to_end_inputs([PROMPT], 4, stream=True))
    assert grpc.infer("ensemble", end_to_end_inputs([PROMPT], 4)).as_numpy("text_output").size
