"""Error classification (429 vs 5xx vs timeout vs broken stream) and stream parsing."""

from __future__ import annotations

import json

import pytest
from llm_client import SseReader, StreamTally
from llm_recorder import BrokenStream, RateLimited, ServerError, failure_for

from mufleet.load.metrics import ErrorKind, RequestRecord, classify_grpc, classify_status


@pytest.mark.parametrize(
    ("status", "kind"),
    [
        (200, None),
        (201, None),
        (429, ErrorKind.RATE_LIMITED),
        (500, ErrorKind.SERVER_ERROR),
        (502, ErrorKind.SERVER_ERROR),
        (503, ErrorKind.SERVER_ERROR),
        (504, ErrorKind.SERVER_ERROR),
        (408, ErrorKind.TIMEOUT),
        (400, ErrorKind.CLIENT_ERROR),
        (401, ErrorKind.CLIENT_ERROR),
        (404, ErrorKind.CLIENT_ERROR),
    ],
)
def test_http_status_kinds(status: int, kind: ErrorKind | None) -> None:
    assert classify_status(status) is kind


def test_grpc_kinds_from_codes_and_the_routers_bracketed_status() -> None:
    assert classify_grpc("StatusCode.RESOURCE_EXHAUSTED") is ErrorKind.RATE_LIMITED
    assert classify_grpc("DEADLINE_EXCEEDED") is ErrorKind.TIMEOUT
    assert classify_grpc("StatusCode.UNAVAILABLE") is ErrorKind.SERVER_ERROR
    assert classify_grpc("StatusCode.UNAUTHENTICATED") is ErrorKind.CLIENT_ERROR
    assert classify_grpc(None, "[429] tenant over its MU budget") is ErrorKind.RATE_LIMITED
    assert classify_grpc(None, "[502] node node1 failed") is ErrorKind.SERVER_ERROR
    assert classify_grpc(None, "[400] bad input") is ErrorKind.CLIENT_ERROR
    assert classify_grpc(None, "something odd") is ErrorKind.SERVER_ERROR


def _sse(*payloads: object) -> bytes:
    return b"".join(
        b"data: " + (p if isinstance(p, bytes) else json.dumps(p).encode()) + b"\n\n"
        for p in payloads
    )


def _chunk(text: str) -> dict[str, object]:
    return {"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}]}


ROLE = {"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}
USAGE = {"choices": [], "usage": {"prompt_tokens": 42, "completion_tokens": 3}}


def _read(protocol: str, stream: bytes, pieces: int = 1) -> StreamTally:
    """Feed ``stream`` in ``pieces`` cuts, one time unit apart."""
    tally, reader = StreamTally(protocol, start=0.0), SseReader()
    size = -(-len(stream) // pieces)
    for i in range(pieces):
        for payload in reader.feed(stream[i * size : (i + 1) * size]):
            tally.on_data(payload, now=float(i + 1))
    return tally


def test_openai_stream_ttft_skips_the_role_chunk_and_usage_gives_the_count() -> None:
    stream = _sse(ROLE, _chunk("a"), _chunk("b"), _chunk("c"), USAGE, b"[DONE]")
    tally = StreamTally("openai", start=0.0)
    reader = SseReader()
    times = iter([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    for event in stream.split(b"\n\n")[:-1]:
        for payload in reader.feed(event + b"\n\n"):
            tally.on_data(payload, next(times))
    outcome = tally.outcome(now=7.0)
    assert outcome.error is None
    assert outcome.ttft_s == 2.0, "the role-only first chunk carries no token"
    assert outcome.output_tokens == 3 and outcome.input_tokens == 42
    assert outcome.e2e_s == 7.0


def test_an_openai_stream_without_done_is_broken() -> None:
    outcome = _read("openai", _sse(_chunk("a"), _chunk("b"))).outcome(now=3.0)
    assert outcome.error is ErrorKind.BROKEN_STREAM
    assert outcome.output_tokens == 2, "without usage, content chunks are counted"


def test_an_error_event_after_tokens_is_a_broken_stream() -> None:
    stream = _sse(_chunk("a"), {"error": {"message": "node failed", "type": "upstream"}})
    outcome = _read("openai", stream + _sse(b"[DONE]")).outcome(now=3.0)
    assert outcome.error is ErrorKind.BROKEN_STREAM and "node failed" in outcome.detail


def test_kserve_stream_counts_from_num_output_tokens_and_splits_anywhere() -> None:
    events = [
        {"text_output": "he", "num_output_tokens": 1},
        {"text_output": "", "num_output_tokens": 2},
        {"text_output": "llo", "num_output_tokens": 3},
    ]
    stream = _sse(*events).replace(b"\n\n", b"\r\n\r\n")
    tally = _read("kserve", stream, pieces=7)
    outcome = tally.outcome(now=10.0)
    assert outcome.error is None and outcome.output_tokens == 3
    assert outcome.ttft_s is not None and outcome.ttft_s <= 10.0
    assert "".join(tally.text) == "hello"


def test_a_cut_stream_keeps_what_it_measured() -> None:
    tally = _read("kserve", _sse({"text_output": "x", "num_output_tokens": 1}))
    outcome = tally.cut(5.0, ErrorKind.TIMEOUT, "read timeout", "node0")
    assert outcome.error is ErrorKind.TIMEOUT and outcome.ttft_s == 1.0
    assert outcome.node == "node0" and outcome.e2e_s == 5.0


def test_sse_reader_joins_multi_line_data_and_ignores_comments() -> None:
    reader = SseReader()
    assert reader.feed(b": keep-alive\n\ndata: a\ndata: b\n\nda") == ["a\nb"]
    assert reader.feed(b"ta: c\n\n") == ["c"]


def test_failures_are_named_by_kind_with_short_messages() -> None:
    def failed(kind: ErrorKind, status: int | None) -> RequestRecord:
        return RequestRecord(0.0, "AgentUser", "demo", "openai", 1.0, error=kind, status=status)

    limited = failure_for(failed(ErrorKind.RATE_LIMITED, 429))
    assert isinstance(limited, RateLimited) and str(limited) == "429"
    assert isinstance(failure_for(failed(ErrorKind.SERVER_ERROR, 502)), ServerError)
    broken = failure_for(failed(ErrorKind.BROKEN_STREAM, 200), "ended without [DONE]")
    assert isinstance(broken, BrokenStream) and str(broken) == "ended without [DONE]"
    ok = RequestRecord(0.0, "AgentUser", "demo", "openai", 1.0)
    assert failure_for(ok) is None
