"""Unit tests for TextEncoder / TextDecoder with the tiny model's tokenizer."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from python_backends.text_codec import (
    InvalidRequestError,
    TextDecoder,
    TextEncoder,
    context_window,
)
from python_backends.word_lists import decode_word_lists

TEXT = "hello world, the scheduler admitted requests"


@pytest.fixture(scope="module")
def encoder(tiny_model_dir: Path) -> TextEncoder:
    return TextEncoder(tiny_model_dir)


@pytest.fixture(scope="module")
def decoder(tiny_model_dir: Path) -> TextDecoder:
    return TextDecoder(tiny_model_dir)


def _plain(encoder: TextEncoder, text: str) -> list[int]:
    return list(encoder.tokenizer.encode(text, add_special_tokens=False))


def test_context_window_from_checkpoint(tiny_model_dir: Path, encoder: TextEncoder) -> None:
    assert context_window(tiny_model_dir) == 2048
    assert encoder.max_context == 2048


def test_context_window_default_without_config(tmp_path: Path) -> None:
    assert context_window(tmp_path, default=123) == 123
    (tmp_path / "config.json").write_text('{"n_positions": 77}')
    assert context_window(tmp_path) == 77


def test_encode_returns_int32_ids(encoder: TextEncoder) -> None:
    request = encoder.encode(TEXT, 16)

    assert request.input_ids.dtype == np.int32
    assert request.input_ids.ndim == 1
    assert request.input_ids.tolist() == list(encoder.tokenizer.encode(TEXT))
    assert request.request_output_len == 16
    assert request.end_id == encoder.end_id == encoder.tokenizer.eos_token_id
    assert request.pad_id == encoder.pad_id


def test_encode_accepts_utf8_bytes(encoder: TextEncoder) -> None:
    from_bytes = encoder.encode(TEXT.encode("utf-8"), 4)
    from_str = encoder.encode(TEXT, 4)

    np.testing.assert_array_equal(from_bytes.input_ids, from_str.input_ids)


def test_explicit_end_and_pad_ids(encoder: TextEncoder) -> None:
    request = encoder.encode(TEXT, 4, end_id=7, pad_id=8)

    assert (request.end_id, request.pad_id) == (7, 8)


@pytest.mark.parametrize("text", ["", b""])
def test_refuses_empty_text(encoder: TextEncoder, text: object) -> None:
    with pytest.raises(InvalidRequestError, match="empty"):
        encoder.encode(text, 4)


@pytest.mark.parametrize("max_tokens", [0, -1])
def test_refuses_max_tokens_below_one(encoder: TextEncoder, max_tokens: int) -> None:
    with pytest.raises(InvalidRequestError, match="max_tokens"):
        encoder.encode(TEXT, max_tokens)


def test_refuses_prompt_beyond_context_window(encoder: TextEncoder) -> None:
    prompt_len = encoder.encode(TEXT, 1).input_ids.size
    fits = encoder.max_context - prompt_len

    assert encoder.encode(TEXT, fits).request_output_len == fits
    with pytest.raises(InvalidRequestError, match="context window"):
        encoder.encode(TEXT, fits + 1)


def test_max_context_override(tiny_model_dir: Path) -> None:
    small = TextEncoder(tiny_model_dir, max_context=8)

    assert small.max_context == 8
    with pytest.raises(InvalidRequestError, match="context window of 8"):
        small.encode(TEXT, 4)


def test_stop_and_bad_words_packed(encoder: TextEncoder) -> None:
    request = encoder.encode(TEXT, 4, stop_words=["world", b"the scheduler", ""], bad_words=["x"])

    assert request.stop_words.dtype == np.int32
    assert request.stop_words.shape[0] == 2
    first, second = _plain(encoder, "world"), _plain(encoder, "the scheduler")
    np.testing.assert_array_equal(request.stop_words[0, : len(first) + len(second)], first + second)
    assert request.stop_words[1, 0] == len(first)
    assert request.stop_words[1, 1] == len(first) + len(second)
    assert (request.stop_words[1, 2:] == -1).all()
    assert decode_word_lists(request.stop_words) == [first, second]
    assert decode_word_lists(request.bad_words) == [_plain(encoder, "x")]


def test_no_words_pack_to_minus_one(encoder: TextEncoder) -> None:
    request = encoder.encode(TEXT, 4)

    np.testing.assert_array_equal(request.stop_words, [[-1], [-1]])
    np.testing.assert_array_equal(request.bad_words, [[-1], [-1]])


def test_invalid_utf8_query(encoder: TextEncoder) -> None:
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        encoder.encode(b"caf\xc3", 4)


def test_invalid_utf8_stop_word(encoder: TextEncoder) -> None:
    with pytest.raises(InvalidRequestError, match="UTF-8"):
        encoder.encode(TEXT, 4, stop_words=[b"\xff\xfe"])


def test_invalid_request_error_is_a_value_error() -> None:
    assert issubclass(InvalidRequestError, ValueError)


def test_decode_up_to_sequence_length(encoder: TextEncoder, decoder: TextDecoder) -> None:
    ids = np.asarray(_plain(encoder, TEXT), dtype=np.int32)
    keep = 3

    texts = decoder.decode(ids[np.newaxis], np.array([keep], dtype=np.int32))

    assert texts == [str(encoder.tokenizer.decode(ids[:keep].tolist())).encode("utf-8")]
    assert texts[0] != TEXT.encode("utf-8")
    assert TEXT.encode("utf-8").startswith(texts[0])


def test_decode_full_length_round_trips(encoder: TextEncoder, decoder: TextDecoder) -> None:
    ids = encoder.encode(TEXT, 4).input_ids

    assert decoder.decode(ids[np.newaxis], np.array([ids.size])) == [TEXT.encode("utf-8")]


def test_decode_each_beam_to_its_own_length(encoder: TextEncoder, decoder: TextDecoder) -> None:
    ids = np.asarray(_plain(encoder, TEXT), dtype=np.int32)
    beams = np.stack([ids, ids])

    texts = decoder.decode(beams, np.array([ids.size, 0]))

    assert texts == [TEXT.encode("utf-8"), b""]


def test_decode_ignores_padding_past_length(encoder: TextEncoder, decoder: TextDecoder) -> None:
    ids = _plain(encoder, TEXT)
    padded = np.asarray([[*ids, 5, 6, 7]], dtype=np.int32)

    assert decoder.decode(padded, np.array([len(ids)])) == [TEXT.encode("utf-8")]


def test_decode_marks_unknown_ids(encoder: TextEncoder, decoder: TextDecoder) -> None:
    ids = _plain(encoder, TEXT)
    unknown = len(decoder.tokenizer) + 5

    (text,) = decoder.decode(np.asarray([[*ids, unknown]]), np.array([len(ids) + 1]))

    assert text == (TEXT + "\ufffd").encode("utf-8")


# -- decode_batch: TOKENS_BATCH [B, beams, n] → OUTPUT [B, beams] ----------------------------
def test_decode_batch_shapes_b_by_beams(encoder: TextEncoder, decoder: TextDecoder) -> None:
    words = ["hello", " world", " the", " scheduler", " admitted", " requests"]
    ids = [_plain(encoder, w) for w in words]
    width = max(len(i) for i in ids)
    tokens = np.zeros((2, 3, width), dtype=np.int32)
    lengths = np.zeros((2, 3), dtype=np.int32)
    for n, word_ids in enumerate(ids):
        tokens[n // 3, n % 3, : len(word_ids)] = word_ids
        lengths[n // 3, n % 3] = len(word_ids)

    out = decoder.decode_batch(tokens, lengths)

    assert out.shape == (2, 3)
    assert out.dtype == np.object_
    assert out.tolist() == [[w.encode() for w in words[:3]], [w.encode() for w in words[3:]]]


def test_decode_batch_of_one_beam(encoder: TextEncoder, decoder: TextDecoder) -> None:
    ids = _plain(encoder, TEXT)

    out = decoder.decode_batch(np.asarray([[ids]], dtype=np.int32), np.array([[len(ids)]]))

    assert out.shape == (1, 1)
    assert out[0, 0] == TEXT.encode("utf-8")


def test_decode_batch_accepts_beams_without_a_batch_dim(
    encoder: TextEncoder, decoder: TextDecoder
) -> None:
    ids = _plain(encoder, TEXT)

    out = decoder.decode_batch(np.asarray([ids, ids], dtype=np.int32), np.array([len(ids), 2]))

    assert out.shape == (1, 2)
    assert out[0, 0] == TEXT.encode("utf-8")
    assert out[0, 1] == str(encoder.tokenizer.decode(ids[:2])).encode("utf-8")


def test_decode_batch_with_flat_lengths(encoder: TextEncoder, decoder: TextDecoder) -> None:
    ids = _plain(encoder, TEXT)
    tokens = np.asarray([[ids], [ids]], dtype=np.int32)

    out = decoder.decode_batch(tokens, np.array([len(ids), 1]))

    assert out.shape == (2, 1)
    assert out[1, 0] == str(encoder.tokenizer.decode(ids[:1])).encode("utf-8")


def test_decode_batch_of_empty_sequences(decoder: TextDecoder) -> None:
    out = decoder.decode_batch(np.zeros((2, 2, 0), dtype=np.int32), np.zeros((2, 2), np.int32))

    assert out.shape == (2, 2)
    assert out.tolist() == [[b"", b""], [b"", b""]]


def test_decode_skips_special_tokens_unless_asked(
    encoder: TextEncoder, decoder: TextDecoder, tiny_model_dir: Path
) -> None:
    ids = [encoder.tokenizer.bos_token_id, *_plain(encoder, TEXT)]
    keep = TextDecoder(tiny_model_dir, skip_special_tokens=False)

    assert decoder.decode(np.asarray([ids]), np.array([len(ids)])) == [TEXT.encode()]
    (kept,) = keep.decode(np.asarray([ids]), np.array([len(ids)]))
    assert kept.startswith(str(encoder.tokenizer.bos_token).encode())
