"""HTTP users: agents in multi-turn sessions, summaries, long reasoning.

Every HTTP user calls the front door ``--llm-target`` names: the router's OpenAI API
(``openai``), the router's KServe v2 ``generate_stream`` (``kserve``), or Triton nodes'
``generate_stream`` directly (``direct``, no router: no keys, no sessions), so one load
compares the router against the nodes it fronts. All stream, so TTFT is measured.
"""

from __future__ import annotations

import itertools
import json
import random
import time
from typing import Any

from llm_client import LlmHttpClient, Outcome
from llm_options import LlmSettings, settings
from llm_recorder import RECORDER, failure
from locust import User, between, task

from mufleet.load.metrics import ErrorKind, RequestRecord, classify_status
from mufleet.trace_prompts import WordBank

WORDS = WordBank.for_tokenizer(None)
_user_numbers = itertools.count()

SYSTEM_PROMPT = (
    "You are an autonomous operations agent for a fleet of inference servers. Work in short "
    "steps: read what the last tool returned, then call one tool. Tools: search(query) finds "
    "documents; read(path) returns a file; run(command) runs a shell command; done(answer) "
    "ends the task.\n" + WORDS.text("system", 120)
)


def render_plain(messages: list[dict[str, Any]]) -> str:
    """Chat messages as plain text, for KServe's ``text_input`` (append-only, so the history
    of a turn is a prefix of the next turn's text)."""
    lines = []
    for message in messages:
        content = message.get("content") or ""
        for call in message.get("tool_calls") or []:
            content += " " + json.dumps(call["function"])
        lines.append(f"{message['role']}: {content}")
    return "\n".join(lines) + "\nassistant:"


class LlmUser(User):
    """What every HTTP user shares: its client, tenant, RNG and the call itself."""

    abstract = True

    def on_start(self) -> None:
        self.llm_settings: LlmSettings = settings(self.environment)
        self.number = next(_user_numbers)
        self.rng = random.Random(self.llm_settings.seed * 1_000_003 + self.number)
        self.tenant = self.llm_settings.tenant_for(type(self).__name__)
        self.http = LlmHttpClient(self._base_url(), self.llm_settings.request_timeout_s)

    def on_stop(self) -> None:
        self.http.close()

    def _base_url(self) -> str:
        nodes = self.llm_settings.node_urls
        if self.llm_settings.target == "direct" and nodes:
            return nodes[self.number % len(nodes)]
        if not self.host:
            raise ValueError(
                "no host: pass --host (the router, or a node with --llm-target direct)"
            )
        return str(self.host)

    def headers(self, session_id: str | None = None) -> dict[str, str]:
        headers = {}
        key = self.llm_settings.key_for(self.tenant)
        if key:
            headers["Authorization"] = f"Bearer {key}"
        if session_id and self.llm_settings.routed:
            headers["X-Session-ID"] = session_id
        return headers

    def llm(
        self,
        max_tokens: int,
        *,
        messages: list[dict[str, Any]] | None = None,
        prompt: str | None = None,
        session_id: str | None = None,
        lag_s: float = 0.0,
    ) -> tuple[Outcome, str]:
        """One streamed generation through the configured front door, recorded."""
        s = self.llm_settings
        if s.target == "openai":
            body: dict[str, Any] = {
                "model": s.model,
                "max_tokens": max_tokens,
                "stream": True,
                "stream_options": {"include_usage": True},
            }
            if messages is not None:
                path, body["messages"] = "/v1/chat/completions", messages
            else:
                path, body["prompt"] = "/v1/completions", prompt
            protocol = "openai"
        else:
            text = prompt if prompt is not None else render_plain(messages or [])
            path = f"/v2/models/{s.triton_model}/generate_stream"
            body = {
                "text_input": text,
                "max_tokens": max_tokens,
                "stream": True,
                "return_num_output_tokens": True,
            }
            protocol = "kserve"
        started = time.time()
        outcome, text_out = self.http.stream(path, body, self.headers(session_id), protocol)
        record = RequestRecord(
            start_s=started,
            user_class=type(self).__name__,
            tenant=self.tenant,
            endpoint=s.target,
            e2e_s=outcome.e2e_s,
            ttft_s=outcome.ttft_s,
            output_tokens=outcome.output_tokens,
            input_tokens=outcome.input_tokens,
            error=outcome.error,
            status=outcome.status,
            node=outcome.node or (None if s.routed else self.http.base_url),
            lag_s=lag_s,
        )
        RECORDER.add(self.environment, record, outcome.detail)
        return outcome, text_out


