"""Errors the router answers with, and whose fault a node's error is.

Triton reports a composing model's failures through the ensemble as 400 whatever caused
them, and answers malformed JSON on ``/generate`` with 500; gRPC streams carry only a
message. So the router classifies a node's error by its cause, read from the message:
the client's fault becomes a 4xx and leaves the node's health alone; anything else is
the node's fault, a 5xx and a health signal, and may be retried on another node.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal


class RouterError(Exception):
    """An error with an HTTP status, an OpenAI-style type and a gRPC status name."""

    status = 500
    kind = "internal_error"
    grpc_code = "INTERNAL"

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class BadRequest(RouterError):
    status, kind, grpc_code = 400, "invalid_request_error", "INVALID_ARGUMENT"


class Unauthorized(RouterError):
    status, kind, grpc_code = 401, "authentication_error", "UNAUTHENTICATED"


class Forbidden(RouterError):
    status, kind, grpc_code = 403, "permission_error", "PERMISSION_DENIED"


class NotFound(RouterError):
    status, kind, grpc_code = 404, "not_found_error", "NOT_FOUND"


class PayloadTooLarge(RouterError):
    status, kind, grpc_code = 413, "invalid_request_error", "RESOURCE_EXHAUSTED"


class Unprocessable(RouterError):
    status, kind, grpc_code = 422, "invalid_request_error", "INVALID_ARGUMENT"


class RateLimited(RouterError):
    status, kind, grpc_code = 429, "rate_limit_error", "RESOURCE_EXHAUSTED"

    def __init__(self, message: str, retry_after_s: float) -> None:
        seconds = max(1, int(retry_after_s + 0.999))
        super().__init__(message, headers={"Retry-After": str(seconds)})
        self.retry_after_s = retry_after_s


class NodeFailed(RouterError):
    """The node failed the request (its fault): 502, and a signal for its health."""

    status, kind, grpc_code = 502, "upstream_error", "UNAVAILABLE"


class NoCapacity(RouterError):
    status, kind, grpc_code = 503, "overloaded_error", "UNAVAILABLE"


class Timeout(RouterError):
    status, kind, grpc_code = 504, "timeout_error", "DEADLINE_EXCEEDED"


_CLIENT_FAULTS = re.compile(
    "|".join(
        (
            r"is not supported by the \w+ engine",
            r"input not supported",
            r"must (not )?be",
            r"must lie in",
            r"must hold",
            r"must fit",
            r"exceed(s)? the context window",
            r"does not fit",
            r"missing required input",
            r"unexpected (shape|datatype|inference input)",
            r"expected (one|a leading)",
            r"needs a decoupled model",
            r"stream(ing)?=true",
            r"is not valid UTF-8|valid UTF-8",
            r"embedding_bias_words has",
            r"has \d+ entries; the vocabulary",
            r"unable to find|unknown (model|input)",
            r"are required",
        )
    ),
    re.IGNORECASE,
)
_NODE_FAULTS = re.compile(
    r"engine iteration failed|engine is dead|engine stopped|stub process|not healthy|"
    r"injected fault|could not build the response",
    re.IGNORECASE,
)
"""Our engines' own failure reports: the node's fault whatever text they quote."""
_TIMEOUTS = re.compile(r"timeout|timed out|deadline exceeded", re.IGNORECASE)


@dataclass(frozen=True)
class NodeErrorClass:
    """Whose fault a node's error message describes."""

    fault: Literal["client", "node", "timeout"]

    def as_error(self, node: str, message: str) -> RouterError:
        if self.fault == "client":
            return BadRequest(message)
        if self.fault == "timeout":
            return Timeout(f"node {node} timed out: {message}")
        return NodeFailed(f"node {node} failed the request: {message}")


def classify(message: str) -> NodeErrorClass:
    """The fault behind a node's error ``message`` (unknown causes count as the node's)."""
    if _NODE_FAULTS.search(message):
        return NodeErrorClass("node")
    if _CLIENT_FAULTS.search(message):
        return NodeErrorClass("client")
    if _TIMEOUTS.search(message):
        return NodeErrorClass("timeout")
    return NodeErrorClass("node")
