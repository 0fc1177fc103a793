"""Triton liveness and readiness: ``/v2/health/ready`` and the engine model's ready endpoint.

A refused connection means the process is gone: that fails the node at once. A probe that
times out (a frozen process still accepts TCP connections) or answers not-ready counts
toward ``fail_after``; the first one makes the node suspect. A ready answer passes. This
alone never catches a model that hangs while Triton reports it ready — the canary does.
"""

from __future__ import annotations

import httpx

from router.fleet import NodeConfig
from router.health.config import ReadinessConfig
from router.health.signals import Signal, Verdict


class ReadinessProbe:
    name = "readiness"

    def __init__(self, config: ReadinessConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.failures: dict[str, int] = {}

    def interval_s(self, node: str) -> float:
        return self.config.interval_s

    async def probe(self, node: NodeConfig, now: float) -> Signal | None:
        problem = await self._check(node)
        if problem is None:
            self.failures[node.name] = 0
            return Signal(node.name, self.name, Verdict.PASS, "ready", now)
        fatal, reason = problem
        count = self.failures.get(node.name, 0) + 1
        self.failures[node.name] = count
        if fatal or count >= self.config.fail_after:
            return Signal(node.name, self.name, Verdict.FAIL, f"{reason} ({count}×)", now)
        return Signal(node.name, self.name, Verdict.SUSPECT, reason, now)

    async def _check(self, node: NodeConfig) -> tuple[bool, str] | None:
        """``None`` when ready, else (the process is gone, why)."""
        timeout = self.config.timeout_s
        for path in ("/v2/health/ready", f"/v2/models/{node.engine_model}/ready"):
            try:
                response = await self.client.get(node.http_url + path, timeout=timeout)
            except httpx.ConnectError as exc:
                return True, f"connection refused ({exc.__class__.__name__})"
            except httpx.TimeoutException:
                return False, f"{path} unanswered within {timeout:g} s"
            except httpx.HTTPError as exc:
                return False, f"{path}: {type(exc).__name__}"
            if response.status_code != 200:
                return False, f"{path} answered {response.status_code}"
        return None
