"""The models the fleet serves, as the router sees them: tokenizer, chat template, limits.

The router tokenizes every prompt itself: the token count prices the request in MU, the
prefix-block hashes feed the cache-aware policies, and an oversized prompt is refused
before it costs a node anything.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from python_backends.text_codec import context_window
from router.policies.prefix import block_hashes


class ModelConfig(BaseModel):
    """One served model: its OpenAI name, where its tokenizer is, how nodes serve it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    tokenizer_dir: Path
    triton_model: str = Field("ensemble", description="the nodes' text front (ensemble)")
    max_context: int = Field(0, ge=0, description="0: read from the checkpoint's config.json")
    max_tokens_default: int = Field(256, ge=1)
    tool_parser: Literal["llama3_json", "hermes", "none"] = "llama3_json"
    block_size: int = Field(16, ge=1, le=4096, description="tokens per prefix block")


class ServedModel:
    """A model's tokenizer and limits, loaded once per router."""

    def __init__(self, config: ModelConfig) -> None:
        from transformers import AutoTokenizer

        self.config = config
        self.name = config.name
        self.tokenizer = AutoTokenizer.from_pretrained(str(config.tokenizer_dir))
        limit = getattr(self.tokenizer, "model_max_length", 0) or 0
        fallback = int(limit) if 0 < limit < 10**7 else 2048
        self.max_context = config.max_context or context_window(config.tokenizer_dir, fallback)

    @property
    def vocab_size(self) -> int:
        """Token ids at or above this are not the model's (a node sending one is broken)."""
        return len(self.tokenizer)

    def encode(self, text: str) -> list[int]:
        """Token ids as the nodes' preprocessing makes them (special tokens added)."""
        return list(self.tokenizer.encode(text, add_special_tokens=True))

    def render_chat(
        self,
        messages: Sequence[dict[str, Any]],
        tools: Sequence[dict[str, Any]] | None = None,
    ) -> str:
        """The prompt text of a chat, through the model's own chat template.

        The template writes the BOS token itself; the nodes' preprocessing adds it again
        when it tokenizes, so the text goes out without it (and :meth:`encode` counts it).
        """
        kwargs: dict[str, Any] = {"tokenize": False, "add_generation_prompt": True}
        if tools:
            kwargs["tools"] = list(tools)
        text = str(self.tokenizer.apply_chat_template(list(messages), **kwargs))
        bos = getattr(self.tokenizer, "bos_token", None)
        return text[len(bos) :] if bos and text.startswith(bos) else text

    def blocks(self, token_ids: Sequence[int]) -> tuple[int, ...]:
        return block_hashes(token_ids, self.config.block_size)

    def decode(self, token_ids: Sequence[int]) -> str:
        return str(self.tokenizer.decode(list(token_ids), skip_special_tokens=True))
