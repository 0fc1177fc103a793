"""Unit tests for TokenSampler: TensorRT-LLM's sampling knobs on one logits row."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from python_backends.cpu_engine.sampling import TokenSampler
from python_backends.generation import GenerationSpec, SamplingParams, parse_generation

VOCAB = 64
GREEDY = SamplingParams()


def _sampler(
    sampling: SamplingParams = GREEDY,
    bad_words: tuple[tuple[int, ...], ...] = (),
    end_id: int | None = None,
    min_tokens: int = 0,
) -> TokenSampler:
    spec = GenerationSpec(
        input_ids=(1,),
        max_new_tokens=16,
        end_id=end_id,
        min_tokens=min_tokens,
        sampling=sampling,
        bad_words=bad_words,
    )
    return TokenSampler(spec)


def _peaked(*order: int) -> torch.Tensor:
    """Logits where ``order[0]`` is the best token, ``order[1]`` the second best, and so on."""
    logits = torch.zeros(VOCAB)
    for rank, token in enumerate(order):
        logits[token] = 10.0 - rank
    return logits


def _flat(seed: int = 0) -> torch.Tensor:
    """Nearly uniform logits (small seeded noise), so sampling has many plausible tokens."""
    return torch.randn(VOCAB, generator=torch.Generator().manual_seed(seed)) * 0.1


def test_greedy_picks_argmax() -> None:
    logits = _flat(3)
    logits[17] = 5.0

    token, log_prob = _sampler().choose(logits, [])

    assert token == 17
    assert log_prob == pytest.approx(float(torch.log_softmax(logits, -1)[17]))


def test_greedy_does_not_modify_the_callers_logits() -> None:
    logits = _peaked(4, 5)
    before = logits.clone()

    _sampler(bad_words=((4,),)).choose(logits, [])

    assert torch.equal(logits, before)


def test_single_token_bad_word_is_banned() -> None:
    token, log_prob = _sampler(bad_words=((4,),)).choose(_peaked(4, 9), [])

    assert token == 9
    assert math.isfinite(log_prob)


def test_multi_token_bad_word_bans_last_token_only_after_prefix() -> None:
    sampler = _sampler(bad_words=((7, 8, 4),))
    logits = _peaked(4, 9, 7, 8)

    assert sampler.choose(logits, [])[0] == 4
    assert sampler.choose(logits, [8])[0] == 4
    assert sampler.choose(logits, [8, 7])[0] == 4
    assert sampler.choose(logits, [1, 7, 8])[0] == 9
    assert sampler.choose(logits, [7, 8])[0] == 9


def test_bad_word_prefix_tokens_themselves_are_not_banned() -> None:
    sampler = _sampler(bad_words=((7, 8, 4),))

    assert sampler.choose(_peaked(7, 9), [])[0] == 7
    assert sampler.choose(_peaked(8, 9), [7])[0] == 8


def test_end_id_banned_until_min_tokens() -> None:
    sampler = _sampler(end_id=4, min_tokens=3)
    logits = _peaked(4, 9)

    assert sampler.choose(logits, [])[0] == 9
    assert sampler.choose(logits, [9, 9])[0] == 9
    assert sampler.choose(logits, [9, 9, 9])[0] == 4


def test_end_id_not_banned_without_min_tokens() -> None:
    assert _sampler(end_id=4).choose(_peaked(4, 9), [])[0] == 4


def _draws(sampler: TokenSampler, logits: torch.Tensor, n: int) -> list[int]:
    return [sampler.choose(logits, [])[0] for _ in range(n)]


def test_same_seed_same_sequence() -> None:
    params = SamplingParams(top_k=50, seed=1234)
    logits = _flat()

    first = _draws(_sampler(params), logits, 32)
    second = _draws(_sampler(params), logits, 32)

    assert first == second
    assert len(set(first)) > 1


def test_different_seed_different_sequence() -> None:
    logits = _flat()

    first = _draws(_sampler(SamplingParams(top_k=50, seed=1)), logits, 32)
    second = _draws(_sampler(SamplingParams(top_k=50, seed=2)), logits, 32)

    assert first != second


def test_top_k_never_samples_outside_top_k() -> None:
    logits = _flat(7)
    top3 = set(torch.topk(logits, 3).indices.tolist())

    draws = _draws(_sampler(SamplingParams(top_k=3, seed=5)), logits, 1000)

    assert set(draws) == top3


def test_top_p_restricts_to_nucleus() -> None:
    probs = torch.full((VOCAB,), 0.05 / (VOCAB - 3))
    probs[10], probs[20], probs[30] = 0.5, 0.3, 0.15
    logits = probs.log()

    draws = _draws(_sampler(SamplingParams(top_p=0.7, seed=3)), logits, 1000)

    # The nucleus is the smallest top set reaching 0.7: tokens 10 (0.5) and 20 (0.3).
    assert set(draws) == {10, 20}
    assert 0.5 < draws.count(10) / len(draws) < 0.75


def test_top_p_one_keeps_every_token_possible() -> None:
    probs = torch.full((4,), 0.02)
    probs[0] = 0.94

    draws = _draws(_sampler(SamplingParams(top_p=1.0, seed=0)), probs.log(), 1000)

    assert set(draws) > {0}


def test_bad_words_apply_when_sampling() -> None:
    logits = _flat(9)
    logits[11] = 3.0

    draws = _draws(_sampler(SamplingParams(top_k=5, seed=0), bad_words=((11,),)), logits, 200)

    assert 11 not in draws


def test_log_prob_is_from_unscaled_distribution() -> None:
    logits = _peaked(4, 9)
    sampler = _sampler(SamplingParams(top_k=2, temperature=0.5, seed=0))

    token, log_prob = sampler.choose(logits, [])

    assert log_prob == pytest.approx(float(torch.log_softmax(logits, -1)[token]))


def test_max_uint64_seed_can_be_sampled_with() -> None:
    seed = 2**64 - 1
    spec = parse_generation(
        {
            "input_ids": np.array([[1, 2]], dtype=np.int32),
            "input_lengths": np.array([[2]], dtype=np.int32),
            "request_output_len": np.array([[4]], dtype=np.int32),
            "runtime_top_k": np.array([[5]], dtype=np.int32),
            "seed": np.array([[seed]], dtype=np.uint64),
        },
        vocab_size=VOCAB,
        max_context=64,
    )

    token, _ = TokenSampler(spec).choose(_flat(), [])

    assert 0 <= token < VOCAB
