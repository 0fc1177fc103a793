"""OpenAI-compatible front door: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

A chat is rendered with the model's own chat template (tools included), priced and routed
by the pipeline, and sent to a node's ensemble; the answer comes back in OpenAI's shape,
as one JSON object or as server-sent events, with ``usage`` always. Tool calls the model
writes are parsed by the template family's parser.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any, Literal

import numpy as np
import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response

from router.api.common import ClosingStream, JSONResponse, openai_error, parse_json, read_body
from router.errors import BadRequest, NotFound, RouterError, Unprocessable
from router.models import ServedModel
from router.pipeline import Job, Outcome
from router.tool_calls import PARSERS
from router.wire import build_request, read_output

TEXT_OUTPUTS = ("text_output", "sequence_length", "sequence_index", "num_output_tokens")


class _Loose(BaseModel):
    """OpenAI clients send fields a server may not know; unknown fields are ignored."""

    model_config = ConfigDict(extra="ignore")


class StreamOptions(_Loose):
    include_usage: bool = False


class ChatMessage(_Loose):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[dict[str, Any]] | None = None
    tool_call_id: str | None = None

    def for_template(self) -> dict[str, Any]:
        """The message as chat templates expect it (text parts joined)."""
        content = self.content
        if isinstance(content, list):
            texts = [p.get("text", "") for p in content if p.get("type") in ("text", None)]
            if len(texts) != len(content):
                raise BadRequest("only text content parts are supported")
            content = "".join(texts)
        out: dict[str, Any] = {"role": "system" if self.role == "developer" else self.role}
        out["content"] = content or ""
        if self.tool_calls:
            out["tool_calls"] = [_template_call(c) for c in self.tool_calls]
        if self.tool_call_id:
            out["tool_call_id"] = self.tool_call_id
        if self.name:
            out["name"] = self.name
        return out


def _template_call(call: dict[str, Any]) -> dict[str, Any]:
    function = dict(call.get("function") or {})
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        with contextlib.suppress(orjson.JSONDecodeError):
            function["arguments"] = orjson.loads(arguments)
    return {**call, "function": function}


class _Sampling(_Loose):
    model: str = Field(min_length=1)
    max_tokens: int | None = None
    temperature: float | None = Field(None, ge=0.0, le=2.0)
    top_p: float | None = Field(None, gt=0.0, le=1.0)
    n: int = Field(1, ge=1, le=16)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: str | list[str] | None = None
    seed: int | None = Field(None, ge=0, lt=2**64)
    presence_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    frequency_penalty: float | None = Field(None, ge=-2.0, le=2.0)
    user: str | None = None
    logprobs: bool | int | None = None


class ChatRequest(_Sampling):
    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = None
    tools: list[dict[str, Any]] | None = None
    tool_choice: str | dict[str, Any] | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]
    echo: bool = False


def _validate(model: type[BaseModel], body: Any) -> Any:
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise Unprocessable(f"{where}: {first['msg']}") from None


def _stop_words(stop: str | list[str] | None) -> list[str]:
    if stop is None:
        return []
    words = [stop] if isinstance(stop, str) else list(stop)
    if len(words) > 16:
        raise BadRequest("stop holds at most 16 strings")
    return [w for w in words if w]


def ensemble_inputs(req: _Sampling, prompt: str, max_tokens: int) -> dict[str, np.ndarray]:
    """The ensemble's tensors for an OpenAI request (OpenAI's sampling semantics)."""
    inputs: dict[str, np.ndarray] = {
        "text_input": np.array([[prompt.encode("utf-8")]], dtype=object),
        "max_tokens": np.array([[max_tokens]], dtype=np.int32),
        "stream": np.array([[req.stream]], dtype=bool),
        "exclude_input_in_output": np.array([[True]], dtype=bool),
        "return_num_output_tokens": np.array([[True]], dtype=bool),  # the router counts them
    }
    temperature = 1.0 if req.temperature is None else req.temperature
    if temperature == 0.0:
        inputs["top_k"] = np.array([[1]], dtype=np.int32)  # greedy
    else:
        inputs["temperature"] = np.array([[temperature]], dtype=np.float32)
        inputs["top_p"] = np.array([[1.0 if req.top_p is None else req.top_p]], dtype=np.float32)
    if req.seed is not None:
        inputs["seed"] = np.array([[req.seed]], dtype=np.uint64)
    if req.presence_penalty:
        inputs["presence_penalty"] = np.array([[req.presence_penalty]], dtype=np.float32)
    if req.frequency_penalty:
        inputs["frequency_penalty"] = np.array([[req.frequency_penalty]], dtype=np.float32)
    if req.n > 1:
        inputs["num_return_sequences"] = np.array([[req.n]], dtype=np.int32)
    stops = _stop_words(req.stop)
    if stops:
        inputs["stop_words"] = np.array([[w.encode("utf-8") for w in stops]], dtype=object)
    return inputs


class OpenAIFront:
    """The OpenAI endpoints over a :class:`router.service.RouterService`."""

    def __init__(self, service: Any) -> None:
        self.service = service

    # -- endpoints ----------------------------------------------------------------------------
    async def chat(self, request: Request) -> Response:
        try:
            tenant = self.service.keys.tenant(request.headers.get("authorization"))
            body = parse_json(await read_body(request, self.service.config.limits.max_body_bytes))
            req: ChatRequest = _validate(ChatRequest, body)
            model = self._model(req.model)
            if req.logprobs:
                raise BadRequest("logprobs is not supported")
            if req.tool_choice not in (None, "auto", "none") and req.tools:
                raise BadRequest("tool_choice supports 'auto' and 'none'")
            tools = req.tools if req.tool_choice != "none" else None
            prompt = model.render_chat([m.for_template() for m in req.messages], tools)
            max_tokens = req.max_completion_tokens or req.max_tokens
            job = self._job(request, tenant, model, req, prompt, max_tokens)
            parse = PARSERS[model.config.tool_parser] if tools else PARSERS["none"]
            if req.stream:
                return self._sse(job, req, "chat.completion.chunk", parse)
            return await self._unary(job, req, "chat.completion", parse)
        except RouterError as error:
            return openai_error(error)

    async def completions(self, request: Request) -> Response:
        try:
            tenant = self.service.keys.tenant(request.headers.get("authorization"))
            body = parse_json(await read_body(request, self.service.config.limits.max_body_bytes))
            req: CompletionRequest = _validate(CompletionRequest, body)
            model = self._model(req.model)
            if req.logprobs:
                raise BadRequest("logprobs is not supported")
            prompts = [req.prompt] if isinstance(req.prompt, str) else req.prompt
            if len(prompts) != 1:
                raise BadRequest("prompt must be one string (send one request per prompt)")
            job = self._job(request, tenant, model, req, prompts[0], req.max_tokens)
            if req.stream:
                return self._sse(job, req, "text_completion", PARSERS["none"])
            return await self._unary(job, req, "text_completion", PARSERS["none"])
        except RouterError as error:
            return openai_error(error)

    async def models(self, request: Request) -> Response:
        try:
            self.service.keys.tenant(request.headers.get("authorization"))
        except RouterError as error:
            return openai_error(error)
        served = self.service.served_models()
        data = [{"id": m, "object": "model", "created": 0, "owned_by": "mufleet"} for m in served]
        return JSONResponse({"object": "list", "data": data})

    # -- building the job ------------------------------------------------------------------
    def _model(self, name: str) -> ServedModel:
        model = self.service.models.get(name)
        if model is None:
            known = ", ".join(sorted(self.service.models))
            raise NotFound(f"model {name!r} is not served here; models: {known}")
        return model

    def _job(
        self,
        request: Request,
        tenant: Any,
        model: ServedModel,
        req: _Sampling,
        prompt: str,
        max_tokens: int | None,
    ) -> Job:
        if not prompt:
            raise BadRequest("the prompt is empty")
        max_tokens = model.config.max_tokens_default if max_tokens is None else max_tokens
        ids = model.encode(prompt)
        if max_tokens < 1:
            raise BadRequest(f"max_tokens must be at least 1, got {max_tokens}")
        if len(ids) + max_tokens > model.max_context:
            raise BadRequest(
                f"this model's context window is {model.max_context} tokens; the prompt has "
                f"{len(ids)} and max_tokens asks for {max_tokens} more"
            )
        inputs = ensemble_inputs(req, prompt, max_tokens)
        return Job(
            tenant=tenant,
            model=model,
            request=build_request(model.config.triton_model, inputs, outputs=TEXT_OUTPUTS),
            prompt_ids=ids,
            max_tokens=max_tokens * req.n,  # priced for every choice
            session_id=self._session(request, req, tenant.name),
        )

    def _session(self, request: Request, req: _Sampling, tenant: str) -> str | None:
        """The agent session a request draws on: ``X-Session-ID``, else an open session
        named by OpenAI's ``user`` field."""
        now = time.monotonic()
        header = request.headers.get("x-session-id")
        if header is not None:
            if self.service.sessions.get(header, now, tenant=tenant) is None:
                raise NotFound(f"session {header!r} does not exist or has expired")
            return header
        if req.user and self.service.sessions.get(req.user, now, tenant=tenant) is not None:
            return req.user
        return None

    # -- answering ---------------------------------------------------------------------------
    async def _collect(self, job: Job, outcome: Outcome) -> dict[int, list[str]]:
        texts: dict[int, list[str]] = {}
        async for response in self.service.pipeline.run(job, outcome):
            text = read_output(response, "text_output")
            if text is None:
                continue
            index = _index(response)
            texts.setdefault(index, []).append(text.reshape(-1)[0].decode("utf-8"))
        return texts

    async def _unary(self, job: Job, req: _Sampling, kind: str, parse: Any) -> Response:
        outcome = Outcome()
        texts = await self._collect(job, outcome)
        created = int(time.time())
        choices = []
        for index in range(req.n):
            text = "".join(texts.get(index, []))
            finish = "length" if _at_limit(outcome, job, req.n) else "stop"
            if kind == "chat.completion":
                content, calls = parse(text)
                message: dict[str, Any] = {"role": "assistant", "content": content}
                if calls:
                    message["tool_calls"] = calls
                    finish = "tool_calls"
                choices.append({"index": index, "message": message, "finish_reason": finish})
            else:
                choices.append({"index": index, "text": text, "finish_reason": finish})
        body = {
            "id": f"{'chatcmpl' if kind == 'chat.completion' else 'cmpl'}-{job.request_id}",
            "object": kind,
            "created": created,
            "model": job.model.name,
            "choices": choices,
            "usage": _usage(job, outcome),
        }
        return JSONResponse(body, headers=_headers(outcome))

    def _sse(self, job: Job, req: _Sampling, kind: str, parse: Any) -> Response:
        chat = kind == "chat.completion.chunk"
        outcome = Outcome()
        stream = self.service.pipeline.run(job, outcome)
        created = int(time.time())
        base = {
            "id": f"{'chatcmpl' if chat else 'cmpl'}-{job.request_id}",
            "object": kind,
            "created": created,
            "model": job.model.name,
        }
        include_usage = bool(req.stream_options and req.stream_options.include_usage)

        def event(payload: dict[str, Any]) -> bytes:
            return b"data: " + orjson.dumps(payload) + b"\n\n"

        def choice(index: int, text: str | None, finish: str | None) -> dict[str, Any]:
            if chat:
                delta: dict[str, Any] = {} if text is None else {"content": text}
                return {"index": index, "delta": delta, "finish_reason": finish}
            return {"index": index, "text": text or "", "finish_reason": finish}

        async def first() -> Any:
            """Pull the first response before answering 200, so errors keep their status."""
            try:
                return await stream.__anext__()
            except StopAsyncIteration:
                return None

        async def body(head: Any) -> AsyncIterator[bytes]:
            buffered: dict[int, list[str]] = {}
            if chat:
                for index in range(req.n):
                    delta = {"role": "assistant", "content": ""}
                    chunk = {"index": index, "delta": delta, "finish_reason": None}
                    yield event({**base, "choices": [chunk]})
            try:
                response = head
                while response is not None:
                    text = read_output(response, "text_output")
                    if text is not None:
                        piece = text.reshape(-1)[0].decode("utf-8")
                        index = _index(response)
                        if chat and parse is not PARSERS["none"]:
                            buffered.setdefault(index, []).append(piece)  # calls need it all
                        elif piece:
                            yield event({**base, "choices": [choice(index, piece, None)]})
                    try:
                        response = await stream.__anext__()
                    except StopAsyncIteration:
                        response = None
            except RouterError as error:
                payload = {"error": {"message": error.message, "type": error.kind}}
                yield b"data: " + orjson.dumps(payload) + b"\n\n"
                return
            for index in range(req.n):
                finish = "length" if _at_limit(outcome, job, req.n) else "stop"
                if index in buffered:
                    content, calls = parse("".join(buffered[index]))
                    last: dict[str, Any] = {}
                    if content:
                        last["content"] = content
                    if calls:
                        last["tool_calls"] = [{"index": i, **c} for i, c in enumerate(calls)]
                        finish = "tool_calls"
                    chunk = {"index": index, "delta": last, "finish_reason": None}
                    yield event({**base, "choices": [chunk]})
                yield event({**base, "choices": [choice(index, None, finish)]})
            if include_usage:
                yield event({**base, "choices": [], "usage": _usage(job, outcome)})
            yield b"data: [DONE]\n\n"

        return _DeferredSSE(first, body, outcome, stream.aclose)


