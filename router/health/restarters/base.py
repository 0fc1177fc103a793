"""What every restarter is: one way of bringing a cordoned node back, and its outcome."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import httpx
from pydantic import BaseModel, ConfigDict

from router.fleet.node_config import NodeConfig

__all__ = [
    "RestartResult",
    "Restarter",
    "StrictConfig",
    "describe_http_error",
    "error_text",
]


@dataclass(frozen=True)
class RestartResult:
    """The outcome of one restart attempt.

    ``ok`` means the restart was carried out, not that the node is healthy again: the
    health machine still waits for readiness and probation before it routes to the node.
    """

    ok: bool
    detail: str
    restarter: str


@runtime_checkable
class Restarter(Protocol):
    """Brings one node back.

    ``restart`` never raises for a node-side failure (refused, timed out, unreachable):
    it returns ``ok=False`` with the reason, within the restarter's own timeout, so that
    the health machine can try the next restarter of its chain.
    """

    name: str

    async def restart(self, node: NodeConfig) -> RestartResult: ...


class StrictConfig(BaseModel):
    """Base of the restarter configurations: unknown keys are errors, values are frozen."""

    model_config = ConfigDict(extra="forbid", frozen=True)


def describe_http_error(exc: httpx.HTTPError, what: str) -> str:
    """A one-line reason for a failed HTTP call, naming a timeout as such (a frozen or
    overloaded server) apart from a refused connection (nothing listening)."""
    if isinstance(exc, httpx.TimeoutException):
        return f"{what}: no answer in time ({type(exc).__name__}); the server may be frozen"
    if isinstance(exc, httpx.ConnectError):
        return f"{what}: cannot connect ({exc or 'refused'}); the server may be down"
    return f"{what}: {type(exc).__name__}: {exc}"


def error_text(response: httpx.Response, limit: int = 300) -> str:
    """The ``error`` of a JSON error body (Triton's and ours), else the start of the body."""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict) and isinstance(body.get("error"), str):
        return str(body["error"])[:limit]
    return response.text[:limit] or response.reason_phrase
