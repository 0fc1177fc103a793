"""KServe v2 over HTTP, as Triton serves it: health, model metadata and config, ``infer``
(JSON and the binary tensor extension), ``generate`` and ``generate_stream``.

Requests become ``ModelInferRequest`` protobufs and go through the same pipeline as the
gRPC front door; ``tritonclient.http`` pointed at the router works unchanged.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import orjson
from starlette.requests import Request
from starlette.responses import Response
from tritonclient.grpc import service_pb2

from router.api.common import ClosingStream, JSONResponse, kserve_error, parse_json, read_body
from router.errors import BadRequest, RouterError
from router.wire import (
    DTYPES,
    WireError,
    add_input,
    deserialize_bytes,
    read_output,
    set_json_parameter,
)

HEADER_LENGTH = "inference-header-content-length"


def _array(tensor: dict[str, Any], binary: bytes | None) -> np.ndarray:
    name, datatype = tensor.get("name"), tensor.get("datatype")
    shape = tensor.get("shape")
    if not isinstance(name, str) or not isinstance(datatype, str) or not isinstance(shape, list):
        raise BadRequest("each input needs a name, a datatype and a shape")
    if not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
        raise BadRequest(f"input {name}: shape must be a list of non-negative integers")
    count = int(np.prod(shape)) if shape else 1
    if binary is not None:
        if datatype == "BYTES":
            return np.array(deserialize_bytes(binary, count), dtype=object).reshape(shape)
        dtype = DTYPES.get(datatype)
        if dtype is None or len(binary) != count * dtype.itemsize:
            raise BadRequest(f"input {name}: binary data does not fit {datatype}{shape}")
        return np.frombuffer(binary, dtype=dtype).reshape(shape)
    data = tensor.get("data")
    if data is None:
        raise BadRequest(f"input {name} has no data")
    if datatype == "BYTES":
        try:
            flat = np.array(
                [d.encode("utf-8") if isinstance(d, str) else bytes(d) for d in np.ravel(data)],
                dtype=object,
            )
            return flat.reshape(shape)
        except (TypeError, ValueError) as exc:
            raise BadRequest(f"input {name}: data does not fit BYTES{shape}: {exc}") from None
    dtype = DTYPES.get(datatype)
    if dtype is None:
        raise BadRequest(f"input {name}: unknown datatype {datatype}")
    try:
        return np.asarray(data, dtype=dtype).reshape(shape)
    except (TypeError, ValueError) as exc:
        raise BadRequest(f"input {name}: data does not fit {datatype}{shape}: {exc}") from None


def infer_request_from_json(
    model: str, body: bytes, header_length: int | None
) -> tuple[service_pb2.ModelInferRequest, dict[str, Any]]:
    """A KServe JSON (or JSON + binary) infer body as a protobuf request."""
    try:
        return _infer_request(model, body, header_length)
    except (RouterError, WireError):
        raise
    except (ValueError, TypeError, AttributeError) as exc:
        raise BadRequest(f"malformed infer request: {exc}") from None


def _infer_request(
    model: str, body: bytes, header_length: int | None
) -> tuple[service_pb2.ModelInferRequest, dict[str, Any]]:
    head = body if header_length is None else body[:header_length]
    blob = b"" if header_length is None else body[header_length:]
    payload = parse_json(head)
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        raise BadRequest("an infer request is a JSON object with an 'inputs' list")
    request = service_pb2.ModelInferRequest(model_name=model, id=str(payload.get("id", "")))
    offset = 0
    for tensor in payload["inputs"]:
        if not isinstance(tensor, dict):
            raise BadRequest("each input is a JSON object")
        size = (tensor.get("parameters") or {}).get("binary_data_size")
        binary = None
        if size is not None:
            binary, offset = blob[offset : offset + int(size)], offset + int(size)
        add_input(request, str(tensor.get("name")), _array(tensor, binary))
    for output in payload.get("outputs") or []:
        request.outputs.add().name = str(output.get("name"))
    for key, value in (payload.get("parameters") or {}).items():
        set_json_parameter(request, str(key), value)
    return request, payload


def _json_value(array: np.ndarray) -> Any:
    if array.dtype == np.object_:
        return [v.decode("utf-8", "replace") if isinstance(v, bytes) else v for v in array.ravel()]
    return array.ravel().tolist()


def response_json(response: service_pb2.ModelInferResponse) -> dict[str, Any]:
    outputs = []
    for tensor in response.outputs:
        array = read_output(response, tensor.name)
        if array is None:
            continue
        outputs.append(
            {
                "name": tensor.name,
                "datatype": tensor.datatype,
                "shape": list(array.shape),
                "data": _json_value(array),
            }
        )
    return {
        "model_name": response.model_name,
        "model_version": response.model_version or "1",
        "id": response.id,
        "outputs": outputs,
    }


def generate_json(response: service_pb2.ModelInferResponse) -> dict[str, Any]:
    """Triton's ``/generate`` shape: each output by name, single values unwrapped."""
    out: dict[str, Any] = {"model_name": response.model_name, "model_version": "1"}
    for tensor in response.outputs:
        array = read_output(response, tensor.name)
        if array is None:
            continue
        values = _json_value(array)
        out[tensor.name] = values[0] if len(values) == 1 else values
    return out


