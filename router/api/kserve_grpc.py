"""KServe v2 over gRPC (``GRPCInferenceService``): an unmodified ``tritonclient.grpc``
client pointed at the router works, streaming included.

Requests are forwarded as the protobufs they arrived as, with the router's priority,
timeout and parameters added. Keys travel as ``authorization: Bearer …`` metadata
(tritonclient's ``headers=``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from router.errors import BadRequest, RouterError
from router.pipeline import Outcome
from router.wire import WireError, is_final

log = logging.getLogger("mufleet.router")
_CODES = {name: getattr(grpc.StatusCode, name) for name in grpc.StatusCode.__members__}


def _metadata(context: grpc.aio.ServicerContext) -> dict[str, str]:
    return {k.lower(): v for k, v in (context.invocation_metadata() or ())}


class KServeGrpcFront(service_pb2_grpc.GRPCInferenceServiceServicer):
    """The KServe v2 gRPC service over a :class:`router.service.RouterService`."""

    def __init__(self, service: Any) -> None:
        self.service = service

    async def _abort(self, context: grpc.aio.ServicerContext, error: RouterError) -> None:
        await context.abort(_CODES.get(error.grpc_code, grpc.StatusCode.INTERNAL), error.message)

    # -- health and metadata ----------------------------------------------------------------
    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=self.service.any_routable())

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(
            name="mufleet-router", version="1", extensions=["model_configuration", "parameters"]
        )

    async def ModelReady(self, request: Any, context: Any) -> Any:
        ready = request.name in self.service.triton_models() and self.service.any_routable()
        return service_pb2.ModelReadyResponse(ready=ready)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return await self._proxy(context, request.name, "ModelMetadata")

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return await self._proxy(context, request.name, "ModelConfig")

    async def _proxy(self, context: Any, model: str, method: str) -> Any:
        try:
            self.service.keys.tenant(_metadata(context).get("authorization"))
            return await self.service.model_proto(model, method)
        except RouterError as error:
            await self._abort(context, error)

    # -- inference --------------------------------------------------------------------------
    def _job(self, context: Any, request: service_pb2.ModelInferRequest) -> Any:
        headers = _metadata(context)
        tenant = self.service.keys.tenant(headers.get("authorization"))
        try:
            return self.service.job_from_proto(tenant, request, headers)
        except WireError as exc:
            raise BadRequest(str(exc)) from None

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        try:
            job = self._job(context, request)
            outcome = Outcome()
            responses = [
                _tagged(r, outcome)
                async for r in self.service.pipeline.run(job, outcome)
                if len(r.outputs)
            ]
            if len(responses) != 1:
                raise BadRequest(
                    f"the model answered with {len(responses)} responses; "
                    "use the streaming API for streaming and multi-sequence requests"
                )
            return responses[0]
        except RouterError as error:
            await self._abort(context, error)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        """Each request on the stream runs concurrently; responses come as they are ready."""
        out: asyncio.Queue[service_pb2.ModelStreamInferResponse | None] = asyncio.Queue()
        tasks: set[asyncio.Task[None]] = set()

        async def serve(request: service_pb2.ModelInferRequest) -> None:
            wants_empty = request.parameters.get("triton_enable_empty_final_response")
            keep_empty = bool(wants_empty is not None and wants_empty.bool_param)
            try:
                job = self._job(context, request)
                outcome = Outcome()
                async for response in self.service.pipeline.run(job, outcome):
                    if len(response.outputs) or (keep_empty and is_final(response)):
                        tagged = _tagged(response, outcome)
                        await out.put(service_pb2.ModelStreamInferResponse(infer_response=tagged))
            except RouterError as error:
                await out.put(_stream_error(request, f"[{error.status}] {error.message}"))
            except Exception as exc:  # never leave a request on the stream unanswered
                log.exception("stream request failed")
                await out.put(_stream_error(request, f"[500] router error: {exc}"))

        async def read() -> None:
            async for request in request_iterator:
                task = asyncio.create_task(serve(request))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            while tasks:
                await asyncio.gather(*list(tasks), return_exceptions=True)
            await out.put(None)

        reader = asyncio.create_task(read())
        try:
            while True:
                item = await out.get()
                if item is None:
                    return
                yield item
        finally:
            reader.cancel()
            for task in list(tasks):
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await reader


def _stream_error(
    request: service_pb2.ModelInferRequest, message: str
) -> service_pb2.ModelStreamInferResponse:
    """An error on the stream that names the request it ends (Triton fills in the id)."""
    response = service_pb2.ModelStreamInferResponse(error_message=message)
    response.infer_response.id = request.id
    response.infer_response.model_name = request.model_name
    return response


def _tagged(
    response: service_pb2.ModelInferResponse, outcome: Outcome
) -> service_pb2.ModelInferResponse:
    """The node's response with the router's choices as response parameters."""
    response.parameters["mufleet_priority"].int64_param = outcome.priority
    if outcome.node:
        response.parameters["mufleet_node"].string_param = outcome.node
    return response


async def serve_grpc(service: Any, host: str, port: int) -> tuple[grpc.aio.Server, int]:
    """Start the gRPC server; returns it and the port it bound (``port=0``: any free one)."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
        ]
    )
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(KServeGrpcFront(service), server)
    bound = server.add_insecure_port(f"{host}:{port}")
    await server.start()
    return server, bound
