"""Unit tests for TokenSampler: TensorRT-LLM's sampling knobs on one logits row."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from python_backends.cpu_engine.sampling import TokenSampler, step_seed
from python_backends.generation import GenerationSpec, SamplingParams, parse_request

VOCAB = 64
GREEDY = SamplingParams()


def _sampler(
    sampling: SamplingParams = GREEDY,
    bad_words: tuple[tuple[int, ...], ...] = (),
    end_id: int | None = None,
    min_tokens: int = 0,
    input_ids: tuple[int, ...] = (1,),
    embedding_bias: tuple[tuple[int, float], ...] = (),
) -> TokenSampler:
    spec = GenerationSpec(
        input_ids=input_ids,
        max_new_tokens=16,
        end_id=end_id,
        min_tokens=min_tokens,
        sampling=sampling,
        bad_words=bad_words,
        embedding_bias=embedding_bias,
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
    """``n`` draws at growing contexts, as a run makes them (a draw is a function of the
    context, so repeating one context repeats its draw)."""
    return [sampler.choose(logits, [0] * i)[0] for i in range(n)]


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


def test_a_draw_is_a_function_of_the_context_not_of_the_request_s_history() -> None:
    params = SamplingParams(top_k=50, seed=99)
    logits = _flat(11)
    running = _sampler(params, input_ids=(1, 2, 3))
    along = [running.choose(logits, [5, 6][:i])[0] for i in range(3)]

    # The same context sent afresh (a continuation with the output in its prompt) draws
    # what the running request drew; drawing it again repeats it.
    moved = _sampler(params, input_ids=(1, 2, 3, 5, 6))
    assert moved.choose(logits, [])[0] == along[2]
    assert running.choose(logits, [5, 6])[0] == along[2]
    assert len(set(_draws(_sampler(params), logits, 16))) > 1


def test_step_seeds_differ_by_seed_and_context_length() -> None:
    seeds = {step_seed(seed, n) for seed in (0, 1, 2**64 - 1) for n in range(100)}

    assert len(seeds) == 300
    assert all(0 <= s < 2**64 for s in seeds)
    assert step_seed(5, 17) == step_seed(5, 17)


def test_a_bad_word_matches_across_the_end_of_the_prompt() -> None:
    sampler = _sampler(bad_words=((7, 4),), input_ids=(1, 7))

    assert sampler.choose(_peaked(4, 9), [])[0] == 9
    assert sampler.choose(_peaked(4, 9), [3])[0] == 4


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
    spec = parse_request(
        {
            "input_ids": np.array([[1, 2]], dtype=np.int32),
            "input_lengths": np.array([[2]], dtype=np.int32),
            "request_output_len": np.array([[4]], dtype=np.int32),
            "runtime_top_k": np.array([[5]], dtype=np.int32),
            "seed": np.array([[seed]], dtype=np.uint64),
        },
        "cpu",
        vocab_size=VOCAB,
        max_context=64,
    ).specs[0]

    token, _ = TokenSampler(spec).choose(_flat(), [])

    assert 0 <= token < VOCAB


def test_returned_sequences_sample_differently() -> None:
    request = parse_request(
        {
            "input_ids": np.array([[1, 2]], dtype=np.int32),
            "input_lengths": np.array([[2]], dtype=np.int32),
            "request_output_len": np.array([[4]], dtype=np.int32),
            "runtime_top_k": np.array([[50]], dtype=np.int32),
            "seed": np.array([[77]], dtype=np.uint64),
            "num_return_sequences": np.array([[3]], dtype=np.int32),
        },
        "cpu",
        vocab_size=VOCAB,
        max_context=64,
    )
    logits = _flat(4)

    draws = [_draws(TokenSampler(spec), logits, 32) for spec in request.specs]

    first = _sampler(SamplingParams(top_k=50, seed=77), input_ids=(1, 2))
    assert draws[0] == _draws(first, logits, 32)
    assert len({tuple(d) for d in draws}) == 3


# -- logits processing: bias and penalties ----------------------------------------------------
def test_processed_leaves_logits_alone_without_knobs() -> None:
    logits = _flat(2)

    assert torch.equal(_sampler().processed(logits, [3, 4]), logits)


def test_repetition_penalty_makes_a_repeated_token_less_likely() -> None:
    logits = _peaked(5, 6, 9)
    generated = [5]

    plain = torch.softmax(_sampler().processed(logits, generated), -1)
    penalised = torch.softmax(
        _sampler(SamplingParams(repetition_penalty=2.0)).processed(logits, generated), -1
    )

    assert penalised[5] < plain[5]
    assert penalised[6] > plain[6]


def test_repetition_penalty_divides_positive_and_multiplies_negative_logits() -> None:
    logits = torch.zeros(VOCAB)
    logits[5], logits[6], logits[7], logits[8] = 4.0, -3.0, 2.0, 1.0

    out = _sampler(SamplingParams(repetition_penalty=2.0), input_ids=(7,)).processed(
        logits, [5, 6, 5]
    )

    assert float(out[5]) == pytest.approx(2.0)  # generated twice, still divided once
    assert float(out[6]) == pytest.approx(-6.0)
    assert float(out[7]) == pytest.approx(1.0)  # the prompt counts too
    assert float(out[8]) == pytest.approx(1.0)  # never seen: unchanged
    assert torch.equal(out[9:], logits[9:])


def test_repetition_penalty_below_one_favours_repeats() -> None:
    logits = _peaked(6, 5)

    token, _ = _sampler(SamplingParams(repetition_penalty=0.5)).choose(logits, [5])

    assert token == 5


def test_presence_and_frequency_penalties_lower_the_logit_by_their_amounts() -> None:
    logits = _flat(5)
    sampler = _sampler(SamplingParams(presence_penalty=0.5, frequency_penalty=0.25), input_ids=(9,))

    out = sampler.processed(logits, [3, 3, 3, 7])

    assert float(logits[3] - out[3]) == pytest.approx(0.5 + 3 * 0.25)
    assert float(logits[7] - out[7]) == pytest.approx(0.5 + 0.25)
    untouched = [t for t in range(VOCAB) if t not in (3, 7)]
    assert torch.equal(out[untouched], logits[untouched])  # the prompt's 9 included


def test_presence_penalty_alone_counts_each_token_once() -> None:
    logits = _flat(6)

    out = _sampler(SamplingParams(presence_penalty=1.5)).processed(logits, [4, 4, 4, 4])

    assert float(logits[4] - out[4]) == pytest.approx(1.5)


def test_frequency_penalty_changes_the_greedy_choice() -> None:
    logits = _peaked(5, 6)  # 5 leads 6 by one

    sampler = _sampler(SamplingParams(frequency_penalty=0.75))

    assert sampler.choose(logits, [5])[0] == 5
    assert sampler.choose(logits, [5, 5])[0] == 6


def test_penalties_apply_before_log_probs() -> None:
    logits = _peaked(5, 6)
    sampler = _sampler(SamplingParams(presence_penalty=3.0))

    token, log_prob = sampler.choose(logits, [5])

    assert token == 6
    assert log_prob == pytest.approx(
        float(torch.log_softmax(sampler.processed(logits, [5]), -1)[6])
    )


def test_embedding_bias_forces_a_token_under_greedy() -> None:
    logits = _peaked(4, 9)

    token, log_prob = _sampler(embedding_bias=((30, 100.0),)).choose(logits, [])

    assert token == 30
    assert log_prob == pytest.approx(0.0, abs=1e-3)


def test_embedding_bias_adds_exactly_its_values() -> None:
    logits = _flat(8)

    out = _sampler(embedding_bias=((2, 1.5), (40, -2.0))).processed(logits, [])

    assert float(out[2] - logits[2]) == pytest.approx(1.5)
    assert float(out[40] - logits[40]) == pytest.approx(-2.0)
    assert torch.equal(out[3:40], logits[3:40])


def test_negative_embedding_bias_removes_the_best_token() -> None:
    assert _sampler(embedding_bias=((4, -100.0),)).choose(_peaked(4, 9), [])[0] == 9


def test_bad_words_beat_embedding_bias() -> None:
    sampler = _sampler(embedding_bias=((30, 100.0),), bad_words=((30,),))

    assert sampler.choose(_peaked(4, 9), [])[0] == 4


def test_min_tokens_beats_embedding_bias_on_end_id() -> None:
    sampler = _sampler(embedding_bias=((2, 100.0),), end_id=2, min_tokens=2)

    assert sampler.choose(_peaked(4, 9), [])[0] == 4
    assert sampler.choose(_peaked(4, 9), [4])[0] == 4
    assert sampler.choose(_peaked(4, 9), [4, 4])[0] == 2


def test_bad_words_and_min_tokens_banned_together_when_sampling() -> None:
    logits = _flat(10)
    logits[11], logits[12] = 4.0, 4.0
    draws = [
        _sampler(
            SamplingParams(top_k=3, seed=seed), bad_words=((11,),), end_id=12, min_tokens=5
        ).choose(logits, [0] * n)[0]
        for n in range(5)
        for seed in range(40)
    ]

    assert 11 not in draws
    assert 12 not in draws


# -- top-p decay -------------------------------------------------------------------------
def _decaying(
    top_p_decay: float = 1.0, top_p_min: float = 1.0e-6, top_p_reset_id: int | None = None
) -> TokenSampler:
    return _sampler(
        SamplingParams(
            top_p=0.8,
            seed=0,
            top_p_decay=top_p_decay,
            top_p_min=top_p_min,
            top_p_reset_id=top_p_reset_id,
        )
    )


def test_top_p_decays_per_token_down_to_its_minimum() -> None:
    sampler = _decaying(top_p_decay=0.5, top_p_min=0.15)
    logits = _peaked(4)

    seen = []
    for _ in range(4):
        sampler.choose(logits, [])
        seen.append(sampler.top_p)

    assert seen == pytest.approx([0.4, 0.2, 0.15, 0.15])


def test_top_p_resets_on_the_reset_id() -> None:
    sampler = _decaying(top_p_decay=0.5, top_p_min=0.01, top_p_reset_id=9)

    sampler.choose(_peaked(4), [])
    sampler.choose(_peaked(4), [])
    assert sampler.top_p == pytest.approx(0.2)
    token, _ = sampler.choose(_peaked(9), [])
    assert token == 9
    assert sampler.top_p == pytest.approx(0.8)
    sampler.choose(_peaked(4), [])
    assert sampler.top_p == pytest.approx(0.4)


def test_top_p_without_decay_stays_put() -> None:
    sampler = _decaying()

    for _ in range(5):
        sampler.choose(_flat(), [])

    assert sampler.top_p == 0.8


def test_decayed_top_p_narrows_the_nucleus() -> None:
    probs = torch.full((VOCAB,), 0.05 / (VOCAB - 3))
    probs[10], probs[20], probs[30] = 0.5, 0.3, 0.15
    steady = _sampler(SamplingParams(top_p=0.7, seed=3))
    decaying = _sampler(SamplingParams(top_p=0.7, seed=3, top_p_decay=0.5))

    steady_draws = _draws(steady, probs.log(), 300)
    decayed_draws = _draws(decaying, probs.log(), 300)

    assert set(steady_draws) == {10, 20}
    # After the first token top_p is 0.35: only the 0.5 token is left in the nucleus.
    assert set(decayed_draws[1:]) == {10}
