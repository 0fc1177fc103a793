"""The cpu engine's unpadded decode step against the Hugging Face forward of each
sequence alone, with the real tiny model."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from python_backends.cpu_engine.prefix_cache import KVState
from python_backends.cpu_engine.ragged_decode import SequenceKV, check_decoder, decode_step

PROMPTS = ((5, 17, 29), tuple(range(40, 90)), (7,) * 11, tuple(range(200, 203)))


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(tiny_model_dir), dtype=torch.float32).eval()


@torch.inference_mode()
def _prefill(model: torch.nn.Module, prompt: tuple[int, ...]) -> tuple[KVState, int]:
    out = model(input_ids=torch.tensor([prompt]), use_cache=True)
    kv = tuple((layer.keys, layer.values) for layer in out.past_key_values.layers)
    return kv, int(out.logits[0, -1].argmax())


@torch.inference_mode()
def _alone(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    """Next-token logits of ``tokens`` by a plain full forward of the sequence alone."""
    return model(input_ids=torch.tensor([tokens])).logits[0, -1]


def test_mixed_lengths_decode_as_each_sequence_alone(model: torch.nn.Module) -> None:
    seqs = [list(p) for p in PROMPTS]
    kvs, nexts = [], []
    for prompt in PROMPTS:
        kv, first = _prefill(model, prompt)
        kvs.append(SequenceKV(kv, capacity=len(prompt) + 2))  # the third step must grow
        nexts.append(first)
    for _ in range(4):
        logits = decode_step(model, nexts, kvs)
        for row, seq in enumerate(seqs):
            seq.append(nexts[row])
            expected = _alone(model, seq)
            assert torch.allclose(logits[row], expected, atol=1e-4), row
            assert kvs[row].length == len(seq)
        nexts = [int(row.argmax()) for row in logits]


def test_state_is_the_prefix_of_a_longer_prefill(model: torch.nn.Module) -> None:
    prompt = PROMPTS[1]
    kv, _ = _prefill(model, prompt[:-1])
    seq = SequenceKV(kv, capacity=len(prompt))
    decode_step(model, [prompt[-1]], [seq])
    full, _ = _prefill(model, prompt)
    for (k, v), (k_full, v_full) in zip(seq.state(), full, strict=True):
        assert k.shape == k_full.shape
        assert torch.allclose(k, k_full, atol=1e-5) and torch.allclose(v, v_full, atol=1e-5)


def test_a_model_without_the_decoder_layout_is_refused() -> None:
    with pytest.raises(ValueError, match="Llama-layout"):
        check_decoder(torch.nn.Linear(2, 2))


def test_a_sliding_window_model_is_refused(model: torch.nn.Module) -> None:
    model.config.sliding_window = 16
    try:
        with pytest.raises(ValueError, match="sliding window"):
            check_decoder(model)
    finally:
        model.config.sliding_window = None
    check_decoder(model)
