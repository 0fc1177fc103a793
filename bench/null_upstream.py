"""A KServe v2 gRPC server that answers every request at once: the router's cheapest upstream.

    python bench/null_upstream.py --grpc-port 8101 --metrics-port 8102
    python bench/null_upstream.py          # ephemeral ports, printed on the ready line

The router benchmarks put it where a Triton node would be, so that what they measure is
the router (and the client), not an engine. It serves ``GRPCInferenceService`` with
``tritonclient``'s generated stubs (grpcio aio):

* ``ServerLive``, ``ServerReady``, ``ServerMetadata``, ``ModelReady``: always live/ready;
* ``ModelMetadata`` and ``ModelConfig``: a minimal ``ensemble`` description
  (``text_input``, ``max_tokens``, ``stream`` in; ``text_output``, ``output_ids``,
  ``sequence_length`` out);
* ``ModelInfer`` and ``ModelStreamInfer``: one response per request, built from a template:
  ``text_output`` BYTES ``"ok"`` [1, 1], ``output_ids`` INT32 [1, 1, 1],
  ``sequence_length`` INT32 [1, 1] (one token), with the request's id and model name and the
  ``triton_final_response`` parameter set, so a router's stream ends on it.

It also serves ``/metrics`` (``prometheus_client`` on its own registry, in a thread that
wakes only when scraped) with ``nv_inference_pending_request_count{model="tensorrt_llm",
version="1"} 0``, which is what the router's scraper reads.

Importable: :func:`start` runs one in a subprocess and returns a :class:`NullUpstream`
handle (ports, pid, :meth:`NullUpstream.stop`).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from prometheus_client import CollectorRegistry, Gauge, start_http_server
from tritonclient.grpc import model_config_pb2, service_pb2, service_pb2_grpc

READY_PREFIX = "null upstream ready"
HERE = Path(__file__).resolve()


def _response_template() -> service_pb2.ModelInferResponse:
    response = service_pb2.ModelInferResponse(model_version="1")
    outputs: tuple[tuple[str, str, tuple[int, ...], bytes], ...] = (
        ("text_output", "BYTES", (1, 1), len(b"ok").to_bytes(4, "little") + b"ok"),
        ("output_ids", "INT32", (1, 1, 1), np.array([1], dtype=np.int32).tobytes()),
        ("sequence_length", "INT32", (1, 1), np.array([1], dtype=np.int32).tobytes()),
    )
    for name, datatype, shape, raw in outputs:
        tensor = response.outputs.add()
        tensor.name = name
        tensor.datatype = datatype
        tensor.shape.extend(shape)
        response.raw_output_contents.append(raw)
    response.parameters["triton_final_response"].bool_param = True
    return response


TEMPLATE = _response_template()


def _metadata(name: str) -> service_pb2.ModelMetadataResponse:
    meta = service_pb2.ModelMetadataResponse(name=name, versions=["1"], platform="ensemble")
    for tensor, datatype, shape in (
        ("text_input", "BYTES", (-1, 1)),
        ("max_tokens", "INT32", (-1, 1)),
        ("stream", "BOOL", (-1, 1)),
    ):
        meta.inputs.add(name=tensor, datatype=datatype, shape=shape)
    outputs: tuple[tuple[str, str, tuple[int, ...]], ...] = (
        ("text_output", "BYTES", (-1, -1)),
        ("output_ids", "INT32", (-1, -1, -1)),
        ("sequence_length", "INT32", (-1, -1)),
    )
    for tensor, datatype, dims in outputs:
        meta.outputs.add(name=tensor, datatype=datatype, shape=dims)
    return meta


def _config(name: str) -> service_pb2.ModelConfigResponse:
    dt = model_config_pb2.DataType
    config = model_config_pb2.ModelConfig(name=name, platform="ensemble", max_batch_size=64)
    for tensor, dtype in (
        ("text_input", dt.TYPE_STRING),
        ("max_tokens", dt.TYPE_INT32),
        ("stream", dt.TYPE_BOOL),
    ):
        config.input.add(name=tensor, data_type=dtype, dims=[1], optional=tensor == "stream")
    for tensor, dtype, dims in (
        ("text_output", dt.TYPE_STRING, [-1]),
        ("output_ids", dt.TYPE_INT32, [-1, -1]),
        ("sequence_length", dt.TYPE_INT32, [-1]),
    ):
        config.output.add(name=tensor, data_type=dtype, dims=dims)
    config.model_transaction_policy.decoupled = True
    return service_pb2.ModelConfigResponse(config=config)


def answer(request: service_pb2.ModelInferRequest) -> service_pb2.ModelInferResponse:
    """The one response to ``request``: the template with its id and model name."""
    response = service_pb2.ModelInferResponse()
    response.CopyFrom(TEMPLATE)
    response.id = request.id
    response.model_name = request.model_name
    return response


class NullServicer(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Every call answered at once; counts the inference requests it served."""

    def __init__(self) -> None:
        self.served = 0

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return service_pb2.ServerMetadataResponse(name="null-upstream", version="2.51.0")

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return service_pb2.ModelReadyResponse(ready=True)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        return _metadata(request.name or "ensemble")

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        return _config(request.name or "ensemble")

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.served += 1
        return answer(request)

    async def ModelStreamInfer(
        self, request_iterator: AsyncIterator[Any], context: Any
    ) -> AsyncIterator[service_pb2.ModelStreamInferResponse]:
        async for request in request_iterator:
            self.served += 1
            yield service_pb2.ModelStreamInferResponse(infer_response=answer(request))


