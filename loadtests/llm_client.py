"""Streaming LLM calls over HTTP, timed per token: OpenAI SSE and KServe ``generate_stream``.

The Locust clients time a streamed response to its headers, not to its last token, so the
users here run their own ``requests`` session (gevent-patched like everything under
Locust) and report through :mod:`llm_recorder`. Parsing is split from I/O:
:class:`SseReader` cuts a byte stream into event payloads and :class:`StreamTally` turns
payloads into TTFT, token counts and the stream's verdict, both without a socket.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from typing import Any

import requests

from mufleet.load.metrics import ErrorKind, classify_status

CONNECT_TIMEOUT_S = 5.0


class SseReader:
    """Server-sent events: the ``data:`` payload of each event, as bytes arrive."""

    def __init__(self) -> None:
        self._buffer = b""

    def feed(self, chunk: bytes) -> list[str]:
        self._buffer += chunk.replace(b"\r\n", b"\n")
        payloads: list[str] = []
        while True:
            end = self._buffer.find(b"\n\n")
            if end < 0:
                return payloads
            block, self._buffer = self._buffer[:end], self._buffer[end + 2 :]
            data = [
                line[5:].removeprefix(b" ")
                for line in block.split(b"\n")
                if line.startswith(b"data:")
            ]
            if data:
                payloads.append(b"\n".join(data).decode("utf-8", "replace"))


@dataclass(frozen=True)
class Outcome:
    """One call as the client saw it (times in seconds from sending it)."""

    e2e_s: float
    ttft_s: float | None = None
    output_tokens: int = 0
    input_tokens: int | None = None
    error: ErrorKind | None = None
    status: int | None = None
    node: str | None = None
    detail: str = ""


class StreamTally:
    """Reads one stream's payloads. ``protocol`` is ``openai`` (chunks, ``usage``, then
    ``[DONE]``) or ``kserve`` (one JSON object per response; the stream just ends)."""

    def __init__(self, protocol: str, start: float) -> None:
        if protocol not in ("openai", "kserve"):
            raise ValueError(f"unknown stream protocol {protocol!r}")
        self.protocol = protocol
        self.start = start
        self.first_token_at: float | None = None
        self.text_events = 0
        self.reported_tokens: int | None = None
        self.prompt_tokens: int | None = None
        self.done = False
        self.error: str | None = None
        self.text: list[str] = []

    def on_data(self, payload: str, now: float) -> None:
        if self.protocol == "openai" and payload.strip() == "[DONE]":
            self.done = True
            return
        try:
            item = json.loads(payload)
        except json.JSONDecodeError:
            self.error = self.error or "unparsable event"
            return
        if not isinstance(item, dict):
            return
        if "error" in item:
            error = item["error"]
            self.error = str(error.get("message", error) if isinstance(error, dict) else error)
            return
        if self.protocol == "openai":
            self._openai(item, now)
        else:
            self._kserve(item, now)

    def _token(self, text: str, now: float) -> None:
        if not text:
            return
        self.text.append(text)
        self.text_events += 1
        if self.first_token_at is None:
            self.first_token_at = now

    def _openai(self, item: dict[str, Any], now: float) -> None:
        usage = item.get("usage")
        if isinstance(usage, dict):
            self.reported_tokens = int(usage.get("completion_tokens") or 0)
            self.prompt_tokens = usage.get("prompt_tokens")
        for choice in item.get("choices") or []:
            delta = choice.get("delta") or {}
            self._token(delta.get("content") or choice.get("text") or "", now)

    def _kserve(self, item: dict[str, Any], now: float) -> None:
        text = item.get("text_output")
        if isinstance(text, list):
            text = "".join(str(t) for t in text)
        self._token(str(text or ""), now)
        count = item.get("num_output_tokens")
        if isinstance(count, list):
            count = sum(int(c) for c in count)
        if isinstance(count, int):
            self.reported_tokens = max(self.reported_tokens or 0, count)

    def outcome(self, now: float, status: int = 200, node: str | None = None) -> Outcome:
        """The verdict once the stream has ended cleanly at ``now``."""
        error, detail = None, ""
        if self.error is not None:
            error, detail = ErrorKind.BROKEN_STREAM, f"error event: {self.error[:80]}"
        elif self.protocol == "openai" and not self.done:
            error, detail = ErrorKind.BROKEN_STREAM, "ended without [DONE]"
        return Outcome(
            e2e_s=now - self.start,
            ttft_s=None if self.first_token_at is None else self.first_token_at - self.start,
            output_tokens=self.reported_tokens
            if self.reported_tokens is not None
            else self.text_events,
            input_tokens=self.prompt_tokens,
            error=error,
            status=status,
            node=node,
            detail=detail,
        )

    def cut(self, now: float, kind: ErrorKind, detail: str, node: str | None) -> Outcome:
        """The verdict for a stream whose transport failed at ``now``."""
        return replace(self.outcome(now, 200, node), error=kind, detail=detail)


def _is_timeout(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, requests.exceptions.Timeout | TimeoutError) or "timed out" in str(seen):
            return True
        seen = seen.__cause__ or seen.__context__
    return False


class LlmHttpClient:
    """One user's HTTP connection pool to one base URL."""

    def __init__(self, base_url: str, timeout_s: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout_s = timeout_s
        self.session = requests.Session()

    def close(self) -> None:
        self.session.close()

    def stream(
        self, path: str, body: dict[str, Any], headers: dict[str, str], protocol: str
    ) -> tuple[Outcome, str]:
        """POST ``body`` and read the streamed answer; returns the outcome and the text."""
        start = time.perf_counter()
        try:
            response = self.session.post(
                self.base_url + path,
                json=body,
                headers=headers,
                stream=True,
                timeout=(CONNECT_TIMEOUT_S, self.timeout_s),
            )
        except requests.exceptions.RequestException as exc:
            kind = ErrorKind.TIMEOUT if _is_timeout(exc) else ErrorKind.CONNECTION
            return Outcome(time.perf_counter() - start, error=kind, detail=type(exc).__name__), ""
        node = response.headers.get("x-mufleet-node")
        tally = StreamTally(protocol, start)
        try:
            if response.status_code != 200:
                response.content  # noqa: B018 - drain the error body, keep the connection
                kind = classify_status(response.status_code) or ErrorKind.CLIENT_ERROR
                outcome = Outcome(
                    time.perf_counter() - start,
                    error=kind,
                    status=response.status_code,
                    node=node,
                    detail=str(response.status_code),
                )
                return outcome, ""
            reader = SseReader()
            for chunk in response.iter_content(chunk_size=None):
                now = time.perf_counter()
                for payload in reader.feed(chunk):
                    tally.on_data(payload, now)
                if now - start > self.timeout_s:
                    return tally.cut(now, ErrorKind.TIMEOUT, "deadline", node), ""
            return tally.outcome(time.perf_counter(), 200, node), "".join(tally.text)
        except requests.exceptions.RequestException as exc:
            now = time.perf_counter()
            if _is_timeout(exc):
                return tally.cut(now, ErrorKind.TIMEOUT, "read timeout", node), ""
            return tally.cut(now, ErrorKind.BROKEN_STREAM, type(exc).__name__, node), ""
        finally:
            response.close()

    def json_call(
        self, method: str, path: str, body: dict[str, Any] | None, headers: dict[str, str]
    ) -> tuple[int | None, Any, float]:
        """A small JSON request (sessions API): status (``None``: no answer), body, seconds."""
        start = time.perf_counter()
        try:
            response = self.session.request(
                method,
                self.base_url + path,
                json=body,
                headers=headers,
                timeout=(CONNECT_TIMEOUT_S, self.timeout_s),
            )
        except requests.exceptions.RequestException:
            return None, None, time.perf_counter() - start
        try:
            payload = response.json()
        except ValueError:
            payload = None
        return response.status_code, payload, time.perf_counter() - start
