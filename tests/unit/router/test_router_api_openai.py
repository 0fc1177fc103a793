"""Unit tests for router.api.openai: OpenAI sampling → ensemble tensors, chat messages →
chat-template messages."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from router.api.openai import (
    ChatMessage,
    ChatRequest,
    CompletionRequest,
    _stop_words,
    _template_call,
    _validate,
    ensemble_inputs,
)
from router.errors import BadRequest, Unprocessable


def _req(**kw: Any) -> CompletionRequest:
    return CompletionRequest.model_validate({"model": "m", "prompt": "hi", **kw})


def _scalar(inputs: dict[str, np.ndarray], name: str) -> Any:
    value = inputs[name]
    assert value.shape == (1, 1), f"{name} is one value per request"
    return value.reshape(-1)[0]


# -- ensemble_inputs -----------------------------------------------------------------------
def test_always_present_inputs() -> None:
    inputs = ensemble_inputs(_req(), "héllo", 32)
    assert inputs["text_input"].dtype == object
    assert _scalar(inputs, "text_input") == "héllo".encode()
    assert inputs["max_tokens"].dtype == np.int32
    assert _scalar(inputs, "max_tokens") == 32
    assert inputs["stream"].dtype == np.bool_
    assert not _scalar(inputs, "stream")
    assert _scalar(inputs, "exclude_input_in_output")


def test_stream_flag_is_forwarded() -> None:
    assert _scalar(ensemble_inputs(_req(stream=True), "p", 1), "stream")


def test_temperature_zero_is_greedy() -> None:
    inputs = ensemble_inputs(_req(temperature=0), "p", 8)
    assert inputs["top_k"].dtype == np.int32
    assert _scalar(inputs, "top_k") == 1
    assert "temperature" not in inputs
    assert "top_p" not in inputs


def test_defaults_sample_like_openai() -> None:
    inputs = ensemble_inputs(_req(), "p", 8)
    assert inputs["temperature"].dtype == np.float32
    assert _scalar(inputs, "temperature") == 1.0
    assert _scalar(inputs, "top_p") == 1.0
    assert "top_k" not in inputs


def test_temperature_and_top_p_are_forwarded() -> None:
    inputs = ensemble_inputs(_req(temperature=0.7, top_p=0.9), "p", 8)
    assert _scalar(inputs, "temperature") == pytest.approx(0.7)
    assert _scalar(inputs, "top_p") == pytest.approx(0.9)
    assert inputs["top_p"].dtype == np.float32


def test_seed_is_uint64() -> None:
    inputs = ensemble_inputs(_req(seed=2**64 - 1), "p", 8)
    assert inputs["seed"].dtype == np.uint64
    assert int(_scalar(inputs, "seed")) == 2**64 - 1
    assert "seed" not in ensemble_inputs(_req(), "p", 8)


def test_seed_zero_is_sent() -> None:
    assert int(_scalar(ensemble_inputs(_req(seed=0), "p", 8), "seed")) == 0


def test_n_is_num_return_sequences() -> None:
    inputs = ensemble_inputs(_req(n=3), "p", 8)
    assert inputs["num_return_sequences"].dtype == np.int32
    assert _scalar(inputs, "num_return_sequences") == 3
    assert "num_return_sequences" not in ensemble_inputs(_req(n=1), "p", 8)


def test_stop_string_becomes_stop_words() -> None:
    inputs = ensemble_inputs(_req(stop="\n\n"), "p", 8)
    assert inputs["stop_words"].shape == (1, 1)
    assert inputs["stop_words"].tolist() == [[b"\n\n"]]


def test_stop_list_becomes_stop_words_without_empty_strings() -> None:
    inputs = ensemble_inputs(_req(stop=["END", "", "ü"]), "p", 8)
    assert inputs["stop_words"].shape == (1, 2)
    assert inputs["stop_words"].tolist() == [[b"END", "ü".encode()]]


def test_no_stop_words_input_without_stops() -> None:
    assert "stop_words" not in ensemble_inputs(_req(stop=[]), "p", 8)
    assert "stop_words" not in ensemble_inputs(_req(stop=[""]), "p", 8)
    assert "stop_words" not in ensemble_inputs(_req(), "p", 8)


def test_more_than_sixteen_stops_are_refused() -> None:
    assert len(_stop_words([str(i) for i in range(16)])) == 16
    with pytest.raises(BadRequest, match="at most 16"):
        ensemble_inputs(_req(stop=[str(i) for i in range(17)]), "p", 8)


def test_penalties() -> None:
    inputs = ensemble_inputs(_req(presence_penalty=0.5, frequency_penalty=-1.25), "p", 8)
    assert inputs["presence_penalty"].dtype == np.float32
    assert _scalar(inputs, "presence_penalty") == pytest.approx(0.5)
    assert _scalar(inputs, "frequency_penalty") == pytest.approx(-1.25)
    neutral = ensemble_inputs(_req(presence_penalty=0, frequency_penalty=0), "p", 8)
    assert "presence_penalty" not in neutral
    assert "frequency_penalty" not in neutral


@pytest.mark.parametrize(
    ("field", "value"),
    [("temperature", 2.5), ("top_p", 0), ("n", 17), ("seed", -1), ("presence_penalty", 3)],
)
def test_out_of_range_sampling_is_unprocessable(field: str, value: Any) -> None:
    with pytest.raises(Unprocessable, match=field):
        _validate(CompletionRequest, {"model": "m", "prompt": "p", field: value})


def test_unknown_fields_are_ignored() -> None:
    req = _validate(ChatRequest, {"model": "m", "messages": [{"role": "user"}], "foo": 1})
    assert isinstance(req, ChatRequest)


# -- ChatMessage.for_template ----------------------------------------------------------------
def test_text_parts_are_joined() -> None:
    message = ChatMessage(
        role="user",
        content=[{"type": "text", "text": "Hello, "}, {"type": "text", "text": "wörld"}],
    )
    assert message.for_template() == {"role": "user", "content": "Hello, wörld"}


def test_non_text_parts_are_refused() -> None:
    message = ChatMessage(
        role="user",
        content=[
            {"type": "text", "text": "look"},
            {"type": "image_url", "image_url": {"url": "http://x"}},
        ],
    )
    with pytest.raises(BadRequest, match="text content parts"):
        message.for_template()


def test_developer_is_system() -> None:
    assert ChatMessage(role="developer", content="rules").for_template() == {
        "role": "system",
        "content": "rules",
    }


def test_missing_content_is_an_empty_string() -> None:
    assert ChatMessage(role="assistant").for_template()["content"] == ""


def test_tool_calls_arguments_string_becomes_a_dict() -> None:
    call: dict[str, Any] = {
        "id": "call_1",
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"city": "Paris", "days": 2}'},
    }
    message = ChatMessage(role="assistant", content=None, tool_calls=[call])
    out = message.for_template()
    assert out["tool_calls"] == [
        {
            "id": "call_1",
            "type": "function",
            "function": {"name": "get_weather", "arguments": {"city": "Paris", "days": 2}},
        }
    ]
    # The client's message is not modified.
    assert call["function"]["arguments"] == '{"city": "Paris", "days": 2}'


def test_tool_calls_arguments_that_are_not_json_stay_a_string() -> None:
    out = _template_call({"function": {"name": "f", "arguments": "{not json"}})
    assert out["function"]["arguments"] == "{not json"


def test_tool_calls_arguments_already_a_dict_are_kept() -> None:
    out = _template_call({"function": {"name": "f", "arguments": {"a": 1}}})
    assert out["function"]["arguments"] == {"a": 1}


def test_tool_message_keeps_its_call_id_and_name() -> None:
    message = ChatMessage(role="tool", content="21C", tool_call_id="call_1", name="get_weather")
    assert message.for_template() == {
        "role": "tool",
        "content": "21C",
        "tool_call_id": "call_1",
        "name": "get_weather",
    }


def test_unknown_role_is_unprocessable() -> None:
    with pytest.raises(Unprocessable, match="role"):
        _validate(ChatRequest, {"model": "m", "messages": [{"role": "wizard", "content": "x"}]})