def serve_metrics(host: str, port: int) -> int:
    """``/metrics`` with the pending-request gauge the router scrapes; returns the port."""
    registry = CollectorRegistry(auto_describe=False)
    gauge = Gauge(
        "nv_inference_pending_request_count",
        "Instantaneous number of pending requests awaiting execution per-model.",
        ["model", "version"],
        registry=registry,
    )
    for model in ("tensorrt_llm", "ensemble"):
        gauge.labels(model, "1").set(0)
    server, _thread = start_http_server(port, addr=host, registry=registry)
    return int(server.server_port)


async def serve(host: str, grpc_port: int, metrics_port: int) -> None:
    """Serve until SIGINT/SIGTERM; prints ``null upstream ready grpc=H:P metrics=H:P``."""
    server = grpc.aio.server(
        options=[
            ("grpc.max_send_message_length", 64 << 20),
            ("grpc.max_receive_message_length", 64 << 20),
            ("grpc.so_reuseport", 0),
        ]
    )
    servicer = NullServicer()
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    bound = server.add_insecure_port(f"{host}:{grpc_port}")
    await server.start()
    mport = serve_metrics(host, metrics_port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    print(f"{READY_PREFIX} grpc={host}:{bound} metrics={host}:{mport}", flush=True)
    try:
        await stop.wait()
    finally:
        await server.stop(grace=0.5)
        print(f"null upstream served {servicer.served} requests", file=sys.stderr, flush=True)


@dataclass
class NullUpstream:
    """A null upstream running in a subprocess."""

    process: subprocess.Popen[str]
    host: str
    grpc_port: int
    metrics_port: int

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def stop(self, timeout: float = 10.0) -> None:
        """SIGTERM, then SIGKILL (this process only, by its pid)."""
        stop_process(self.process, timeout)


def stop_process(process: subprocess.Popen[Any], timeout: float = 10.0) -> None:
    """SIGTERM ``process`` by pid, wait, SIGKILL it if it does not exit."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
            process.wait(timeout=timeout)
    for stream in (process.stdout, process.stderr):
        if stream is not None:
            stream.close()


def start(
    grpc_port: int = 0,
    metrics_port: int = 0,
    host: str = "127.0.0.1",
    log_path: Path | None = None,
    timeout: float = 30.0,
) -> NullUpstream:
    """Start a null upstream subprocess and wait for its ready line (ports 0: ephemeral)."""
    log = open(log_path, "ab") if log_path else subprocess.DEVNULL  # noqa: SIM115
    process = subprocess.Popen(
        [
            sys.executable,
            str(HERE),
            "--host",
            host,
            "--grpc-port",
            str(grpc_port),
            "--metrics-port",
            str(metrics_port),
        ],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    if log_path:
        log.close()  # type: ignore[union-attr]
    try:
        assert process.stdout is not None
        line = _readline(process, timeout)
        if not line.startswith(READY_PREFIX):
            raise RuntimeError(f"null upstream did not start: {line!r}")
        fields = dict(part.split("=", 1) for part in line.split()[3:])
        grpc_bound = int(fields["grpc"].rpartition(":")[2])
        metrics_bound = int(fields["metrics"].rpartition(":")[2])
    except BaseException:
        stop_process(process)
        raise
    return NullUpstream(process, host, grpc_bound, metrics_bound)


def _readline(process: subprocess.Popen[str], timeout: float) -> str:
    """The child's first stdout line, or '' if it exits or takes longer than ``timeout``."""
    import selectors

    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--grpc-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--metrics-port", type=int, default=0, help="0: any free port")
    parser.add_argument("--no-uvloop", action="store_true", help="plain asyncio event loop")
    args = parser.parse_args(argv)
    coro = serve(args.host, args.grpc_port, args.metrics_port)
    if args.no_uvloop:
        asyncio.run(coro)
    else:
        import uvloop

        uvloop.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())