class _DeferredSSE(Response):
    """An SSE response that answers with an error status if the request fails before its
    first token (admission, routing, a node fault), and streams otherwise."""

    def __init__(self, first: Any, body: Any, outcome: Outcome, close: Any) -> None:
        super().__init__()
        self._first, self._body, self._outcome, self._close = first, body, outcome, close

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        try:
            head = await self._first()
        except RouterError as error:
            await self._close()
            await openai_error(error)(scope, receive, send)
            return
        headers = {"Cache-Control": "no-cache", **_headers(self._outcome)}
        await ClosingStream(self._body(head), self._close, headers)(scope, receive, send)


def _index(response: Any) -> int:
    value = read_output(response, "sequence_index")
    return 0 if value is None else int(value.reshape(-1)[0])


def _at_limit(outcome: Outcome, job: Job, n: int) -> bool:
    """Every choice used its whole ``max_tokens`` (``job.max_tokens`` covers all ``n``)."""
    return outcome.output_tokens >= job.max_tokens


def _usage(job: Job, outcome: Outcome) -> dict[str, int]:
    prompt = len(job.prompt_ids)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": outcome.output_tokens,
        "total_tokens": prompt + outcome.output_tokens,
    }


def _headers(outcome: Outcome) -> dict[str, str]:
    headers = {"x-mufleet-request-mu": f"{outcome.estimated_mu:.3f}"}
    if outcome.node:
        headers["x-mufleet-node"] = outcome.node
    if outcome.priority:
        headers["x-mufleet-priority"] = str(outcome.priority)
    if outcome.route_reason:
        headers["x-mufleet-route"] = outcome.route_reason
    return headers
