"""Unit tests for router.tool_calls: Llama 3 JSON and Hermes tool-call parsers."""

from __future__ import annotations

import json

import pytest

from router.tool_calls import PARSERS, hermes, llama3_json, no_tools


def _names(calls: list[dict]) -> list[str]:
    return [c["function"]["name"] for c in calls]


def _args(call: dict) -> object:
    arguments = call["function"]["arguments"]
    assert isinstance(arguments, str), "OpenAI sends arguments as a JSON string"
    return json.loads(arguments)


# -- llama3_json ---------------------------------------------------------------------------
def test_llama3_single_call() -> None:
    content, calls = llama3_json('{"name": "get_weather", "parameters": {"city": "Paris"}}')
    assert content is None
    assert len(calls) == 1
    call = calls[0]
    assert call["type"] == "function"
    assert call["id"].startswith("call_")
    assert call["function"]["name"] == "get_weather"
    assert _args(call) == {"city": "Paris"}


def test_llama3_python_tag_prefix_and_whitespace() -> None:
    text = '  <|python_tag|> {"name": "search", "parameters": {"q": "ünïcode"}}\n'
    content, calls = llama3_json(text)
    assert content is None
    assert _names(calls) == ["search"]
    assert _args(calls[0]) == {"q": "ünïcode"}


def test_llama3_several_calls_separated_by_semicolons() -> None:
    text = (
        '{"name": "a", "parameters": {"x": 1}}; {"name": "b", "parameters": {"y": [1, 2]}};'
        '{"name": "c", "parameters": {}}'
    )
    content, calls = llama3_json(text)
    assert content is None
    assert _names(calls) == ["a", "b", "c"]
    assert [_args(c) for c in calls] == [{"x": 1}, {"y": [1, 2]}, {}]


def test_llama3_newline_separated_calls() -> None:
    content, calls = llama3_json('{"name": "a", "parameters": {}}\n{"name": "b", "parameters": {}}')
    assert content is None
    assert _names(calls) == ["a", "b"]


@pytest.mark.parametrize(
    "text",
    [
        "The weather in Paris is sunny.",
        'I would call {"name": "get_weather", "parameters": {}} but I will not.',
        "",
    ],
)
def test_llama3_prose_stays_content(text: str) -> None:
    assert llama3_json(text) == (text, [])


@pytest.mark.parametrize(
    "text",
    [
        '{"name": "get_weather", "parameters": {"city": "Par',
        '{"name": "a", "parameters": {}}; {"name": "b", "parameters": ',
        "{not json at all}",
    ],
)
def test_llama3_malformed_json_stays_content(text: str) -> None:
    assert llama3_json(text) == (text, [])


def test_llama3_json_object_without_a_name_stays_content() -> None:
    text = '{"city": "Paris", "temperature": 21}'
    assert llama3_json(text) == (text, [])


def test_llama3_a_nameless_object_among_calls_makes_it_all_content() -> None:
    text = '{"name": "a", "parameters": {}}; {"city": "Paris"}'
    assert llama3_json(text) == (text, [])


def test_llama3_parameters_and_arguments_are_both_accepted() -> None:
    _, with_parameters = llama3_json('{"name": "f", "parameters": {"a": 1}}')
    _, with_arguments = llama3_json('{"name": "f", "arguments": {"a": 1}}')
    _, with_neither = llama3_json('{"name": "f"}')
    assert _args(with_parameters[0]) == _args(with_arguments[0]) == {"a": 1}
    assert _args(with_neither[0]) == {}


def test_llama3_parameters_win_over_arguments() -> None:
    _, calls = llama3_json('{"name": "f", "parameters": {"p": 1}, "arguments": {"a": 2}}')
    assert _args(calls[0]) == {"p": 1}


def test_llama3_arguments_already_a_string_are_kept_verbatim() -> None:
    _, calls = llama3_json('{"name": "f", "arguments": "{\\"a\\": 1}"}')
    assert calls[0]["function"]["arguments"] == '{"a": 1}'


def test_llama3_prose_after_a_call_is_not_dropped() -> None:
    text = '{"name": "get_weather", "parameters": {"city": "Paris"}} I hope this helps!'
    content, _ = llama3_json(text)
    assert content is not None
    assert "I hope this helps!" in content


# -- hermes --------------------------------------------------------------------------------
def test_hermes_one_call_with_surrounding_text() -> None:
    text = (
        "Let me look that up.\n"
        '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
        "One moment."
    )
    content, calls = hermes(text)
    assert _names(calls) == ["get_weather"]
    assert _args(calls[0]) == {"city": "Paris"}
    assert content is not None
    assert "Let me look that up." in content
    assert "One moment." in content
    assert "<tool_call>" not in content


def test_hermes_two_calls() -> None:
    text = (
        "Checking both.\n"
        '<tool_call>{"name": "a", "arguments": {"x": {"nested": true}}}</tool_call>\n'
        '<tool_call>{"name": "b", "arguments": {}}</tool_call>'
    )
    content, calls = hermes(text)
    assert content == "Checking both."
    assert _names(calls) == ["a", "b"]
    assert _args(calls[0]) == {"x": {"nested": True}}


def test_hermes_only_calls_has_no_content() -> None:
    content, calls = hermes('<tool_call>{"name": "a", "arguments": {}}</tool_call>')
    assert content is None
    assert _names(calls) == ["a"]


def test_hermes_malformed_block_is_ignored() -> None:
    text = (
        '<tool_call>{"name": "broken", "arguments": {"x": 1}</tool_call>\n'
        '<tool_call>{"name": "good", "arguments": {"k": "v"}}</tool_call>'
    )
    _, calls = hermes(text)
    assert _names(calls) == ["good"]
    assert _args(calls[0]) == {"k": "v"}


def test_hermes_malformed_block_without_a_closing_brace_keeps_the_next_call() -> None:
    text = (
        '<tool_call>{"name": "broken", "arguments": {</tool_call>\n'
        '<tool_call>{"name": "good", "arguments": {"k": "v"}}</tool_call>'
    )
    _, calls = hermes(text)
    assert _names(calls) == ["good"]


def test_hermes_only_malformed_blocks_stay_content() -> None:
    text = 'Sure. <tool_call>{"name": "broken", "arguments": {</tool_call>'
    assert hermes(text) == (text, [])


def test_hermes_block_without_a_name_is_ignored() -> None:
    text = '<tool_call>{"arguments": {}}</tool_call>'
    assert hermes(text) == (text, [])


def test_hermes_prose_stays_content() -> None:
    assert hermes("no calls here") == ("no calls here", [])


# -- ids and the registry --------------------------------------------------------------------
def test_call_ids_are_unique() -> None:
    text = "; ".join('{"name": "f", "parameters": {}}' for _ in range(20))
    _, calls = llama3_json(text)
    _, more = hermes("".join('<tool_call>{"name": "g", "arguments": {}}</tool_call>' * 20))
    ids = [c["id"] for c in calls + more]
    assert len(ids) == 40
    assert len(set(ids)) == 40


def test_registry() -> None:
    assert set(PARSERS) == {"llama3_json", "hermes", "none"}
    text = '{"name": "f", "parameters": {}}'
    assert no_tools(text) == (text, [])
    assert PARSERS["none"](text) == (text, [])
