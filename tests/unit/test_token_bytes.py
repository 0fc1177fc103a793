"""Unit tests for TokenBytes and Utf8Holdback, alone and behind a streaming ResponseAssembler."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from python_backends.engine_types import TokenEvent
from python_backends.generation import GenerationRequest, parse_request
from python_backends.text_codec import TextDecoder
from python_backends.token_bytes import MAX_HELD_TOKENS, TokenBytes, Utf8Holdback
from python_backends.triton_responses import ResponseAssembler, Tensors

TEXT = "héllo wörld — 日本語"
"""Two-byte, three-byte and ASCII characters: byte-level BPE splits several of them."""


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir: Path) -> PreTrainedTokenizerBase:
    return AutoTokenizer.from_pretrained(str(tiny_model_dir))


@pytest.fixture(scope="module")
def token_bytes(tokenizer: PreTrainedTokenizerBase) -> TokenBytes:
    return TokenBytes.from_tokenizer(tokenizer)


@pytest.fixture(scope="module")
def decoder(tiny_model_dir: Path) -> TextDecoder:
    return TextDecoder(tiny_model_dir)


@pytest.fixture(scope="module")
def text_ids(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    return list(tokenizer.encode(TEXT, add_special_tokens=False))


def _decode(decoder: TextDecoder, ids: list[int]) -> str:
    (text,) = decoder.decode(np.asarray([ids], dtype=np.int32), np.array([len(ids)]))
    return text.decode("utf-8")


# -- TokenBytes ----------------------------------------------------------------------------
def test_token_bytes_concatenate_to_the_utf8_text(
    token_bytes: TokenBytes, text_ids: list[int]
) -> None:
    assert b"".join(token_bytes.of(t) for t in text_ids) == TEXT.encode("utf-8")


def test_the_text_splits_characters_across_tokens(
    token_bytes: TokenBytes, text_ids: list[int]
) -> None:
    """The premise of the streaming tests: some token is not valid UTF-8 on its own."""
    broken = []
    for token in text_ids:
        try:
            token_bytes.of(token).decode("utf-8")
        except UnicodeDecodeError:
            broken.append(token)

    assert broken


def test_table_covers_the_vocabulary(
    token_bytes: TokenBytes, tokenizer: PreTrainedTokenizerBase
) -> None:
    assert len(token_bytes.table) == len(tokenizer)


def test_special_and_unknown_ids_have_no_bytes(
    token_bytes: TokenBytes, tokenizer: PreTrainedTokenizerBase
) -> None:
    for special in tokenizer.all_special_ids:
        assert token_bytes.of(special) == b""
    assert token_bytes.of(-1) == b""
    assert token_bytes.of(len(tokenizer)) == b""


def test_space_marker_is_a_space(
    token_bytes: TokenBytes, tokenizer: PreTrainedTokenizerBase
) -> None:
    (space_w,) = tokenizer.encode(" w", add_special_tokens=False)

    assert token_bytes.of(space_w) == b" w"


def test_every_ordinary_token_matches_the_tokenizers_bytes(
    token_bytes: TokenBytes, tokenizer: PreTrainedTokenizerBase
) -> None:
    """Where a token decodes to whole characters, its bytes are that text's."""
    special = set(tokenizer.all_special_ids)
    checked = 0
    for token in range(len(tokenizer)):
        if token in special:
            continue
        text = str(tokenizer.decode([token], clean_up_tokenization_spaces=False))
        if "\ufffd" in text:
            continue
        assert token_bytes.of(token) == text.encode("utf-8"), token
        checked += 1

    assert checked > len(tokenizer) // 2


# -- Utf8Holdback ------------------------------------------------------------------------------
SYNTHETIC = TokenBytes(
    [b"a", b"\xc3", b"\xa9", b"\xe6", b"\x97", b"\xa5", b"\xe6\x97", b"\xff", b"", b"\xc3\xa9b"]
)
A, LEAD2, CONT2, LEAD3, CONT3A, CONT3B, LEAD3_CONT, INVALID, EMPTY, E_ACUTE_B = range(10)


def test_whole_characters_pass_at_once() -> None:
    holdback = Utf8Holdback(SYNTHETIC)

    assert holdback.push([A]) == [A]
    assert holdback.push([E_ACUTE_B, A]) == [E_ACUTE_B, A]


def test_a_split_two_byte_character_is_held_until_complete() -> None:
    holdback = Utf8Holdback(SYNTHETIC)

    assert holdback.push([A]) == [A]
    assert holdback.push([LEAD2]) == []
    assert holdback.push([CONT2]) == [LEAD2, CONT2]
    assert holdback.push([A]) == [A]


def test_a_three_byte_character_over_three_tokens() -> None:
    holdback = Utf8Holdback(SYNTHETIC)

    assert holdback.push([LEAD3]) == []
    assert holdback.push([CONT3A]) == []
    assert holdback.push([CONT3B]) == [LEAD3, CONT3A, CONT3B]


