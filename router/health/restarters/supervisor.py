"""Restart a node's process through the local supervisor's control API (``mufleet up``).

The supervisor SIGKILLs the server's process group and starts it again, which also works
on a frozen (SIGSTOPped) or wedged process that no Triton API call can reach. The router
and the supervisor know a node by the same name.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Literal
from urllib.parse import quote, urlsplit

import httpx
from pydantic import Field, field_validator

from router.fleet.node_config import NodeConfig
from router.health.restarters.base import (
    RestartResult,
    StrictConfig,
    describe_http_error,
    error_text,
)

__all__ = ["SupervisorConfig", "SupervisorRestarter"]


class SupervisorConfig(StrictConfig):
    """``{kind: supervisor}``: ask the local supervisor to restart the node's process."""

    kind: Literal["supervisor"] = "supervisor"
    url: str = "http://127.0.0.1:9010"
    """The supervisor's control API (``mufleet up --supervisor-port``)."""
    token_file: Path | None = None
    """Holds the bearer token (``$MUFLEET_HOME/supervisor.token``); read at each restart,
    so a supervisor started again with a new token is still reached. None: no token."""
    timeout_s: float = Field(30.0, gt=0)

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"url must be http(s)://host:port, got {value!r}")
        return value.rstrip("/")


class SupervisorRestarter:
    """``POST {url}/nodes/{name}/restart``; ok once the supervisor has started the process
    again (readiness is the health machine's to wait for)."""

    name = "supervisor"

    def __init__(
        self, config: SupervisorConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport

    def _result(self, ok: bool, detail: str) -> RestartResult:
        return RestartResult(ok=ok, detail=detail, restarter=self.name)

    def _headers(self) -> dict[str, str]:
        if self.config.token_file is None:
            return {}
        token = self.config.token_file.read_text().strip()
        return {"Authorization": f"Bearer {token}"}

    async def restart(self, node: NodeConfig) -> RestartResult:
        try:
            headers = self._headers()
        except OSError as exc:
            return self._result(False, f"cannot read the supervisor token: {exc}")
        start = time.monotonic()
        try:
            # httpx's timeout bounds each phase; wait_for bounds the whole call.
            response = await asyncio.wait_for(self._post(node.name, headers), self.config.timeout_s)
        except asyncio.TimeoutError:
            return self._result(
                False, f"supervisor {self.config.url}: no answer in {self.config.timeout_s:g}s"
            )
        except httpx.HTTPError as exc:
            return self._result(False, describe_http_error(exc, f"supervisor {self.config.url}"))
        took = time.monotonic() - start
        status = response.status_code
        if status == 200:
            try:
                body = response.json()
            except ValueError:
                body = {}
            pid = body.get("pid") if isinstance(body, dict) else None
            return self._result(
                True, f"supervisor restarted {node.name} (pid {pid}) in {took:.1f}s"
            )
        if status == 401:
            return self._result(False, "the supervisor refused the token (401)")
        if status == 404:
            return self._result(False, f"the supervisor has no node {node.name!r} (404)")
        return self._result(False, f"the supervisor answered {status}: {error_text(response)}")

    async def _post(self, name: str, headers: dict[str, str]) -> httpx.Response:
        async with httpx.AsyncClient(
            base_url=self.config.url, transport=self._transport, timeout=self.config.timeout_s
        ) as client:
            return await client.post(
                f"/nodes/{quote(name, safe='')}/restart",
                json={"reason": "cordoned by the router"},
                headers=headers,
            )
