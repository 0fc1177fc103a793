"""Unit tests for router.wire: KServe v2 tensors in ModelInferRequest/ModelInferResponse."""

from __future__ import annotations

import struct

import numpy as np
import pytest
from tritonclient.grpc import service_pb2

from router.wire import (
    WireError,
    add_input,
    build_request,
    deserialize_bytes,
    is_final,
    read_input,
    read_output,
    serialize_bytes,
    set_parameter,
)

TEXT = "héllo wörld — 你好 🙂"


@pytest.mark.parametrize("shape", [(1, 1), (2, 3)])
@pytest.mark.parametrize(
    ("dtype", "datatype"),
    [(np.int32, "INT32"), (np.uint64, "UINT64"), (np.float32, "FP32"), (np.bool_, "BOOL")],
)
def test_numeric_round_trip(shape: tuple[int, ...], dtype: type, datatype: str) -> None:
    count = int(np.prod(shape))
    if dtype is np.bool_:
        value = (np.arange(count) % 2 == 0).reshape(shape)
    elif dtype is np.uint64:
        value = (np.arange(count, dtype=np.uint64) + np.uint64(2**63)).reshape(shape)
    else:
        value = (np.arange(count) * 1.5 - 2).astype(dtype).reshape(shape)
    request = build_request("ensemble", {"x": value}, request_id="r1")
    assert request.model_name == "ensemble"
    assert request.id == "r1"
    assert request.inputs[0].datatype == datatype
    assert list(request.inputs[0].shape) == list(shape)
    back = read_input(request, "x")
    assert back is not None
    assert back.dtype == np.dtype(dtype)
    assert back.shape == shape
    np.testing.assert_array_equal(back, value)


@pytest.mark.parametrize("shape", [(1, 1), (2, 3)])
def test_bytes_round_trip_keeps_multibyte_utf8(shape: tuple[int, ...]) -> None:
    count = int(np.prod(shape))
    words = [f"{TEXT} {i}".encode() for i in range(count)]
    value = np.array(words, dtype=object).reshape(shape)
    request = build_request("ensemble", {"text_input": value})
    assert request.inputs[0].datatype == "BYTES"
    back = read_input(request, "text_input")
    assert back is not None
    assert back.shape == shape
    assert [b.decode("utf-8") for b in back.reshape(-1)] == [w.decode() for w in words]


def test_bytes_length_prefix_counts_bytes_not_characters() -> None:
    raw = serialize_bytes(np.array([TEXT.encode()], dtype=object))
    (length,) = struct.unpack_from("<I", raw, 0)
    assert length == len(TEXT.encode("utf-8")) > len(TEXT)
    assert raw[4:] == TEXT.encode("utf-8")


def test_str_arrays_are_sent_as_bytes() -> None:
    request = build_request("m", {"s": np.array([["a", "ü"]])})
    assert request.inputs[0].datatype == "BYTES"
    back = read_input(request, "s")
    assert back is not None
    assert back.tolist() == [[b"a", "ü".encode()]]


def test_several_inputs_read_by_name_and_outputs_named() -> None:
    request = build_request(
        "ensemble",
        {
            "text_input": np.array([[b"hi"]], dtype=object),
            "max_tokens": np.array([[16]], dtype=np.int32),
            "stream": np.array([[True]], dtype=bool),
        },
        outputs=("text_output", "sequence_length"),
    )
    assert [o.name for o in request.outputs] == ["text_output", "sequence_length"]
    max_tokens = read_input(request, "max_tokens")
    stream = read_input(request, "stream")
    assert max_tokens is not None and int(max_tokens[0, 0]) == 16
    assert stream is not None and bool(stream[0, 0]) is True
    assert read_input(request, "absent") is None


def test_typed_contents_are_read() -> None:
    request = service_pb2.ModelInferRequest(model_name="ensemble")
    text = request.inputs.add(name="text_input", datatype="BYTES", shape=[1, 2])
    text.contents.bytes_contents.extend([TEXT.encode(), b"two"])
    ints = request.inputs.add(name="max_tokens", datatype="INT32", shape=[2, 1])
    ints.contents.int_contents.extend([7, -3])
    text_back = read_input(request, "text_input")
    ints_back = read_input(request, "max_tokens")
    assert text_back is not None and ints_back is not None
    assert text_back.shape == (1, 2)
    assert text_back[0, 0].decode() == TEXT
    assert ints_back.dtype == np.int32
    assert ints_back.tolist() == [[7], [-3]]


def test_typed_contents_that_are_empty_read_as_none() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT32", shape=[0])
    assert read_input(request, "x") is None