def test_tokens_before_a_split_character_go_at_once() -> None:
    holdback = Utf8Holdback(SYNTHETIC)

    assert holdback.push([A, LEAD3_CONT]) == [A]
    assert holdback.push([CONT3B]) == [LEAD3_CONT, CONT3B]


def test_a_token_completing_one_character_and_starting_another() -> None:
    table = TokenBytes([b"\xc3", b"\xa9\xc3", b"\xa9"])  # "é" "é" over three tokens
    holdback = Utf8Holdback(table)

    chunks = [holdback.push([0]), holdback.push([1]), holdback.push([2]), holdback.flush()]

    assert [t for chunk in chunks for t in chunk] == [0, 1, 2]
    for chunk in chunks:
        b"".join(table.of(t) for t in chunk).decode("utf-8")  # raises on half a character


def test_tokens_without_bytes_do_not_complete_a_character() -> None:
    holdback = Utf8Holdback(SYNTHETIC)

    assert holdback.push([LEAD2]) == []
    assert holdback.push([EMPTY]) == []
    assert holdback.push([CONT2]) == [LEAD2, EMPTY, CONT2]


def test_invalid_bytes_are_not_waited_for() -> None:
    holdback = Utf8Holdback(SYNTHETIC)

    assert holdback.push([INVALID]) == [INVALID]
    assert holdback.push([CONT2]) == [CONT2]  # a stray continuation byte
    assert holdback.push([LEAD2]) == []
    assert holdback.push([A]) == [LEAD2, A]  # the lead byte was never completed
    assert holdback.push([A]) == [A]


def test_a_token_without_bytes_before_a_split_character_goes_with_what_precedes_it() -> None:
    """As a fresh holdback would send it: at once, nothing being pending there."""
    holdback = Utf8Holdback(SYNTHETIC)

    assert holdback.push([LEAD3]) == []
    assert holdback.push([EMPTY]) == []
    assert holdback.push([LEAD2]) == [LEAD3, EMPTY]  # the lead byte of three never completed
    assert holdback.push([CONT2]) == [LEAD2, CONT2]
    fresh = Utf8Holdback(SYNTHETIC)
    assert [fresh.push([LEAD2]), fresh.push([CONT2])] == [[], [LEAD2, CONT2]]


def test_no_more_than_max_held_tokens_are_held() -> None:
    holdback = Utf8Holdback(TokenBytes([b"\xf0", b"", b"a"]))

    released = [holdback.push([0])]
    released += [holdback.push([1]) for _ in range(MAX_HELD_TOKENS - 2)]
    assert released == [[]] * (MAX_HELD_TOKENS - 1)
    assert holdback.push([1]) == [0] + [1] * (MAX_HELD_TOKENS - 1)


def test_flush_returns_what_is_held_and_starts_over() -> None:
    holdback = Utf8Holdback(SYNTHETIC)

    assert holdback.push([A, LEAD2]) == [A]
    assert holdback.flush() == [LEAD2]
    assert holdback.flush() == []
    assert holdback.push([CONT2]) == [CONT2]  # the old lead byte is forgotten
    assert holdback.push([A]) == [A]


def test_a_token_without_bytes_goes_at_once_when_nothing_is_pending() -> None:
    holdback = Utf8Holdback(SYNTHETIC)

    assert holdback.push([A]) == [A]
    assert holdback.push([EMPTY]) == [EMPTY]


def _streamed_chunks(table: TokenBytes, tokens: list[int]) -> list[list[int]]:
    """The chunks a streaming engine sends: one push per token, a flush at the end."""
    holdback = Utf8Holdback(table)
    chunks = [holdback.push([t]) for t in tokens]
    chunks[-1] += holdback.flush()
    return [chunk for chunk in chunks if chunk]


def test_a_fresh_holdback_after_any_release_cuts_the_rest_alike() -> None:
    """What a migrated stream relies on: the tokens after any chunk, streamed through a
    new holdback (another node's), come out in the chunks of the unbroken stream."""
    lone = [bytes([b]) for b in (0xC3, 0xD2, 0xE2, 0xE6, 0xF0, 0x80, 0x97, 0xA9, 0xBF, 0xFF)]
    table = TokenBytes([b"a", b" b", b"", b"\xe6\x97", b"\xa9c", b"\xc3\xa9", *lone])
    rng = np.random.default_rng(7)
    for _ in range(400):
        tokens = [int(t) for t in rng.integers(0, len(table.table), size=int(rng.integers(1, 40)))]
        chunks = _streamed_chunks(table, tokens)
        assert [t for chunk in chunks for t in chunk] == tokens
        sent = 0
        for index, chunk in enumerate(chunks):
            sent += len(chunk)
            if sent < len(tokens):
                assert _streamed_chunks(table, tokens[sent:]) == chunks[index + 1 :], (tokens, sent)


