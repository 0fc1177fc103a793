"""Unit tests for router.models.ServedModel over the seeded tiny Llama checkpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from router.api.openai import ChatMessage
from router.models import ModelConfig, ServedModel


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> ServedModel:
    return ServedModel(ModelConfig(name="tiny", tokenizer_dir=tiny_model_dir))


CHAT = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hello there"},
]


def test_render_chat_leaves_out_the_bos_text(model: ServedModel) -> None:
    bos = model.tokenizer.bos_token
    assert bos
    raw = model.tokenizer.apply_chat_template(CHAT, tokenize=False, add_generation_prompt=True)
    assert str(raw).startswith(bos)  # the template writes it ...
    text = model.render_chat(CHAT)
    assert not text.startswith(bos)  # ... and the router leaves it to the nodes
    assert bos not in text
    assert "Hello there" in text
    assert text.endswith("assistant<|end_header_id|>\n\n")  # the generation prompt


def test_encoded_chat_starts_with_exactly_one_bos(model: ServedModel) -> None:
    bos_id = model.tokenizer.bos_token_id
    ids = model.encode(model.render_chat(CHAT))
    assert ids[0] == bos_id
    assert ids[1] != bos_id
    assert ids.count(bos_id) == 1


def test_encode_adds_bos_to_plain_text(model: ServedModel) -> None:
    ids = model.encode("hello")
    assert ids[0] == model.tokenizer.bos_token_id
    assert model.decode(ids) == "hello"


def test_tool_and_assistant_tool_call_messages_render(model: ServedModel) -> None:
    messages = [
        ChatMessage(role="user", content="Weather in Paris?"),
        ChatMessage(
            role="assistant",
            content=None,
            tool_calls=[
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        ),
        ChatMessage(role="tool", content='{"temp_c": 21}', tool_call_id="call_1"),
    ]
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    text = model.render_chat([m.for_template() for m in messages], tools)
    assert '{"temp_c": 21}' in text  # the tool's result
    assert "get_weather" in text  # the assistant's call
    assert '\\"city\\"' not in text  # its arguments went in as an object, not a string
    assert not text.startswith(model.tokenizer.bos_token)
    assert model.encode(text).count(model.tokenizer.bos_token_id) == 1


def test_max_context_read_from_config_json(model: ServedModel, tiny_model_dir: Path) -> None:
    expected = json.loads((tiny_model_dir / "config.json").read_text())["max_position_embeddings"]
    assert model.max_context == expected == 2048


def test_max_context_from_the_config_wins(tiny_model_dir: Path) -> None:
    served = ServedModel(ModelConfig(name="t", tokenizer_dir=tiny_model_dir, max_context=512))
    assert served.max_context == 512


def test_blocks_hash_full_blocks_only(model: ServedModel) -> None:
    assert model.config.block_size == 16
    assert len(model.blocks(list(range(40)))) == 2
    assert model.blocks(list(range(15))) == ()
    assert model.blocks(list(range(32)))[:1] == model.blocks(list(range(16)))
