"""The node's GPU health, as its ``mufleet gpu-agent`` judges it (``GET <gpu_url>/health``).

``drain`` (a fatal XID, uncorrectable ECC, a failed row remap) takes the node out without a
restart; ``degraded`` (thermal or power throttling) keeps it in at a lower capacity, the
agent's ``capacity_factor``; ``warn`` and ``healthy`` pass. An agent that does not answer
says nothing about the node (no signal): the other probes still watch it.
"""

from __future__ import annotations

import httpx

from router.fleet import NodeConfig
from router.health.config import GpuProbeConfig
from router.health.signals import Signal, Verdict


class GpuAgentProbe:
    name = "gpu"

    def __init__(self, config: GpuProbeConfig, client: httpx.AsyncClient) -> None:
        self.config = config
        self.client = client
        self.last_error: dict[str, str] = {}

    def interval_s(self, node: str) -> float:
        return self.config.interval_s

    async def probe(self, node: NodeConfig, now: float) -> Signal | None:
        url = node.gpu_url
        if not url:
            return None
        try:
            response = await self.client.get(
                url.rstrip("/") + "/health", timeout=self.config.timeout_s
            )
            body = response.json()
            status = str(body["status"])
            factor = float(body.get("capacity_factor", 1.0))
            reasons = [str(r) for r in body.get("reasons", [])]
        except (httpx.HTTPError, ValueError, KeyError, TypeError) as exc:
            self.last_error[node.name] = f"{type(exc).__name__}: {exc}"
            return None
        self.last_error.pop(node.name, None)
        reason = "; ".join(reasons) or status
        if status == "drain":
            return Signal(node.name, self.name, Verdict.DRAIN, reason, now, capacity_factor=factor)
        return Signal(node.name, self.name, Verdict.PASS, reason, now, capacity_factor=factor)
