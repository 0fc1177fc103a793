"""One decode step for sequences of different lengths, with no padding.

TensorRT-LLM packs a batch's tokens and reads each sequence's own KV blocks, so what a
request costs depends on its own context. A batched Hugging Face forward pads every
sequence's KV to the longest one in the batch instead, so a short request beside a long
one pays for the long one's context: its cost depends on its neighbours, which no
per-request price (Model Units) can express, and the padded copy is remade every step.

Here a step runs the projections, the MLP and the head batched over one token per
sequence, and attention per sequence over its own keys and values. Those live in
buffers sized for the whole request and are appended in place, as a paged KV cache is.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from python_backends.cpu_engine.prefix_cache import KVState, kv_length

_DECODER_PARTS = ("embed_tokens", "layers", "norm", "rotary_emb")
_LAYER_PARTS = ("input_layernorm", "self_attn", "post_attention_layernorm", "mlp")
_ATTENTION_PARTS = ("q_proj", "k_proj", "v_proj", "o_proj", "head_dim", "scaling")


class SequenceKV:
    """One sequence's keys and values: a buffer per layer, filled up to ``length``."""

    def __init__(self, kv: KVState, capacity: int) -> None:
        self.length = kv_length(kv)
        capacity = max(capacity, self.length + 1)
        self._layers: list[tuple[torch.Tensor, torch.Tensor]] = []
        for keys, values in kv:
            heads, dim = keys.shape[1], keys.shape[3]
            k_buf = keys.new_empty((1, heads, capacity, dim))
            v_buf = values.new_empty((1, heads, capacity, dim))
            k_buf[:, :, : self.length] = keys
            v_buf[:, :, : self.length] = values
            self._layers.append((k_buf, v_buf))

    def with_token(
        self, layer: int, keys: torch.Tensor, values: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Writes the next position's ``[1, heads, 1, dim]`` keys and values into ``layer``
        and returns that layer's keys and values up to it (views). The position counts
        once :meth:`advance` is called, after every layer has its token."""
        k_buf, v_buf = self._layers[layer]
        if self.length == k_buf.shape[2]:
            k_buf, v_buf = self._grow(layer)
        n = self.length
        k_buf[:, :, n : n + 1] = keys
        v_buf[:, :, n : n + 1] = values
        return k_buf[:, :, : n + 1], v_buf[:, :, : n + 1]

    def advance(self) -> None:
        self.length += 1

    def state(self) -> KVState:
        """The filled part of every layer (views into the buffers)."""
        n = self.length
        return tuple((k[:, :, :n], v[:, :, :n]) for k, v in self._layers)

    def _grow(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        k_buf, v_buf = self._layers[layer]
        grown = (
            torch.cat([k_buf, torch.empty_like(k_buf)], dim=2),
            torch.cat([v_buf, torch.empty_like(v_buf)], dim=2),
        )
        self._layers[layer] = grown
        return grown


def check_decoder(model: torch.nn.Module) -> None:
    """Raises ``ValueError`` unless ``model`` has the Llama decoder layout that
    :func:`decode_step` runs, with full attention (no sliding window)."""
    inner = getattr(model, "model", None)
    missing = [p for p in _DECODER_PARTS if not hasattr(inner, p)]
    if not missing and hasattr(model, "lm_head"):
        layer = inner.layers[0]  # type: ignore[union-attr]
        missing = [p for p in _LAYER_PARTS if not hasattr(layer, p)]
        missing += [p for p in _ATTENTION_PARTS if not hasattr(layer.self_attn, p)]
    elif not missing:
        missing = ["lm_head"]
    if getattr(getattr(model, "config", None), "sliding_window", None):
        missing.append("full attention (it has a sliding window)")
    if missing:
        raise ValueError(
            f"the cpu engine decodes Llama-layout checkpoints; {type(model).__name__} "
            f"lacks {', '.join(missing)}"
        )


@torch.inference_mode()
def decode_step(model: torch.nn.Module, tokens: list[int], kvs: list[SequenceKV]) -> torch.Tensor:
    """Feeds ``tokens[i]`` to sequence ``i`` and returns the next-token logits
    ``[len(tokens), vocab]``; every ``kvs[i]`` grows by one position."""
    inner: Any = model.model  # submodules by name, as check_decoder found them
    head: Any = model.lm_head
    batch = len(tokens)
    ids = torch.tensor(tokens, dtype=torch.long).view(batch, 1)
    positions = torch.tensor([kv.length for kv in kvs], dtype=torch.long).view(batch, 1)
    hidden = inner.embed_tokens(ids)
    cos, sin = inner.rotary_emb(hidden, positions)
    for index, layer in enumerate(inner.layers):
        attention = layer.self_attn
        x = layer.input_layernorm(hidden)
        shape = (batch, 1, -1, attention.head_dim)
        query = attention.q_proj(x).view(shape).transpose(1, 2)
        keys = attention.k_proj(x).view(shape).transpose(1, 2)
        values = attention.v_proj(x).view(shape).transpose(1, 2)
        query, keys = apply_rotary_pos_emb(query, keys, cos, sin)
        rows = [
            F.scaled_dot_product_attention(
                query[row : row + 1],
                *kv.with_token(index, keys[row : row + 1], values[row : row + 1]),
                scale=attention.scaling,
                enable_gqa=True,
            )
            for row, kv in enumerate(kvs)
        ]
        attended = torch.cat(rows).transpose(1, 2).reshape(batch, 1, -1)
        hidden = hidden + attention.o_proj(attended)
        hidden = hidden + layer.mlp(layer.post_attention_layernorm(hidden))
    for kv in kvs:
        kv.advance()
    return head(inner.norm(hidden))[:, -1]
