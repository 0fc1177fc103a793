"""The router's connections to its nodes: one gRPC channel each, KServe v2 stream calls.

Every request goes to its node as one ``ModelStreamInfer`` call, whatever front door it
came through: the stream carries the priority and timeout, delivers tokens as they come,
and ends with Triton's final-response flag.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator

import grpc
from tritonclient.grpc import service_pb2, service_pb2_grpc

from router.wire import is_final, set_parameter

MAX_MESSAGE_BYTES = 64 << 20


def _task_cancelling() -> bool:
    """The current task itself is being cancelled (not only the call)."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


class NodeCallError(Exception):
    """A node answered a request with an error, or could not be reached."""

    def __init__(self, message: str, *, transport: bool) -> None:
        super().__init__(message)
        self.message = message
        self.transport = transport
        """True when the node never answered (connection refused, reset, deadline)."""


class CallHandle:
    """Lets someone other than the consumer end a node call (the health monitor evicting
    work from a node it cordoned): :meth:`cancel` cancels the gRPC call, and the consumer's
    stream then raises :class:`NodeCallError` with :attr:`reason` set."""

    def __init__(self) -> None:
        self.call: grpc.aio.Call | None = None
        self.reason: str | None = None

    def cancel(self, reason: str) -> None:
        self.reason = reason
        if self.call is not None:
            self.call.cancel()


class NodeChannel:
    """A node's gRPC channel and stub (created lazily on the running event loop)."""

    def __init__(self, name: str, grpc_url: str) -> None:
        self.name = name
        self.url = grpc_url
        self._channel: grpc.aio.Channel | None = None
        self._stub: service_pb2_grpc.GRPCInferenceServiceStub | None = None

    @property
    def stub(self) -> service_pb2_grpc.GRPCInferenceServiceStub:
        if self._stub is None:
            self._channel = grpc.aio.insecure_channel(
                self.url,
                options=[
                    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
                    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
                    # A restarted node is reached again within a second, not after gRPC's
                    # default back-off (up to 120 s).
                    ("grpc.initial_reconnect_backoff_ms", 200),
                    ("grpc.min_reconnect_backoff_ms", 100),
                    ("grpc.max_reconnect_backoff_ms", 1000),
                ],
            )
            self._stub = service_pb2_grpc.GRPCInferenceServiceStub(self._channel)
        return self._stub

    async def stream(
        self,
        request: service_pb2.ModelInferRequest,
        deadline_s: float | None,
        handle: CallHandle | None = None,
        wait_for_ready: bool = False,
    ) -> AsyncGenerator[service_pb2.ModelInferResponse, None]:
        """The responses of ``request`` up to and including the final one.

        ``wait_for_ready`` waits (within the deadline) for a channel that is reconnecting
        instead of failing at once: right for a probe, wrong for a request that should
        fail over.
        """
        set_parameter(request, "triton_enable_empty_final_response", True)
        call = self.stub.ModelStreamInfer(
            iter([request]), timeout=deadline_s, wait_for_ready=wait_for_ready
        )
        if handle is not None:
            handle.call = call
            if handle.reason is not None:
                call.cancel()
        try:
            async for message in call:
                if message.error_message:
                    raise NodeCallError(message.error_message, transport=False)
                final = is_final(message.infer_response)
                yield message.infer_response
                if final:
                    return
        except grpc.aio.AioRpcError as exc:
            if handle is not None and handle.reason is not None:
                raise NodeCallError(f"evicted: {handle.reason}", transport=True) from exc
            raise NodeCallError(
                f"{exc.code().name}: {exc.details()}",
                transport=exc.code()
                in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED),
            ) from exc
        except asyncio.CancelledError:
            if handle is not None and handle.reason is not None and not _task_cancelling():
                raise NodeCallError(f"evicted: {handle.reason}", transport=True) from None
            raise
        finally:
            call.cancel()

    async def unary(self, method: str, request: object, timeout_s: float = 5.0) -> object:
        """A unary KServe call (``ServerReady``, ``ModelMetadata``, ``ModelConfig`` …)."""
        try:
            return await getattr(self.stub, method)(request, timeout=timeout_s)
        except grpc.aio.AioRpcError as exc:
            raise NodeCallError(
                f"{exc.code().name}: {exc.details()}",
                transport=exc.code() == grpc.StatusCode.UNAVAILABLE,
            ) from exc

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
            self._channel = self._stub = None
