"""The ``preprocessing`` model's work: a batch of text requests → ``tensorrt_llm`` tensors.

Each batch row is tokenized and checked on its own (:class:`TextEncoder`); rows are then
stacked as upstream's preprocessing stacks them: ``INPUT_ID [B, longest]`` right-padded
with the pad id, per-row lengths, ``[B, 2, N]`` word lists, and an ``EMBEDDING_BIAS``
``[B, vocab]`` (``[B, 0]`` without bias words). Inputs the served text model cannot use
(encoder-decoder and image or video inputs) are refused by name.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from python_backends.text_codec import InvalidRequestError, TextEncoder, as_text

REFUSED_INPUTS = {
    "DECODER_QUERY": "decoder_text_input: this repository serves a decoder-only model",
    "IMAGE_BYTES": "image_bytes_input: this repository serves a text model",
    "IMAGE_URL": "image_url_input: this repository serves a text model",
    "IMAGE_SIZES": "image_sizes_input: this repository serves a text model",
    "VIDEO_BYTES": "video_bytes_input: this repository serves a text model",
}


def _present(value: np.ndarray) -> bool:
    flat = np.asarray(value).reshape(-1)
    return (
        any(v not in (b"", "") for v in flat.tolist())
        if flat.dtype == np.object_
        else bool(flat.size)
    )


def _row_values(value: np.ndarray | None, batch: int) -> list[list[object]]:
    """Per-row lists of a ``[B, n]`` tensor (absent: no values for any row)."""
    if value is None:
        return [[] for _ in range(batch)]
    arr = np.asarray(value)
    arr = arr.reshape(batch, -1) if arr.size else np.empty((batch, 0), dtype=arr.dtype)
    return [list(row) for row in arr]


def _scalars(value: np.ndarray | None, batch: int, name: str) -> list[int | None]:
    if value is None:
        return [None] * batch
    flat = np.asarray(value).reshape(-1)
    if flat.size != batch:
        raise InvalidRequestError(f"{name} must hold one value per batch row")
    return [int(v) for v in flat]


def _stack_word_lists(rows: Sequence[np.ndarray]) -> np.ndarray:
    """``[2, n_i]`` word lists → ``[B, 2, max n]``, padded with -1 (ignored past the offsets)."""
    width = max(r.shape[1] for r in rows)
    out = np.full((len(rows), 2, width), -1, dtype=np.int32)
    for i, row in enumerate(rows):
        out[i, :, : row.shape[1]] = row
    return out


def embedding_bias(
    encoder: TextEncoder, words: Sequence[object], weights: Sequence[float]
) -> np.ndarray:
    """A ``[vocab]`` bias: each weight added at every token of its word.

    Words are tokenized without special tokens (upstream adds them, which biases BOS too).
    """
    if len(words) != len(weights):
        raise InvalidRequestError(
            f"embedding_bias_words has {len(words)} words but embedding_bias_weights has "
            f"{len(weights)} weights"
        )
    bias = np.zeros(len(encoder.tokenizer), dtype=np.float32)
    for word, weight in zip(words, weights, strict=True):
        for token in encoder.tokenizer.encode(as_text(word), add_special_tokens=False):
            bias[token] += float(weight)
    return bias


def preprocess(inputs: Mapping[str, np.ndarray], encoder: TextEncoder) -> dict[str, np.ndarray]:
    """The preprocessing outputs for one (possibly batched) request."""
    for name, reason in REFUSED_INPUTS.items():
        if name in inputs and _present(inputs[name]):
            raise InvalidRequestError(f"input not supported: {reason}")
    if "QUERY" not in inputs or "REQUEST_OUTPUT_LEN" not in inputs:
        raise InvalidRequestError("text_input and max_tokens are required")
    queries = np.asarray(inputs["QUERY"]).reshape(-1)
    batch = queries.size
    if batch == 0:
        raise InvalidRequestError("text_input must not be empty")
    lengths = _scalars(inputs["REQUEST_OUTPUT_LEN"], batch, "max_tokens")
    end_ids = _scalars(inputs.get("END_ID"), batch, "end_id")
    pad_ids = _scalars(inputs.get("PAD_ID"), batch, "pad_id")
    bad = _row_values(inputs.get("BAD_WORDS_DICT"), batch)
    stop = _row_values(inputs.get("STOP_WORDS_DICT"), batch)
    bias_words = _row_values(inputs.get("EMBEDDING_BIAS_WORDS"), batch)
    bias_weights = _row_values(inputs.get("EMBEDDING_BIAS_WEIGHTS"), batch)
    encoded = [
        encoder.encode(
            query=queries[row],
            max_tokens=int(lengths[row] or 0),
            bad_words=bad[row],
            stop_words=stop[row],
            end_id=end_ids[row],
            pad_id=pad_ids[row],
        )
        for row in range(batch)
    ]
    longest = max(e.input_ids.size for e in encoded)
    input_ids = np.empty((batch, longest), dtype=np.int32)
    for row, e in enumerate(encoded):
        input_ids[row] = e.pad_id  # each row padded with its own pad id
        input_ids[row, : e.input_ids.size] = e.input_ids
    column = np.int32
    outputs = {
        "INPUT_ID": input_ids,
        "REQUEST_INPUT_LEN": np.array([[e.input_ids.size] for e in encoded], dtype=column),
        "BAD_WORDS_IDS": _stack_word_lists([e.bad_words for e in encoded]),
        "STOP_WORDS_IDS": _stack_word_lists([e.stop_words for e in encoded]),
        "REQUEST_OUTPUT_LEN": np.array([[e.request_output_len] for e in encoded], dtype=column),
        "OUT_END_ID": np.array([[e.end_id] for e in encoded], dtype=column),
        "OUT_PAD_ID": np.array([[e.pad_id] for e in encoded], dtype=column),
    }
    if any(bias_words) or any(bias_weights):
        outputs["EMBEDDING_BIAS"] = np.stack(
            [
                embedding_bias(
                    encoder,
                    bias_words[row],
                    [float(w) for w in np.asarray(bias_weights[row], dtype=np.float32)],
                )
                for row in range(batch)
            ]
        )
    else:
        outputs["EMBEDDING_BIAS"] = np.empty((batch, 0), dtype=np.float32)
    extra = inputs.get("PROMPT_TABLE_EXTRA_ID")
    if extra is not None:
        ids = _scalars(extra, batch, "prompt_table_extra_id")
        vocab = len(encoder.tokenizer)
        table = np.where(input_ids >= vocab, np.array(ids, dtype=np.uint64)[:, None], 0)
        outputs["OUT_PROMPT_TABLE_EXTRA_IDS"] = table.astype(np.uint64)
    return outputs
