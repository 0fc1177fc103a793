"""Unit tests for router.api.kserve_http: KServe v2 JSON (and binary extension) infer bodies
as protobuf requests, and protobuf responses as KServe/``/generate`` JSON."""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson
import pytest
import tritonclient.http as httpclient
from tritonclient.grpc import service_pb2
from tritonclient.http._utils import _get_inference_request

from router.api.kserve_http import generate_json, infer_request_from_json, response_json
from router.errors import BadRequest
from router.wire import WireError, read_input, serialize_bytes

TEXT = "héllo wörld 🙂"


def _convert(payload: dict[str, Any]) -> service_pb2.ModelInferRequest:
    request, _ = infer_request_from_json("ensemble", orjson.dumps(payload), None)
    return request


def _input(request: service_pb2.ModelInferRequest, name: str) -> np.ndarray:
    value = read_input(request, name)
    assert value is not None, name
    return value


# -- JSON data -----------------------------------------------------------------------------
def test_json_data_int32_bool_bytes() -> None:
    request = _convert(
        {
            "id": "req-1",
            "inputs": [
                {"name": "ids", "datatype": "INT32", "shape": [2, 3], "data": [1, 2, 3, 4, 5, 6]},
                {"name": "flag", "datatype": "BOOL", "shape": [1, 1], "data": [[True]]},
                {"name": "text_input", "datatype": "BYTES", "shape": [1, 2], "data": [TEXT, "b"]},
            ],
            "outputs": [{"name": "text_output"}],
        }
    )
    assert request.model_name == "ensemble"
    assert request.id == "req-1"
    assert [t.datatype for t in request.inputs] == ["INT32", "BOOL", "BYTES"]
    ids = _input(request, "ids")
    assert ids.dtype == np.int32
    assert ids.tolist() == [[1, 2, 3], [4, 5, 6]]
    assert _input(request, "flag").tolist() == [[True]]
    text = _input(request, "text_input")
    assert text.shape == (1, 2)
    assert text[0, 0].decode("utf-8") == TEXT
    assert [o.name for o in request.outputs] == ["text_output"]


def test_nested_json_data_is_flattened_to_the_shape() -> None:
    request = _convert(
        {"inputs": [{"name": "x", "datatype": "FP32", "shape": [3], "data": [[0.5], [1], [2]]}]}
    )
    assert _input(request, "x").tolist() == [0.5, 1.0, 2.0]


def test_request_parameters_are_kept_except_priority_and_timeout() -> None:
    request = _convert(
        {
            "inputs": [{"name": "x", "datatype": "INT32", "shape": [1], "data": [1]}],
            "parameters": {"b": True, "i": 3, "s": "v", "priority": 1, "timeout": 10},
        }
    )
    params = request.parameters
    assert params["b"].bool_param is True
    assert params["i"].int64_param == 3
    assert params["s"].string_param == "v"


# -- the binary tensor extension -----------------------------------------------------------
def _tritonclient_body(
    binary: bool = True, priority: int = 0, timeout: int | None = None
) -> tuple[bytes, int | None]:
    text = httpclient.InferInput("text_input", [1, 1], "BYTES")
    text.set_data_from_numpy(np.array([[TEXT.encode()]], dtype=object), binary_data=binary)
    max_tokens = httpclient.InferInput("max_tokens", [1, 1], "INT32")
    max_tokens.set_data_from_numpy(np.array([[16]], dtype=np.int32), binary_data=binary)
    ids = httpclient.InferInput("ids", [2, 3], "INT32")
    ids.set_data_from_numpy(np.arange(6, dtype=np.int32).reshape(2, 3), binary_data=binary)
    flag = httpclient.InferInput("stream", [1, 1], "BOOL")
    flag.set_data_from_numpy(np.array([[True]]), binary_data=False)  # mixed JSON + binary
    outputs = [httpclient.InferRequestedOutput("text_output")]
    body, header_length = _get_inference_request(
        [text, max_tokens, ids, flag], "rid", outputs, 0, False, False, priority, timeout, None
    )
    return bytes(body), header_length


def test_binary_extension_as_tritonclient_sends_it() -> None:
    body, header_length = _tritonclient_body()
    assert header_length is not None and header_length < len(body)
    request, payload = infer_request_from_json("ensemble", body, header_length)
    assert payload["id"] == "rid"
    assert request.id == "rid"
    assert _input(request, "text_input")[0, 0].decode("utf-8") == TEXT
    assert _input(request, "max_tokens").tolist() == [[16]]
    assert _input(request, "ids").tolist() == [[0, 1, 2], [3, 4, 5]]
    assert _input(request, "stream").tolist() == [[True]]
    assert [o.name for o in request.outputs] == ["text_output"]


def test_tritonclient_json_only_body() -> None:
    body, header_length = _tritonclient_body(binary=False)
    assert header_length is None
    request, _ = infer_request_from_json("ensemble", body, None)
    assert _input(request, "text_input")[0, 0].decode("utf-8") == TEXT
    assert _input(request, "ids").shape == (2, 3)


def test_binary_extension_by_hand() -> None:
    ints = np.array([[7, 8]], dtype=np.int32).tobytes()
    words = serialize_bytes(np.array([b"ab", TEXT.encode()], dtype=object))
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "n",
                    "datatype": "INT32",
                    "shape": [1, 2],
                    "parameters": {"binary_data_size": len(ints)},
                },
                {"name": "j", "datatype": "INT32", "shape": [1], "data": [5]},
                {
                    "name": "w",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(words)},
                },
            ]
        }
    )
    request, _ = infer_request_from_json("m", head + ints + words, len(head))
    assert _input(request, "n").tolist() == [[7, 8]]
    assert _input(request, "j").tolist() == [5]
    assert [w.decode() for w in _input(request, "w")] == ["ab", TEXT]


