"""Unit tests for router.errors: whose fault a node's error message describes, and the
statuses and headers the router's errors carry."""

from __future__ import annotations

import pytest

from router.errors import (
    BadRequest,
    NodeErrorClass,
    NodeFailed,
    RateLimited,
    RouterError,
    Timeout,
    classify,
)

# Messages our engines (python_backends) and Triton really send for a client's mistake.
CLIENT_MESSAGES = [
    "in ensemble 'ensemble', input 'beam_width' is not supported by the cpu engine: it "
    "supports beam_width 1 only",
    "prompt of 3000 tokens plus max_tokens=8 exceeds the context window of 2048 tokens",
    "max_tokens must be at least 1, got 0",
    "text_input must not be empty",
    "unexpected shape for input 'num_return_sequences' for model 'tensorrt_llm'",
    "stream=true needs a decoupled model (the ensemble over a decoupled tensorrt_llm)",
    "in ensemble 'ensemble', unexpected inference input 'foo' for model 'preprocessing'",
    "Request for unknown model: 'nope' is not found",
    "text_input is not valid UTF-8",
    "in ensemble 'ensemble', missing required input 'max_tokens'",
]

# Messages of a node's own failure (an engine that broke, a stub that died, no connection).
NODE_MESSAGES = [
    "Stub process 'tensorrt_llm_0_0' is not healthy.",
    "Failed to process the request(s) for model instance 'preprocessing_0_0', message: "
    "Stub process 'preprocessing_0_0' is not healthy.",
    "engine is dead: 3 iterations in a row failed",
    "engine is dead: 3 iterations in a row failed; last: engine iteration failed: "
    "RuntimeError: injected fault: engine iteration raised",
    "engine iteration failed: RuntimeError: injected fault: engine iteration raised",
    "injected fault: engine error",
    "UNAVAILABLE: failed to connect to all addresses",
    "UNAVAILABLE: failed to connect to all addresses; last error: UNKNOWN: "
    "ipv4:127.0.0.1:8001: Failed to connect to remote host: Connection refused",
    "UNAVAILABLE: Connection reset by peer",
    "engine iteration failed: RuntimeError: CUDA error: out of memory",
    "an error nobody has seen before",
    "",
]

TIMEOUT_MESSAGES = [
    "DEADLINE_EXCEEDED: Deadline Exceeded",
    "Request timeout expired",
    "the request timed out in the queue",
]


@pytest.mark.parametrize("message", CLIENT_MESSAGES)
def test_client_faults_classify_as_client(message: str) -> None:
    assert classify(message).fault == "client"


@pytest.mark.parametrize("message", NODE_MESSAGES)
def test_node_faults_classify_as_node(message: str) -> None:
    assert classify(message).fault == "node"


@pytest.mark.parametrize("message", TIMEOUT_MESSAGES)
def test_timeouts_classify_as_timeout(message: str) -> None:
    assert classify(message).fault == "timeout"


def test_engine_iteration_failure_with_cuda_invalid_argument_is_the_nodes_fault() -> None:
    message = "engine iteration failed: RuntimeError: CUDA error: invalid argument"
    assert classify(message).fault == "node"


def test_classification_ignores_case() -> None:
    assert classify("MAX_TOKENS MUST BE AT LEAST 1, GOT 0").fault == "client"
    assert classify("deadline exceeded").fault == "timeout"


def test_a_client_fault_wins_over_a_timeout_word() -> None:
    # A malformed 'timeout' parameter is the client's fault, not a timeout.
    assert classify("parameter timeout must be a non-negative integer").fault == "client"


@pytest.mark.parametrize(
    ("fault", "cls", "status"),
    [("client", BadRequest, 400), ("node", NodeFailed, 502), ("timeout", Timeout, 504)],
)
def test_as_error_maps_each_fault_to_its_status(
    fault: str, cls: type[RouterError], status: int
) -> None:
    error = NodeErrorClass(fault).as_error("node7", "boom")  # type: ignore[arg-type]
    assert isinstance(error, cls)
    assert error.status == status
    assert "boom" in error.message


def test_node_and_timeout_errors_name_the_node_client_errors_do_not() -> None:
    assert "node7" in NodeErrorClass("node").as_error("node7", "x").message
    assert "node7" in NodeErrorClass("timeout").as_error("node7", "x").message
    # The client's mistake is reported as the node said it, without fleet internals.
    assert NodeErrorClass("client").as_error("node7", "bad input").message == "bad input"


def test_error_statuses_and_grpc_codes() -> None:
    assert (BadRequest.status, BadRequest.grpc_code) == (400, "INVALID_ARGUMENT")
    assert (NodeFailed.status, NodeFailed.grpc_code) == (502, "UNAVAILABLE")
    assert (Timeout.status, Timeout.grpc_code) == (504, "DEADLINE_EXCEEDED")
    assert (RateLimited.status, RateLimited.grpc_code) == (429, "RESOURCE_EXHAUSTED")


@pytest.mark.parametrize(
    ("retry_after_s", "header"),
    [(0.0, "1"), (0.1, "1"), (0.999, "1"), (1.0, "1"), (1.01, "2"), (1.5, "2"), (59.2, "60")],
)
def test_rate_limited_retry_after_is_rounded_up_and_at_least_one(
    retry_after_s: float, header: str
) -> None:
    error = RateLimited("slow down", retry_after_s)
    assert error.headers == {"Retry-After": header}
    assert error.retry_after_s == retry_after_s
    assert error.status == 429


def test_router_error_headers_default_to_empty_and_are_not_shared() -> None:
    a, b = BadRequest("a"), BadRequest("b")
    a.headers["x"] = "1"
    assert b.headers == {}
    assert str(a) == "a"
