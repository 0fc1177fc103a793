"""Restart a node's engine in place: unload and load its models through Triton's
repository API.

Triton 2.51 treats a ``load`` of a loaded, unchanged model as a no-op, which would leave a
dead Python stub in place; so each model is unloaded first, then loaded, which starts a
new stub. Ensembles that compose the model are reloaded by Triton with it; the restart
counts as done only once the reloaded models and ``ready_models`` answer ready.

This cannot help a server that does not answer at all (a frozen or dead process): the
liveness check fails within ``call_timeout_s`` and the chain moves on to a process-level
restarter.
"""

from __future__ import annotations

import asyncio
import time
from typing import Annotated, Literal
from urllib.parse import quote

import httpx
from pydantic import AfterValidator, Field

from router.fleet.node_config import NodeConfig
from router.health.restarters.base import (
    RestartResult,
    StrictConfig,
    describe_http_error,
    error_text,
)

__all__ = ["ModelReloadConfig", "ModelReloadRestarter"]

_POLL_S = 0.2


def _distinct(value: list[str]) -> list[str]:
    if any(not m for m in value) or len(set(value)) != len(value):
        raise ValueError(f"model names must be distinct and non-empty, got {value}")
    return value


_ModelNames = Annotated[list[str], AfterValidator(_distinct)]


class ModelReloadConfig(StrictConfig):
    """``{kind: model_reload}``: reload the engine model(s) of the node."""

    kind: Literal["model_reload"] = "model_reload"
    models: _ModelNames = Field(default_factory=lambda: ["tensorrt_llm"], min_length=1)
    """Unloaded then loaded, in this order."""
    ready_models: _ModelNames = Field(default_factory=lambda: ["ensemble"])
    """Must answer ready afterwards too (the ensembles that compose ``models``)."""
    timeout_s: float = Field(120.0, gt=0)
    """The whole restart, loads and the wait for readiness included."""
    call_timeout_s: float = Field(5.0, gt=0)
    """Each liveness, unload and readiness call; a ``load`` may use the rest of the budget."""


class _Failed(Exception):
    """A step failed; its message is the restart's detail."""


class ModelReloadRestarter:
    """Unload + load through ``/v2/repository/models/{m}/...`` on the node's HTTP port."""

    name = "model_reload"

    def __init__(
        self, config: ModelReloadConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self.config = config
        self._transport = transport

    async def restart(self, node: NodeConfig) -> RestartResult:
        start = time.monotonic()
        deadline = start + self.config.timeout_s
        try:
            async with httpx.AsyncClient(
                base_url=node.http_url, transport=self._transport
            ) as client:
                # The outer bound holds even if a call ignored its own timeout.
                await asyncio.wait_for(
                    self._reload(client, deadline),
                    self.config.timeout_s + self.config.call_timeout_s,
                )
        except _Failed as exc:
            return self._result(False, str(exc))
        except asyncio.TimeoutError:
            return self._result(False, f"no reload within {self.config.timeout_s:g}s")
        waited = ", ".join(self._must_be_ready())
        took = time.monotonic() - start
        return self._result(
            True, f"reloaded {', '.join(self.config.models)} in {took:.1f}s; {waited} ready"
        )

    def _result(self, ok: bool, detail: str) -> RestartResult:
        return RestartResult(ok=ok, detail=detail, restarter=self.name)

    def _must_be_ready(self) -> list[str]:
        extra = [m for m in self.config.ready_models if m not in self.config.models]
        return [*self.config.models, *extra]

    def _timeout(self, deadline: float, *, whole_budget: bool = False) -> float:
        left = deadline - time.monotonic()
        if left <= 0:
            raise _Failed(f"no reload within {self.config.timeout_s:g}s")
        return left if whole_budget else min(left, self.config.call_timeout_s)

    async def _call(
        self,
        client: httpx.AsyncClient,
        method: str,
        path: str,
        deadline: float,
        *,
        whole_budget: bool = False,
    ) -> httpx.Response:
        timeout = self._timeout(deadline, whole_budget=whole_budget)
        try:
            if method == "POST":
                return await client.post(path, json={}, timeout=timeout)
            return await client.get(path, timeout=timeout)
        except httpx.HTTPError as exc:
            raise _Failed(describe_http_error(exc, f"{method} {path}")) from exc

    async def _reload(self, client: httpx.AsyncClient, deadline: float) -> None:
        live = await self._call(client, "GET", "/v2/health/live", deadline)
        if live.status_code != 200:
            raise _Failed(f"GET /v2/health/live answered {live.status_code}: {error_text(live)}")
        for model in self.config.models:
            base = f"/v2/repository/models/{quote(model, safe='')}"
            for action in ("unload", "load"):
                response = await self._call(
                    client, "POST", f"{base}/{action}", deadline, whole_budget=action == "load"
                )
                if response.status_code != 200:
                    raise _Failed(
                        f"{action} {model} answered {response.status_code}: {error_text(response)}"
                    )
        await self._wait_ready(client, deadline)

    async def _wait_ready(self, client: httpx.AsyncClient, deadline: float) -> None:
        pending = self._must_be_ready()
        last = ""
        while pending:
            model = pending[0]
            path = f"/v2/models/{quote(model, safe='')}/ready"
            try:
                response = await self._call(client, "GET", path, deadline)
            except _Failed as exc:
                last = str(exc)
            else:
                if response.status_code == 200:
                    pending.pop(0)
                    continue
                last = f"{model} answered {response.status_code}"
            if time.monotonic() + _POLL_S >= deadline:
                raise _Failed(
                    f"not ready within {self.config.timeout_s:g}s: {', '.join(pending)} ({last})"
                )
            await asyncio.sleep(_POLL_S)