def test_binary_data_of_the_wrong_size_is_a_bad_request() -> None:
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "n",
                    "datatype": "INT32",
                    "shape": [2, 3],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    with pytest.raises(BadRequest, match="binary data does not fit"):
        infer_request_from_json("m", head + b"\x00" * 8, len(head))


def test_binary_data_shorter_than_declared_is_a_bad_request() -> None:
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "n",
                    "datatype": "INT32",
                    "shape": [2],
                    "parameters": {"binary_data_size": 8},
                }
            ]
        }
    )
    with pytest.raises(BadRequest):
        infer_request_from_json("m", head + b"\x00" * 4, len(head))


def test_short_binary_bytes_tensor_is_a_wire_error() -> None:
    blob = struct.pack("<I", 1) + b"a"
    head = orjson.dumps(
        {
            "inputs": [
                {
                    "name": "w",
                    "datatype": "BYTES",
                    "shape": [2],
                    "parameters": {"binary_data_size": len(blob)},
                }
            ]
        }
    )
    with pytest.raises(WireError):  # the infer endpoint answers it with 400
        infer_request_from_json("m", head + blob, len(head))


def test_tritonclient_http_priority_and_timeout_reach_the_job() -> None:
    body, header_length = _tritonclient_body(priority=3, timeout=5_000_000)
    request, _ = infer_request_from_json("ensemble", body, header_length)
    assert "priority" in request.parameters
    assert "timeout" in request.parameters


# -- bad requests --------------------------------------------------------------------------
@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[1, 2]",
        b'{"inputs": {"name": "x"}}',
        b'{"outputs": []}',
        b"{bad json",
    ],
)
def test_malformed_bodies_are_bad_requests(body: bytes) -> None:
    with pytest.raises(BadRequest):
        infer_request_from_json("m", body, None)


@pytest.mark.parametrize(
    "tensor",
    [
        {"datatype": "INT32", "shape": [1], "data": [1]},  # no name
        {"name": "x", "shape": [1], "data": [1]},  # no datatype
        {"name": "x", "datatype": "INT32", "data": [1]},  # no shape
        {"name": "x", "datatype": "INT32", "shape": 3, "data": [1, 2, 3]},  # shape not a list
        {"name": "x", "datatype": "INT32", "shape": [1]},  # no data
        {"name": "x", "datatype": "INT32", "shape": [3], "data": [1, 2]},  # too little data
        {"name": "x", "datatype": "INT32", "shape": [2, 2], "data": [1, 2, 3, 4, 5]},
        {"name": "x", "datatype": "INT32", "shape": [1], "data": ["one"]},
        {"name": "x", "datatype": "COMPLEX64", "shape": [1], "data": [1]},
    ],
)
def test_bad_tensors_are_bad_requests(tensor: dict[str, Any]) -> None:
    with pytest.raises(BadRequest):
        _convert({"inputs": [tensor]})


def test_bytes_data_that_does_not_fit_its_shape_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        _convert({"inputs": [{"name": "t", "datatype": "BYTES", "shape": [3], "data": ["a"]}]})


def test_a_shape_that_is_not_integers_is_a_bad_request() -> None:
    with pytest.raises(BadRequest):
        _convert({"inputs": [{"name": "x", "datatype": "INT32", "shape": ["x"], "data": [1]}]})


# -- responses -----------------------------------------------------------------------------
def _response(text: str = TEXT, index: int | None = None) -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_name="ensemble", model_version="1", id="r9")
    response.outputs.add(name="text_output", datatype="BYTES", shape=[1, 1])
    response.raw_output_contents.append(serialize_bytes(np.array([text.encode()], dtype=object)))
    response.outputs.add(name="sequence_length", datatype="INT32", shape=[1, 1])
    response.raw_output_contents.append(np.array([[4]], dtype=np.int32).tobytes())
    response.outputs.add(name="output_ids", datatype="INT32", shape=[1, 4])
    response.raw_output_contents.append(np.array([[5, 6, 7, 8]], dtype=np.int32).tobytes())
    return response


def test_response_json_shape() -> None:
    body = response_json(_response())
    assert body["model_name"] == "ensemble"
    assert body["model_version"] == "1"
    assert body["id"] == "r9"
    assert body["outputs"] == [
        {"name": "text_output", "datatype": "BYTES", "shape": [1, 1], "data": [TEXT]},
        {"name": "sequence_length", "datatype": "INT32", "shape": [1, 1], "data": [4]},
        {"name": "output_ids", "datatype": "INT32", "shape": [1, 4], "data": [5, 6, 7, 8]},
    ]
    orjson.dumps(body)  # JSON-ready


def test_response_json_defaults_the_version_and_skips_outputs_without_data() -> None:
    response = service_pb2.ModelInferResponse(model_name="m")
    response.outputs.add(name="ghost", datatype="INT32", shape=[1])
    body = response_json(response)
    assert body["model_version"] == "1"
    assert body["outputs"] == []


def test_generate_json_unwraps_single_values() -> None:
    body = generate_json(_response())
    assert body == {
        "model_name": "ensemble",
        "model_version": "1",
        "text_output": TEXT,
        "sequence_length": 4,
        "output_ids": [5, 6, 7, 8],
    }


def test_response_json_replaces_invalid_utf8() -> None:
    response = service_pb2.ModelInferResponse(model_name="m")
    response.outputs.add(name="text_output", datatype="BYTES", shape=[1])
    response.raw_output_contents.append(struct.pack("<I", 2) + b"\xff\xfe")
    assert response_json(response)["outputs"][0]["data"] == ["\ufffd\ufffd"]