class AgentUser(LlmUser):
    """An agent loop: a session opened with an MU budget through the router, turns that
    re-send the whole history plus the last tool's result, short outputs, think time
    between turns, the session id on every turn. A task ends after a few turns, when the
    context nears ``--llm-max-context``, or when a turn fails; then a new one begins."""

    weight = 3
    wait_time = between(0.5, 2.0)
    turns = (3, 8)
    output_tokens = (16, 48)
    tool_words = (30, 120)

    def on_start(self) -> None:
        super().on_start()
        self.session_id: str | None = None
        self.messages: list[dict[str, Any]] = []
        self.turns_left = 0
        self.turn = 0

    def on_stop(self) -> None:
        self._close_session()
        super().on_stop()

    def _session_event(self, action: str, status: int | None, seconds: float) -> None:
        kind = ErrorKind.CONNECTION if status is None else classify_status(status)
        self.environment.events.request.fire(
            request_type="session",
            name=f"{action} [{self.tenant}]",
            response_time=seconds * 1e3,
            response_length=0,
            exception=failure(kind, str(status or "")),
            context={"tenant": self.tenant},
        )

    def _open_session(self) -> None:
        if not self.llm_settings.routed:
            return
        body = {
            "budget_mu": self.llm_settings.session_budget_mu,
            "ttl_s": self.llm_settings.session_ttl_s,
        }
        status, reply, seconds = self.http.json_call("POST", "/v1/sessions", body, self.headers())
        self._session_event("session open", status, seconds)
        if status == 201 and isinstance(reply, dict):
            self.session_id = str(reply["id"])

    def _close_session(self) -> None:
        if self.session_id is None:
            return
        path = f"/v1/sessions/{self.session_id}"
        status, _, seconds = self.http.json_call("DELETE", path, None, self.headers())
        self.session_id = None
        if status != 404:  # an expired session is already gone
            self._session_event("session close", status, seconds)

    def _begin(self) -> None:
        self._close_session()
        self._open_session()
        task_text = WORDS.text(self.rng.getrandbits(32), self.rng.randint(20, 60))
        self.messages = [
            {"role": "system", "content": SYSTEM_PROMPT},
            {"role": "user", "content": "Task:" + task_text},
        ]
        self.turns_left = self.rng.randint(*self.turns)
        self.turn = 0

    @task
    def step(self) -> None:
        if self.turns_left <= 0:
            self._begin()
        outcome, text = self.llm(
            self.rng.randint(*self.output_tokens),
            messages=self.messages,
            session_id=self.session_id,
        )
        if outcome.error is not None:
            self.turns_left = 0
            return
        self.turn += 1
        self.turns_left -= 1
        call_id = f"call_{self.turn}"
        arguments = json.dumps({"query": WORDS.text(self.rng.getrandbits(32), 4).strip()})
        result = WORDS.text(self.rng.getrandbits(32), self.rng.randint(*self.tool_words))
        self.messages += [
            {
                "role": "assistant",
                "content": text,
                "tool_calls": [
                    {
                        "id": call_id,
                        "type": "function",
                        "function": {"name": "search", "arguments": arguments},
                    }
                ],
            },
            {"role": "tool", "tool_call_id": call_id, "content": result},
        ]
        grown = (outcome.input_tokens or 0) + outcome.output_tokens + 2 * self.tool_words[1]
        if grown > self.llm_settings.max_context_tokens:
            self.turns_left = 0


class SummaryUser(LlmUser):
    """Short in, short out: summarise a paragraph."""

    weight = 4
    wait_time = between(0.2, 1.0)
    input_words = (60, 200)
    output_tokens = (16, 48)

    @task
    def summarise(self) -> None:
        document = WORDS.text(self.rng.getrandbits(32), self.rng.randint(*self.input_words))
        messages = [
            {"role": "system", "content": "Summarise the user's text in two sentences."},
            {"role": "user", "content": document.strip()},
        ]
        self.llm(self.rng.randint(*self.output_tokens), messages=messages)


class ReasoningUser(LlmUser):
    """Long context, long output: reason step by step over a long document."""

    weight = 1
    wait_time = between(1.0, 3.0)
    input_words = (600, 1000)
    output_tokens = (192, 384)

    @task
    def reason(self) -> None:
        document = WORDS.text(self.rng.getrandbits(32), self.rng.randint(*self.input_words))
        messages = [
            {"role": "system", "content": "Think step by step, then answer."},
            {"role": "user", "content": "Question about this report:" + document},
        ]
        self.llm(self.rng.randint(*self.output_tokens), messages=messages)
