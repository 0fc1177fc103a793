"""How the router counts a request's generated tokens from its responses (what it bills)."""

from __future__ import annotations

import numpy as np
from tritonclient.grpc import service_pb2

from router.pipeline import TokenCount


def _response(**outputs: np.ndarray) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse()
    for name, value in outputs.items():
        tensor = response.outputs.add(name=name, datatype="INT32")
        tensor.shape.extend(value.shape)
        response.raw_output_contents.append(np.ascontiguousarray(value, np.int32).tobytes())
    return response


def test_running_counts_per_sequence_are_not_summed() -> None:
    """Accumulated texts report the total so far: 1, 2, 3 tokens is 3, not 6."""
    count = TokenCount()
    for n in (1, 2, 3):
        count.add(_response(num_output_tokens=np.array([[n]]), sequence_length=np.array([[n]])))
    assert count.total == 3


def test_an_echoed_prompt_is_not_billed_as_output() -> None:
    count = TokenCount()
    count.add(
        _response(
            num_output_tokens=np.array([[4]]),
            sequence_length=np.array([[4 + 50]]),  # prompt included
        )
    )
    assert count.total == 4


def test_sequences_and_rows_add_up() -> None:
    count = TokenCount()
    for batch, seq, n in ((0, 0, 5), (0, 1, 7), (1, 0, 2), (0, 0, 6)):
        count.add(
            _response(
                num_output_tokens=np.array([[n]]),
                batch_index=np.array([[batch]]),
                sequence_index=np.array([[seq]]),
            )
        )
    assert count.total == 6 + 7 + 2


def test_without_counts_sequence_lengths_are_summed() -> None:
    count = TokenCount()
    count.add(_response(sequence_length=np.array([[1]])))
    count.add(_response(sequence_length=np.array([[2]])))
    assert count.total == 3