def test_short_bytes_tensor_raises_wire_error() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="t", datatype="BYTES", shape=[1, 2])
    request.raw_input_contents.append(struct.pack("<I", 2) + b"ab")  # one element of two
    with pytest.raises(WireError, match="BYTES"):
        read_input(request, "t")


def test_deserialize_bytes_raises_on_a_truncated_length_prefix() -> None:
    with pytest.raises(WireError):
        deserialize_bytes(b"\x01\x00", 1)


def test_bytes_element_longer_than_its_tensor_raises_wire_error() -> None:
    with pytest.raises(WireError):
        deserialize_bytes(struct.pack("<I", 10) + b"abc", 1)


def test_bytes_tensor_with_more_elements_than_its_shape_raises_wire_error() -> None:
    raw = serialize_bytes(np.array([b"a", b"b", b"c"], dtype=object))
    with pytest.raises(WireError):
        deserialize_bytes(raw, 2)
    assert deserialize_bytes(raw, 3) == [b"a", b"b", b"c"]


def test_empty_bytes_tensor() -> None:
    assert serialize_bytes(np.array([], dtype=object)) == b""
    assert deserialize_bytes(b"", 0) == []
    with pytest.raises(WireError):
        deserialize_bytes(b"", 1)


def test_numeric_raw_contents_of_the_wrong_size_raise_wire_error() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT32", shape=[2, 3])
    request.raw_input_contents.append(np.arange(5, dtype=np.int32).tobytes())
    with pytest.raises(WireError, match="do not fit"):
        read_input(request, "x")


def test_unknown_datatype_raises_wire_error() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="COMPLEX", shape=[1])
    request.raw_input_contents.append(b"\x00" * 8)
    with pytest.raises(WireError, match="unknown data type"):
        read_input(request, "x")


def test_missing_raw_contents_raise_wire_error() -> None:
    request = service_pb2.ModelInferRequest(model_name="m")
    request.inputs.add(name="a", datatype="INT32", shape=[1])
    request.inputs.add(name="b", datatype="INT32", shape=[1])
    request.raw_input_contents.append(np.array([1], dtype=np.int32).tobytes())
    with pytest.raises(WireError, match="no raw contents"):
        read_input(request, "b")


def _response() -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="ensemble", id="abc")
    response.outputs.add(name="text_output", datatype="BYTES", shape=[1, 1])
    response.raw_output_contents.append(serialize_bytes(np.array([TEXT.encode()], dtype=object)))
    response.outputs.add(name="sequence_length", datatype="INT32", shape=[1, 1])
    response.raw_output_contents.append(np.array([[5]], dtype=np.int32).tobytes())
    response.outputs.add(name="output_ids", datatype="INT32", shape=[1, 2, 3])
    response.raw_output_contents.append(np.arange(6, dtype=np.int32).tobytes())
    return response


def test_read_output_of_a_hand_built_response() -> None:
    response = _response()
    text = read_output(response, "text_output")
    lengths = read_output(response, "sequence_length")
    ids = read_output(response, "output_ids")
    assert text is not None and text.shape == (1, 1)
    assert text[0, 0].decode("utf-8") == TEXT
    assert lengths is not None and lengths.tolist() == [[5]]
    assert ids is not None and ids.shape == (1, 2, 3)
    assert ids.reshape(-1).tolist() == [0, 1, 2, 3, 4, 5]
    assert read_output(response, "nope") is None


def test_read_output_without_raw_contents_is_none() -> None:
    response = service_pb2.ModelInferResponse(model_name="m")
    response.outputs.add(name="text_output", datatype="BYTES", shape=[1, 1])
    assert read_output(response, "text_output") is None


def test_is_final() -> None:
    response = service_pb2.ModelInferResponse()
    assert not is_final(response)
    response.parameters["triton_final_response"].bool_param = False
    assert not is_final(response)
    response.parameters["triton_final_response"].bool_param = True
    assert is_final(response)


def test_set_parameter_picks_the_field_by_type() -> None:
    request = service_pb2.ModelInferRequest()
    set_parameter(request, "b", True)
    set_parameter(request, "i", 7)
    set_parameter(request, "s", "x")
    assert request.parameters["b"].WhichOneof("parameter_choice") == "bool_param"
    assert request.parameters["i"].int64_param == 7
    assert request.parameters["s"].string_param == "x"


def test_add_input_appends_in_order() -> None:
    request = service_pb2.ModelInferRequest()
    add_input(request, "a", np.array([1], dtype=np.int32))
    add_input(request, "b", np.array([b"x"], dtype=object))
    assert [t.name for t in request.inputs] == ["a", "b"]
    assert len(request.raw_input_contents) == 2
