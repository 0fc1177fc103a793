"""Unit tests for BlsPipeline with a fake ``call`` that emulates the three inner models.

The fake preprocessing turns each character of the text into a token (its code point), the
fake tensorrt_llm "generates" letters ``a, b, c, ...`` (one response per token when
streaming, one per sequence when decoupled, one for the whole request otherwise), and the
fake postprocessing turns token ids back into characters.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from python_backends.bls import FRONT, BlsError, BlsPipeline, Tensors
from python_backends.contract import (
    MODELS,
    PREPROCESSING_FROM_FRONT,
    TRTLLM_FROM_FRONT,
    TRTLLM_FROM_PREPROCESSING,
    routed_inputs,
)

TRTLLM = "tensorrt_llm"
FIRST_TOKEN = ord("a")


def _scalar(value: np.ndarray | None, default: int = 0) -> int:
    return default if value is None else int(np.asarray(value).reshape(-1)[0])


class FakeModels:
    """The ``call`` the pipeline is given: records every call and emulates each model."""

    def __init__(self, trtllm_error: Exception | None = None) -> None:
        self.calls: list[tuple[str, dict[str, np.ndarray], bool]] = []
        self.trtllm_error = trtllm_error

    def __call__(self, model: str, inputs: Tensors, decoupled: bool) -> Iterator[Tensors]:
        self.calls.append((model, dict(inputs), decoupled))
        if model == "preprocessing":
            yield self._preprocess(inputs)
        elif model == TRTLLM:
            if self.trtllm_error is not None:
                raise self.trtllm_error
            yield from self._generate(inputs, decoupled)
        elif model == "postprocessing":
            yield self._postprocess(inputs)
        else:
            raise AssertionError(f"unexpected model {model}")

    def inputs_of(self, model: str) -> dict[str, np.ndarray]:
        (found,) = [inputs for name, inputs, _ in self.calls if name == model]
        return found

    @staticmethod
    def _preprocess(inputs: Tensors) -> Tensors:
        texts = [q.decode() for q in np.asarray(inputs["QUERY"]).reshape(-1)]
        width = max(len(t) for t in texts)
        ids = np.zeros((len(texts), width), dtype=np.int32)
        for row, text in enumerate(texts):
            ids[row, : len(text)] = [ord(c) for c in text]
        batch = len(texts)
        return {
            "INPUT_ID": ids,
            "REQUEST_INPUT_LEN": np.array([[len(t)] for t in texts], dtype=np.int32),
            "REQUEST_OUTPUT_LEN": np.asarray(inputs["REQUEST_OUTPUT_LEN"]).reshape(batch, 1),
            "OUT_END_ID": np.full((batch, 1), 2, dtype=np.int32),
            "OUT_PAD_ID": np.full((batch, 1), 0, dtype=np.int32),
            "BAD_WORDS_IDS": np.full((batch, 2, 1), -1, dtype=np.int32),
            "STOP_WORDS_IDS": np.full((batch, 2, 1), -1, dtype=np.int32),
            "EMBEDDING_BIAS": np.empty((batch, 0), dtype=np.float32),
            "IS_VIDEO_INPUT": np.zeros((batch, 1), dtype=np.bool_),  # not a tensorrt_llm input
        }

    @staticmethod
    def _generate(inputs: Tensors, decoupled: bool) -> Iterator[Tensors]:
        lengths = np.asarray(inputs["request_output_len"]).reshape(-1)
        batch = lengths.size
        per_row = _scalar(inputs.get("num_return_sequences"), 1)
        streaming = bool(_scalar(inputs.get("streaming")))
        sequences = {
            (row, seq): list(range(FIRST_TOKEN + seq, FIRST_TOKEN + seq + int(lengths[row])))
            for row in range(batch)
            for seq in range(per_row)
        }

        def one(row: int, seq: int, tokens: list[int]) -> Tensors:
            return {
                "output_ids": np.asarray(tokens, dtype=np.int32).reshape(1, 1, -1),
                "sequence_length": np.array([[len(tokens)]], dtype=np.int32),
                "batch_index": np.array([[row]], dtype=np.int32),
                "sequence_index": np.array([[seq]], dtype=np.int32),
                "cum_log_probs": np.array([[-1.0]], dtype=np.float32),
                "context_phase_params": np.zeros((1, 4), dtype=np.uint8),  # not a front output
            }

        if not decoupled:
            width = max(len(t) for t in sequences.values())
            ids = np.zeros((batch, per_row, width), dtype=np.int32)
            seq_len = np.zeros((batch, per_row), dtype=np.int32)
            for (row, seq), tokens in sequences.items():
                ids[row, seq, : len(tokens)] = tokens
                seq_len[row, seq] = len(tokens)
            yield {"output_ids": ids, "sequence_length": seq_len}
        elif streaming:
            step = 0
            while any(step < len(t) for t in sequences.values()):
                for (row, seq), tokens in sequences.items():
                    if step < len(tokens):
                        yield one(row, seq, tokens[step : step + 1])
                step += 1
            yield {}  # the empty final response of a decoupled model
        else:
            for (row, seq), tokens in sequences.items():
                yield one(row, seq, tokens)

    @staticmethod
    def _postprocess(inputs: Tensors) -> Tensors:
        tokens = np.asarray(inputs["TOKENS_BATCH"])
        lengths = np.asarray(inputs["SEQUENCE_LENGTH"]).reshape(tokens.shape[0], -1)
        out = np.empty(lengths.shape, dtype=np.object_)
        for row in range(tokens.shape[0]):
            for beam in range(lengths.shape[1]):
                ids = tokens[row, beam, : lengths[row, beam]]
                out[row, beam] = "".join(chr(int(t)) for t in ids).encode()
        return {"OUTPUT": out}


def _front(**extra: Any) -> dict[str, np.ndarray]:
    inputs: dict[str, Any] = {
        "text_input": np.array([[b"hi there"]], dtype=np.object_),
        "max_tokens": np.array([[3]], dtype=np.int32),
        **extra,
    }
    return {k: np.asarray(v) for k, v in inputs.items()}


def _run(
    inputs: dict[str, np.ndarray], decoupled: bool = True, accumulate: bool = False
) -> tuple[list[Tensors], FakeModels]:
    models = FakeModels()
    pipeline = BlsPipeline(models, decoupled, accumulate, TRTLLM)
    return list(pipeline.run(inputs)), models


def _texts(responses: list[Tensors]) -> dict[tuple[int, int], list[str]]:
    by_sequence: dict[tuple[int, int], list[str]] = {}
    for response in responses:
        key = (int(response["batch_index"][0, 0]), int(response["sequence_index"][0, 0]))
        by_sequence.setdefault(key, []).append(response["text_output"].reshape(-1)[0].decode())
    return by_sequence


# -- routing --------------------------------------------------------------------------------
def test_inputs_are_routed_by_the_contract_maps() -> None:
    _, models = _run(
        _front(
            top_k=np.array([[40]], dtype=np.int32),
            top_p=np.array([[0.5]], dtype=np.float32),
            stream=np.array([[True]]),
            length_penalty=np.array([[1.5]], dtype=np.float32),
            end_id=np.array([[7]], dtype=np.int32),
        )
    )

    pre = models.inputs_of("preprocessing")
    trt = models.inputs_of(TRTLLM)
    assert pre["REQUEST_OUTPUT_LEN"].tolist() == [[3]]  # max_tokens
    assert pre["QUERY"].tolist() == [[b"hi there"]]  # text_input
    assert pre["END_ID"].tolist() == [[7]]  # end_id
    assert trt["runtime_top_k"].tolist() == [[40]]  # top_k
    assert trt["runtime_top_p"].tolist() == [[0.5]]  # top_p
    assert trt["streaming"].tolist() == [[True]]  # stream
    assert trt["len_penalty"].tolist() == [[1.5]]  # length_penalty
    assert "top_k" not in trt and "stream" not in trt and "max_tokens" not in trt
    assert "top_k" not in pre and "runtime_top_k" not in pre


def test_preprocessing_outputs_feed_tensorrt_llm() -> None:
    _, models = _run(_front())

    trt = models.inputs_of(TRTLLM)
    assert trt["input_ids"].tolist() == [[ord(c) for c in "hi there"]]
    assert trt["input_lengths"].tolist() == [[8]]
    assert trt["request_output_len"].tolist() == [[3]]
    assert trt["end_id"].tolist() == [[2]]
    assert trt["pad_id"].tolist() == [[0]]
    assert trt["embedding_bias"].shape == (1, 0)
    assert trt["stop_words_list"].shape == trt["bad_words_list"].shape == (1, 2, 1)
    assert set(trt) <= set(MODELS[TRTLLM].input_names)  # IS_VIDEO_INPUT stays behind


def test_every_routed_front_input_reaches_its_target() -> None:
    pre_routes = routed_inputs(FRONT, PREPROCESSING_FROM_FRONT)
    trt_routes = routed_inputs(FRONT, TRTLLM_FROM_FRONT)
    sources = set(pre_routes.values()) | set(trt_routes.values())
    unique = {name: np.array([[1000 + i]]) for i, name in enumerate(sorted(sources))}
    inputs = {
        **unique,
        "text_input": np.array([[b"hi"]], dtype=np.object_),
        "max_tokens": np.array([[2]], dtype=np.int32),
        "stream": np.array([[False]]),
        "num_return_sequences": np.array([[1]], dtype=np.int32),
    }

    _, models = _run(inputs)

    pre, trt = models.inputs_of("preprocessing"), models.inputs_of(TRTLLM)
    assert set(pre) == set(pre_routes)
    for target, source in pre_routes.items():
        np.testing.assert_array_equal(pre[target], inputs[source], err_msg=target)
    for target, source in trt_routes.items():
        np.testing.assert_array_equal(trt[target], inputs[source], err_msg=target)
    assert set(trt) == set(trt_routes) | {
        t for t, s in TRTLLM_FROM_PREPROCESSING.items() if s in FakeModels._preprocess(pre)
    }


def test_scalar_front_inputs_get_their_batch_dim_back() -> None:
    """Triton hands a ``reshape: []`` input over as ``[B]``; tensorrt_llm gets ``[B, 1]``."""
    _, models = _run(
        _front(
            num_return_sequences=np.array([2], dtype=np.int32),
            return_log_probs=np.array([True]),
            top_k=np.array([[40]], dtype=np.int32),
        )
    )

    trt = models.inputs_of(TRTLLM)
    assert trt["num_return_sequences"].tolist() == [[2]]
    assert trt["return_log_probs"].tolist() == [[True]]
    assert trt["runtime_top_k"].tolist() == [[40]]


def test_absent_inputs_are_not_invented() -> None:
    _, models = _run(_front())

    assert set(models.inputs_of("preprocessing")) == {"QUERY", "REQUEST_OUTPUT_LEN"}
    assert not set(models.inputs_of(TRTLLM)) & set(TRTLLM_FROM_FRONT)


@pytest.mark.parametrize("decoupled", [True, False])
def test_inner_models_are_called_in_order_with_the_right_mode(decoupled: bool) -> None:
    _, models = _run(_front(), decoupled=decoupled)

    assert [(m, d) for m, _, d in models.calls] == [
        ("preprocessing", False),
        (TRTLLM, decoupled),
        ("postprocessing", False),
    ]


def test_trtllm_model_name_is_configurable() -> None:
    models = FakeModels()
    pipeline = BlsPipeline(
        lambda m, i, d: models(TRTLLM if m == "my_llm" else m, i, d), True, False, "my_llm"
    )

    responses = list(pipeline.run(_front()))

    assert [r["text_output"].tolist() for r in responses] == [[[b"abc"]]]


# -- responses ----------------------------------------------------------------------------
def test_front_response_carries_text_and_declared_trtllm_outputs() -> None:
    (response,), _ = _run(_front())

    assert response["text_output"].tolist() == [[b"abc"]]
    assert response["output_ids"].tolist() == [[[97, 98, 99]]]
    assert response["sequence_length"].tolist() == [[3]]
    assert response["cum_log_probs"].tolist() == [[-1.0]]
    assert "context_phase_params" not in response
    assert set(response) <= set(MODELS[FRONT].output_names)


def test_num_return_sequences_is_forwarded() -> None:
    responses, models = _run(_front(num_return_sequences=np.array([[2]], dtype=np.int32)))

    assert models.inputs_of(TRTLLM)["num_return_sequences"].tolist() == [[2]]
    assert _texts(responses) == {(0, 0): ["abc"], (0, 1): ["bcd"]}


def test_not_decoupled_gets_one_response_for_every_sequence() -> None:
    responses, _ = _run(
        _front(num_return_sequences=np.array([[2]], dtype=np.int32)), decoupled=False
    )

    (response,) = responses
    assert response["text_output"].tolist() == [[b"abc", b"bcd"]]
    assert response["output_ids"].shape == (1, 2, 3)


def test_stream_true_needs_a_decoupled_pipeline() -> None:
    models = FakeModels()
    pipeline = BlsPipeline(models, decoupled=False, accumulate_tokens=False, trtllm_model=TRTLLM)

    with pytest.raises(BlsError, match="decoupled"):
        list(pipeline.run(_front(stream=np.array([[True]]))))
    assert models.calls == []


def test_stream_false_on_a_non_decoupled_pipeline_is_served() -> None:
    responses, _ = _run(_front(stream=np.array([[False]])), decoupled=False)

    assert [r["text_output"].tolist() for r in responses] == [[[b"abc"]]]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("image_input", np.ones((1, 1, 3, 2, 2), dtype=np.float16)),
        ("num_draft_tokens", np.array([[4]], dtype=np.int32)),
        ("use_draft_logits", np.array([[True]])),
    ],
)
def test_unsupported_inputs_are_refused_by_name(name: str, value: np.ndarray) -> None:
    models = FakeModels()

    with pytest.raises(BlsError, match=name):
        list(BlsPipeline(models, True, False, TRTLLM).run(_front(**{name: value})))
    assert models.calls == []


def test_use_draft_logits_false_is_not_a_request_for_them() -> None:
    responses, _ = _run(_front(use_draft_logits=np.array([[False]])))

    assert len(responses) == 1


def test_an_inner_error_reaches_the_caller() -> None:
    models = FakeModels(trtllm_error=RuntimeError("engine is dead"))

    with pytest.raises(RuntimeError, match="engine is dead"):
        list(BlsPipeline(models, True, False, TRTLLM).run(_front()))


# -- streaming and accumulate_tokens ---------------------------------------------------------------
STREAM_TWO = {
    "stream": np.array([[True]]),
    "num_return_sequences": np.array([[2]], dtype=np.int32),
}


def test_streaming_sends_the_text_of_each_new_token() -> None:
    responses, _ = _run(_front(**STREAM_TWO))

    assert _texts(responses) == {(0, 0): ["a", "b", "c"], (0, 1): ["b", "c", "d"]}


def test_accumulate_tokens_streams_the_text_so_far() -> None:
    responses, _ = _run(_front(**STREAM_TWO), accumulate=True)

    assert _texts(responses) == {(0, 0): ["a", "ab", "abc"], (0, 1): ["b", "bc", "bcd"]}
    assert [r["sequence_length"].tolist() for r in responses[:2]] == [[[1]], [[1]]]


def test_accumulate_tokens_keeps_batch_rows_apart() -> None:
    inputs = _front(
        text_input=np.array([[b"one"], [b"two"]], dtype=np.object_),
        max_tokens=np.array([[2], [3]], dtype=np.int32),
        stream=np.array([[True], [True]]),
    )

    responses, _ = _run(inputs, accumulate=True)

    assert _texts(responses) == {(0, 0): ["a", "ab"], (1, 0): ["a", "ab", "abc"]}


def test_accumulate_tokens_without_streaming_changes_nothing() -> None:
    responses, _ = _run(_front(num_return_sequences=np.array([[2]], dtype=np.int32)), True, True)

    assert _texts(responses) == {(0, 0): ["abc"], (0, 1): ["bcd"]}


def test_accumulate_tokens_is_off_when_not_decoupled() -> None:
    pipeline = BlsPipeline(
        FakeModels(), decoupled=False, accumulate_tokens=True, trtllm_model=TRTLLM
    )

    assert pipeline.accumulate is False