class KServeHttpFront:
    """The KServe v2 HTTP endpoints over a :class:`router.service.RouterService`."""

    def __init__(self, service: Any) -> None:
        self.service = service

    async def live(self, request: Request) -> Response:
        return Response(status_code=200)

    async def ready(self, request: Request) -> Response:
        return Response(status_code=200 if self.service.any_routable() else 503)

    async def model_ready(self, request: Request) -> Response:
        name = request.path_params["model"]
        known = name in self.service.triton_models()
        return Response(status_code=200 if known and self.service.any_routable() else 404)

    async def metadata(self, request: Request) -> Response:
        return await self._proxy_json(request, "ModelMetadata")

    async def config(self, request: Request) -> Response:
        return await self._proxy_json(request, "ModelConfig")

    async def _proxy_json(self, request: Request, method: str) -> Response:
        try:
            self.service.keys.tenant(request.headers.get("authorization"))
            body = await self.service.model_info(request.path_params["model"], method)
        except RouterError as error:
            return kserve_error(error)
        return JSONResponse(body)

    async def infer(self, request: Request) -> Response:
        try:
            tenant = self.service.keys.tenant(request.headers.get("authorization"))
            raw = await read_body(request, self.service.config.limits.max_body_bytes)
            header = request.headers.get(HEADER_LENGTH)
            if header is not None and not header.isdigit():
                raise BadRequest(f"{HEADER_LENGTH} must be a byte count")
            proto, _ = infer_request_from_json(
                request.path_params["model"], raw, int(header) if header else None
            )
            job = self.service.job_from_proto(tenant, proto, request.headers)
            responses = [r async for r in self.service.pipeline.run(job)]
            merged = [r for r in responses if len(r.outputs)]
            if len(merged) != 1:
                raise BadRequest(
                    f"the model answered with {len(merged)} responses; use generate_stream "
                    "or the gRPC stream for streaming and multi-sequence requests"
                )
            return JSONResponse(response_json(merged[0]))
        except (RouterError, WireError) as error:
            return kserve_error(error if isinstance(error, RouterError) else BadRequest(str(error)))

    async def generate(self, request: Request) -> Response:
        return await self._generate(request, stream=False)

    async def generate_stream(self, request: Request) -> Response:
        return await self._generate(request, stream=True)

    async def _generate(self, request: Request, stream: bool) -> Response:
        try:
            tenant = self.service.keys.tenant(request.headers.get("authorization"))
            raw = await read_body(request, self.service.config.limits.max_body_bytes)
            body = parse_json(raw)
            if not isinstance(body, dict):
                raise BadRequest("a generate request is a JSON object of input values")
            model = request.path_params["model"]
            proto = await self.service.generate_request(model, body)
            job = self.service.job_from_proto(tenant, proto, request.headers)
            pipeline = self.service.pipeline.run(job)
            if not stream:
                responses = [r async for r in pipeline]
                merged = [r for r in responses if len(r.outputs)]
                if len(merged) != 1:
                    raise BadRequest(
                        f"the model answered with {len(merged)} responses; use generate_stream"
                    )
                return JSONResponse(generate_json(merged[0]))
            head = await anext(pipeline, None)
        except (RouterError, WireError) as error:
            return kserve_error(error if isinstance(error, RouterError) else BadRequest(str(error)))

        async def events() -> AsyncIterator[bytes]:
            try:
                response = head
                while response is not None:
                    if len(response.outputs):
                        yield b"data: " + orjson.dumps(generate_json(response)) + b"\n\n"
                    response = await anext(pipeline, None)
            except RouterError as error:
                yield b"data: " + orjson.dumps({"error": error.message}) + b"\n\n"

        return ClosingStream(events(), pipeline.aclose)
