"""Tool calls in generated text, one parser per chat-template family (as vLLM has).

A parser turns the model's raw completion into ``(content, tool_calls)`` in OpenAI's
shape. Text that does not parse as a call stays content: a model that answers in prose
is never turned into a broken call.
"""

from __future__ import annotations

import json
import re
import uuid
from collections.abc import Callable
from typing import Any

ToolCall = dict[str, Any]
Parser = Callable[[str], tuple[str | None, list[ToolCall]]]


def _call(name: str, arguments: object) -> ToolCall:
    args = arguments if isinstance(arguments, str) else json.dumps(arguments)
    return {
        "id": f"call_{uuid.uuid4().hex[:24]}",
        "type": "function",
        "function": {"name": name, "arguments": args},
    }


def _json_objects(text: str) -> list[dict[str, Any]] | None:
    """The JSON objects ``text`` consists of (separated by whitespace or ``;``), or None if
    anything else is in it."""
    decoder = json.JSONDecoder()
    found: list[dict[str, Any]] = []
    index = 0
    while index < len(text):
        if text[index].isspace() or text[index] == ";":
            index += 1
            continue
        try:
            value, index = decoder.raw_decode(text, index)
        except json.JSONDecodeError:
            return None
        if not isinstance(value, dict):
            return None
        found.append(value)
    return found


def llama3_json(text: str) -> tuple[str | None, list[ToolCall]]:
    """Llama 3.1+ JSON calls: ``{"name": …, "parameters": {…}}``, optionally after
    ``<|python_tag|>``, several separated by ``;``. Only a completion that is nothing but
    calls counts as calls."""
    body = text.strip().removeprefix("<|python_tag|>").strip()
    if not body.startswith("{"):
        return text, []
    objects = _json_objects(body)
    if not objects or any("name" not in o for o in objects):
        return text, []
    return None, [
        _call(str(o["name"]), o.get("parameters", o.get("arguments", {}))) for o in objects
    ]


_HERMES = re.compile(r"<tool_call>(.*?)</tool_call>", re.DOTALL)


def hermes(text: str) -> tuple[str | None, list[ToolCall]]:
    """Hermes/Qwen calls: ``<tool_call>{"name": …, "arguments": {…}}</tool_call>``."""
    calls: list[ToolCall] = []
    for match in _HERMES.finditer(text):
        try:
            obj = json.loads(match.group(1).strip())
        except json.JSONDecodeError:
            continue
        if isinstance(obj, dict) and "name" in obj:
            calls.append(_call(str(obj["name"]), obj.get("arguments", {})))
    if not calls:
        return text, []
    content = _HERMES.sub("", text).strip()
    return content or None, calls


def no_tools(text: str) -> tuple[str | None, list[ToolCall]]:
    return text, []


PARSERS: dict[str, Parser] = {"llama3_json": llama3_json, "hermes": hermes, "none": no_tools}
