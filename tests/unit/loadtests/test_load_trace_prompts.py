"""Prompt text from hash ids: block sizes, token-boundary stability, prefix sharing, scaling."""

from __future__ import annotations

import re
import zlib
from pathlib import Path

import pytest

from mufleet.trace_prompts import BASIC_WORDS, PromptBuilder, load_tokenizer, scaled_request
from mufleet.traces import TraceRequest

K = 16


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> object:
    return load_tokenizer(tiny_model_dir)


@pytest.fixture(scope="module")
def builder(tokenizer: object) -> PromptBuilder:
    return PromptBuilder(tokenizer, K)  # type: ignore[arg-type]


def _ids(builder: PromptBuilder, text: str) -> list[int]:
    assert builder.tokenizer is not None
    return builder.tokenizer.encode(text, add_special_tokens=False)


def _common(a: list[int], b: list[int]) -> int:
    n = 0
    while n < min(len(a), len(b)) and a[n] == b[n]:
        n += 1
    return n


def test_every_block_is_exactly_block_tokens_long(builder: PromptBuilder) -> None:
    for block_id in (0, 1, 7, 123_456, -5):
        assert len(_ids(builder, builder.block(block_id))) == K


def test_token_boundaries_do_not_move_when_blocks_are_joined(builder: PromptBuilder) -> None:
    blocks = [builder.block(i) for i in (3, 1, 4, 1, 5, 9)]
    joined = _ids(builder, "".join(blocks))
    assert joined == [t for b in blocks for t in _ids(builder, b)]


def test_shared_leading_ids_give_a_shared_token_prefix_and_no_more(
    builder: PromptBuilder,
) -> None:
    a = TraceRequest(0.0, 4 * 512, 10, (0, 11, 12, 13))
    b = TraceRequest(1.0, 4 * 512, 10, (0, 11, 22, 23))
    c = TraceRequest(2.0, 4 * 512, 10, (5, 11, 12, 13))
    ta, tb, tc = (_ids(builder, builder.prompt(r)) for r in (a, b, c))
    assert len(ta) == len(tb) == 4 * K
    assert 2 * K <= _common(ta, tb) < 3 * K, "two shared ids: two blocks of shared tokens"
    assert _common(ta, tc) < K, "a different first id shares nothing, whatever follows"


def test_the_same_id_gives_the_same_text_in_any_builder(tokenizer: object) -> None:
    one = PromptBuilder(tokenizer, K)  # type: ignore[arg-type]
    two = PromptBuilder(tokenizer, K)  # type: ignore[arg-type]
    other_seed = PromptBuilder(tokenizer, K, seed=1)  # type: ignore[arg-type]
    assert one.block(42) == two.block(42)
    assert one.block(42) != one.block(43)
    assert one.block(42) != other_seed.block(42)


def test_a_partial_last_block_is_a_prefix_of_the_full_block(builder: PromptBuilder) -> None:
    request = TraceRequest(0.0, 2 * 512 + 100, 10, (8, 9, 10))
    scaled = builder.scale(request)
    assert [n for _, n in scaled.blocks] == [K, K, round(100 * K / 512)]
    text = builder.prompt(scaled)
    assert len(_ids(builder, text)) == scaled.input_tokens == 2 * K + 3
    assert builder.block(10).startswith(builder.block(10, 3))


def test_scaled_request_scales_and_caps_output_and_input() -> None:
    request = TraceRequest(3.0, 10 * 512, 1024, tuple(range(10)))
    scaled = scaled_request(request, 32, max_output_tokens=50)
    assert scaled.output_tokens == 50, "1024 × 32/512 = 64, capped at 50"
    assert scaled_request(request, 32, max_output_tokens=500).output_tokens == 64
    assert scaled_request(request, 32, output_scale=0.01).output_tokens == 10
    capped = scaled_request(request, 32, max_input_tokens=100)
    assert [b for b, _ in capped.blocks] == [0, 1, 2], "the kept blocks are the leading ones"
    assert capped.input_tokens == 96 and capped.arrival_s == 3.0


def test_requests_without_hash_ids_get_blocks_of_their_own() -> None:
    azure = TraceRequest(0.0, 1500, 20)
    first = scaled_request(azure, 32, index=0)
    second = scaled_request(azure, 32, index=1)
    assert len(first.blocks) == 3 and first.input_tokens == 32 + 32 + round(476 * 32 / 512)
    assert not {b for b, _ in first.blocks} & {b for b, _ in second.blocks}
    assert all(b < 0 for b, _ in first.blocks), "never a Mooncake id"


def test_without_a_tokenizer_a_block_is_words_and_a_newline() -> None:
    builder = PromptBuilder(None, 8)
    text = builder.block(1)
    assert text.endswith("\n") and len(text.split()) == 7
    assert all(word in BASIC_WORDS for word in text.split())
    assert builder.count_tokens(text) is None


class _MergingTokenizer:
    """One token per word, but a newline merges with the word after it."""

    def encode(self, text: str, add_special_tokens: bool = False) -> list[int]:
        return [zlib.crc32(p.encode()) for p in re.findall(r"\n ?[a-z]+|\n| [a-z]+", text)]

    def get_vocab(self) -> dict[str, int]:
        return {f"Ġ{w}": i for i, w in enumerate(BASIC_WORDS)}


def test_a_tokenizer_that_breaks_block_boundaries_is_refused() -> None:
    with pytest.raises(ValueError, match="block separator"):
        PromptBuilder(_MergingTokenizer(), 8)


def test_block_tokens_below_two_is_refused() -> None:
    with pytest.raises(ValueError):
        PromptBuilder(None, 1)
    with pytest.raises(ValueError):
        scaled_request(TraceRequest(0.0, 10, 1), 1)