def test_streaming_the_text_token_by_token_never_splits_a_character(
    token_bytes: TokenBytes, text_ids: list[int]
) -> None:
    holdback = Utf8Holdback(token_bytes)

    chunks = [holdback.push([token]) for token in text_ids]
    chunks.append(holdback.flush())

    assert [t for chunk in chunks for t in chunk] == text_ids
    assert [] in chunks  # something was held back
    for chunk in chunks:
        b"".join(token_bytes.of(t) for t in chunk).decode("utf-8")  # never raises


# -- through ResponseAssembler and TextDecoder --------------------------------------------------
def _streaming_request(ids: list[int]) -> GenerationRequest:
    return parse_request(
        {
            "input_ids": np.array([[ids[0]]], dtype=np.int32),
            "input_lengths": np.array([[1]], dtype=np.int32),
            "request_output_len": np.array([[len(ids)]], dtype=np.int32),
            "streaming": np.array([[True]]),
        },
        "cpu",
        vocab_size=4096,
        max_context=4096,
    )


def _stream(token_bytes: TokenBytes, ids: list[int], last_empty: bool) -> list[Tensors]:
    """Stream ``ids`` one event per token, as an engine does; the responses' tensors."""
    responses: list[Tensors] = []

    def send(tensors: Tensors | None, error: str | None, final: bool) -> None:
        assert error is None
        if tensors is not None:
            responses.append(tensors)

    assembler = ResponseAssembler(
        _streaming_request(ids), send, True, lambda: Utf8Holdback(token_bytes)
    )
    for i, token in enumerate(ids):
        finished = i == len(ids) - 1 and not last_empty
        assembler.on_event(
            0, TokenEvent((token,), (0.0,), finished, "length" if finished else None)
        )
    if last_empty:
        assembler.on_event(0, TokenEvent((), (), True, "end_id"))
    return responses


@pytest.mark.parametrize("last_empty", [False, True], ids=["ends-on-a-token", "ends-by-end-id"])
def test_streamed_chunks_decode_cleanly_and_concatenate_to_the_text(
    token_bytes: TokenBytes, decoder: TextDecoder, text_ids: list[int], last_empty: bool
) -> None:
    responses = _stream(token_bytes, text_ids, last_empty)

    chunks = []
    for tensors in responses:
        ids = tensors["output_ids"].reshape(-1).tolist()
        assert tensors["sequence_length"].tolist() == [[len(ids)]]
        chunks.append(_decode(decoder, ids))
    assert all("\ufffd" not in chunk for chunk in chunks)
    assert len(chunks) < len(text_ids)  # split characters went out together
    assert "".join(chunks) == _decode(decoder, text_ids) == TEXT


def test_streamed_text_without_holdback_would_split_characters(
    decoder: TextDecoder, text_ids: list[int]
) -> None:
    """What the holdback prevents: decoding token by token gives U+FFFD."""
    assert any("\ufffd" in _decode(decoder, [t]) for t in text_ids)


# -- end to end: the sim engine's stream through the assembler, decoded as postprocessing does --
SIM_PROFILE = Path(__file__).resolve().parents[1] / "data" / "sim_test_gpu.json"


def test_sim_stream_decodes_chunk_by_chunk_to_the_whole_text(
    token_bytes: TokenBytes, decoder: TextDecoder, tokenizer: PreTrainedTokenizerBase
) -> None:
    from python_backends.sim_engine.engine import SimConfig, SimEngine
    from python_backends.sim_engine.hardware import HardwareProfile

    engine = SimEngine(
        SimConfig(HardwareProfile.load(SIM_PROFILE), len(tokenizer), max_num_sequences=2)
    )
    engine.sleep = lambda seconds: None
    request = parse_request(
        {
            "input_ids": np.array([[11, 12, 13]], dtype=np.int32),
            "input_lengths": np.array([[3]], dtype=np.int32),
            "request_output_len": np.array([[200]], dtype=np.int32),
            "streaming": np.array([[True]]),
        },
        "sim",
        vocab_size=engine.vocab_size,
        max_context=engine.max_context,
    )
    responses: list[Tensors] = []
    assembler = ResponseAssembler(
        request,
        lambda tensors, error, final: responses.append(tensors) if tensors else None,
        True,
        lambda: Utf8Holdback(token_bytes),
    )
    engine.submit(request.specs[0], assembler.emitter(0))
    for _ in range(300):
        engine.step()
        if engine.stats.active == 0 and engine.stats.waiting == 0:
            break

    chunks = [r["output_ids"].reshape(-1).tolist() for r in responses]
    all_ids = [t for chunk in chunks for t in chunk]
    assert len(all_ids) == 200
    assert any(len(chunk) > 1 for chunk in chunks)  # the holdback joined tokens
    texts = [
        decoder.decode_batch(r["output_ids"], r["sequence_length"])[0, 0].decode()
        for r in responses
    ]
    assert "".join(texts) == _decode(decoder, all_ids)
