"""KServe v2 tensors on the wire: build and read ``ModelInferRequest``/``ModelInferResponse``.

The router forwards protobuf requests to the nodes as they are (a gRPC client's request
travels unchanged, with the router's priority and parameters added), so it only needs to
read the few tensors that price a request and to write the ones it builds itself.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping

import numpy as np
from tritonclient.grpc import service_pb2
from tritonclient.utils import deserialize_bytes_tensor, serialize_byte_tensor

DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype(np.bool_),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
}
NUMPY_TO_TRITON = {v: k for k, v in DTYPES.items()}


class WireError(ValueError):
    """A tensor that cannot be read as declared (the client's fault)."""


def serialize_bytes(values: np.ndarray) -> bytes:
    """Triton's BYTES layout: each element as a 4-byte little-endian length and its bytes."""
    items = np.array(
        [v if isinstance(v, bytes) else str(v).encode("utf-8") for v in values.reshape(-1)],
        dtype=object,
    )
    return bytes(serialize_byte_tensor(items).item()) if items.size else b""


def deserialize_bytes(raw: bytes, count: int) -> list[bytes]:
    try:
        items = [bytes(v) for v in deserialize_bytes_tensor(raw)] if raw else []
    except struct.error:
        raise WireError("BYTES tensor is malformed") from None
    if len(items) != count:
        raise WireError(f"BYTES tensor holds {len(items)} elements; its shape says {count}")
    return items


def add_input(request: service_pb2.ModelInferRequest, name: str, value: np.ndarray) -> None:
    """Append ``value`` as a raw input tensor (object arrays become BYTES)."""
    tensor = request.inputs.add()
    tensor.name = name
    tensor.shape.extend(value.shape)
    if value.dtype == np.object_ or value.dtype.kind in "SU":
        tensor.datatype = "BYTES"
        request.raw_input_contents.append(serialize_bytes(value))
    else:
        tensor.datatype = NUMPY_TO_TRITON[value.dtype]
        request.raw_input_contents.append(np.ascontiguousarray(value).tobytes())


def build_request(
    model: str,
    inputs: Mapping[str, np.ndarray],
    request_id: str = "",
    outputs: tuple[str, ...] = (),
) -> service_pb2.ModelInferRequest:
    request = service_pb2.ModelInferRequest(model_name=model, id=request_id)
    for name, value in inputs.items():
        add_input(request, name, value)
    for name in outputs:
        request.outputs.add().name = name
    return request


def _from_contents(tensor: service_pb2.ModelInferRequest.InferInputTensor) -> np.ndarray | None:
    """Values carried in the typed ``contents`` field instead of raw bytes."""
    c = tensor.contents
    for field, dtype in (
        ("bytes_contents", np.object_),
        ("int_contents", np.int32),
        ("int64_contents", np.int64),
        ("uint_contents", np.uint32),
        ("uint64_contents", np.uint64),
        ("fp32_contents", np.float32),
        ("fp64_contents", np.float64),
        ("bool_contents", np.bool_),
    ):
        values = getattr(c, field)
        if len(values):
            return np.array(list(values), dtype=dtype)
    return None


def read_input(request: service_pb2.ModelInferRequest, name: str) -> np.ndarray | None:
    """Input ``name`` as a numpy array of its declared shape (None if absent)."""
    has_raw = bool(request.raw_input_contents)
    for raw_index, tensor in enumerate(request.inputs):
        if tensor.name == name:
            shape = tuple(int(d) for d in tensor.shape)
            count = int(np.prod(shape)) if shape else 1
            if has_raw:
                if raw_index >= len(request.raw_input_contents):
                    raise WireError(f"input {name} has no raw contents")
                raw = request.raw_input_contents[raw_index]
                if tensor.datatype == "BYTES":
                    return np.array(deserialize_bytes(raw, count), dtype=object).reshape(shape)
                dtype = DTYPES.get(tensor.datatype)
                if dtype is None:
                    raise WireError(f"input {name} has unknown data type {tensor.datatype}")
                if len(raw) != count * dtype.itemsize:
                    raise WireError(f"input {name}: {len(raw)} bytes do not fit shape {shape}")
                return np.frombuffer(raw, dtype=dtype).reshape(shape)
            values = _from_contents(tensor)
            return None if values is None else values.reshape(shape)
    return None


def set_json_parameter(request: service_pb2.ModelInferRequest, key: str, value: object) -> None:
    """A request parameter from a JSON value; ``priority``/``timeout`` as Triton reads them.

    Raises :class:`WireError` for a value a parameter cannot hold.
    """
    if key in ("priority", "timeout"):
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise WireError(f"parameter {key} must be a non-negative integer")
        if key == "priority":
            request.parameters[key].uint64_param = value
        else:
            request.parameters[key].int64_param = value
    elif isinstance(value, bool):
        request.parameters[key].bool_param = value
    elif isinstance(value, int):
        request.parameters[key].int64_param = value
    elif isinstance(value, float):
        request.parameters[key].double_param = value
    elif isinstance(value, str):
        request.parameters[key].string_param = value
    else:
        raise WireError(f"parameter {key} must be a scalar")


def set_parameter(message: object, key: str, value: bool | int | str) -> None:
    """Set a request parameter (``bool_param``, ``int64_param`` or ``string_param``)."""
    param = message.parameters[key]  # type: ignore[attr-defined]
    if isinstance(value, bool):
        param.bool_param = value
    elif isinstance(value, int):
        param.int64_param = value
    else:
        param.string_param = value


def read_output(response: service_pb2.ModelInferResponse, name: str) -> np.ndarray | None:
    """Output ``name`` of a response (raw contents, as Triton sends them)."""
    for index, tensor in enumerate(response.outputs):
        if tensor.name != name:
            continue
        shape = tuple(int(d) for d in tensor.shape)
        count = int(np.prod(shape)) if shape else 1
        if index >= len(response.raw_output_contents):
            return None
        raw = response.raw_output_contents[index]
        if tensor.datatype == "BYTES":
            return np.array(deserialize_bytes(raw, count), dtype=object).reshape(shape)
        return np.frombuffer(raw, dtype=DTYPES[tensor.datatype]).reshape(shape)
    return None


def is_final(response: service_pb2.ModelInferResponse) -> bool:
    param = response.parameters.get("triton_final_response")
    return bool(param is not None and param.bool_param)
