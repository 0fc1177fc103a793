"""Run a router: HTTP (uvicorn on uvloop) and gRPC on one event loop, until stopped."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator

import uvicorn

from router.api.kserve_grpc import serve_grpc
from router.config import RouterConfig
from router.service import RouterService

log = logging.getLogger("mufleet.router")


class _Server(uvicorn.Server):
    """uvicorn without its own signal handlers: the router stops HTTP and gRPC together."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


async def serve(config: RouterConfig, ready_message: bool = True) -> None:
    """Serve ``config`` until SIGINT or SIGTERM."""
    service = RouterService(config)
    listen = config.listen
    grpc_server, grpc_port = await serve_grpc(service, listen.host, listen.grpc_port)
    http = _Server(
        uvicorn.Config(
            service.app(),
            host=listen.host,
            port=listen.http_port,
            log_level="warning",
            access_log=False,
            lifespan="off",
        )
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await service.start_background()
    http_task = asyncio.create_task(http.serve())
    while not http.started and not http_task.done():
        await asyncio.sleep(0.05)
    if http_task.done():
        await grpc_server.stop(0)
        await service.stop_background()
        http_task.result()
        raise SystemExit(f"router: HTTP server did not start on {listen.host}:{listen.http_port}")
    if ready_message:
        print(
            f"router ready: http://{listen.host}:{listen.http_port} (OpenAI /v1, KServe /v2, "
            f"/metrics, /admin) grpc {listen.host}:{grpc_port}",
            flush=True,
        )
    try:
        await stop.wait()
    finally:
        http.should_exit = True
        await grpc_server.stop(grace=2.0)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(http_task, timeout=10)
        await service.stop_background()


def run(config: RouterConfig) -> int:
    try:
        import uvloop

        uvloop.run(serve(config))
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(config))
    except KeyboardInterrupt:
        pass
    sys.stdout.flush()
    return 0
