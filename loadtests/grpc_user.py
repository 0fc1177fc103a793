"""``TritonGrpcUser``: ``tritonclient.grpc`` streaming, to the router's gRPC port or a node.

Each user keeps one bidirectional stream open (as TensorRT-LLM's own clients do) and sends
one request at a time on it, timing the first response that carries text and the final
one (``triton_final_response``). gRPC's C core is made gevent-cooperative first
(``grpc.experimental.gevent``), as Locust's gRPC example does, or one user would block the
process. The key travels as ``authorization`` metadata on the stream; a bare node takes
none. A failed stream is opened again for the next request.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

import grpc.experimental.gevent as grpc_gevent
import numpy as np

grpc_gevent.init_gevent()

import gevent.queue  # noqa: E402 - after init_gevent
import tritonclient.grpc as grpcclient  # noqa: E402
from llm_options import LlmSettings, settings  # noqa: E402
from llm_recorder import RECORDER  # noqa: E402
from llm_users import WORDS  # noqa: E402
from locust import User, between, task  # noqa: E402

from mufleet.load.metrics import ErrorKind, RequestRecord, classify_grpc  # noqa: E402

_numbers = itertools.count()
_request_ids = itertools.count()


def _short(status: str | None, message: str | None) -> str:
    """A failure's status for Locust's failure table: the router's ``[NNN]`` or the gRPC
    code, never the whole message (alike failures must group)."""
    found = re.match(r"\s*\[(\d{3})\]", message or "")
    return found.group(1) if found else (status or (message or "")[:40])


def _tensor(name: str, value: np.ndarray, dtype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(value.shape), dtype)
    tensor.set_data_from_numpy(value)
    return tensor


def stream_inputs(text: str, max_tokens: int) -> list[grpcclient.InferInput]:
    """The ensemble's streaming inputs (TensorRT-LLM's contract)."""
    return [
        _tensor("text_input", np.array([[text.encode()]], dtype=object), "BYTES"),
        _tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        _tensor("stream", np.array([[True]]), "BOOL"),
        _tensor("return_num_output_tokens", np.array([[True]]), "BOOL"),
    ]


class TritonGrpcUser(User):
    """Short requests over one gRPC stream per user."""

    weight = 1
    wait_time = between(0.2, 1.0)
    input_words = (40, 160)
    output_tokens = (16, 64)

    def on_start(self) -> None:
        self.llm_settings: LlmSettings = settings(self.environment)
        self.number = next(_numbers)
        self.tenant = self.llm_settings.tenant_for(type(self).__name__)
        self.url = self._url()
        self.events: gevent.queue.Queue[tuple[Any, Any, float]] = gevent.queue.Queue()
        self.client: grpcclient.InferenceServerClient | None = None
        self.rng_seed = self.llm_settings.seed * 7919 + self.number

    def _url(self) -> str:
        s = self.llm_settings
        if s.target == "direct" and s.node_grpc_urls:
            return s.node_grpc_urls[self.number % len(s.node_grpc_urls)]
        if s.grpc_url:
            return s.grpc_url
        raise ValueError("TritonGrpcUser needs --llm-grpc-url (router or node HOST:PORT)")

    def _open(self) -> grpcclient.InferenceServerClient:
        if self.client is None:
            key = self.llm_settings.key_for(self.tenant)
            client = grpcclient.InferenceServerClient(self.url)
            client.start_stream(
                callback=lambda result, error: self.events.put(
                    (result, error, time.perf_counter())
                ),
                headers={"authorization": f"Bearer {key}"} if key else None,
            )
            self.client = client
        return self.client

    def _reset(self) -> None:
        if self.client is not None:
            try:
                self.client.stop_stream(cancel_requests=True)
                self.client.close()
            except Exception:  # a dead stream may refuse to stop cleanly
                pass
            self.client = None
        self.events = gevent.queue.Queue()

    def on_stop(self) -> None:
        self._reset()

    @task
    def generate(self) -> None:
        seed = self.rng_seed * 1_000_003 + next(_request_ids)
        words = self.input_words[0] + seed % (self.input_words[1] - self.input_words[0])
        max_tokens = self.output_tokens[0] + seed % (self.output_tokens[1] - self.output_tokens[0])
        request_id = f"{self.number}-{seed}"
        started_wall, start = time.time(), time.perf_counter()
        first: float | None = None
        end = start
        tokens, node, error, detail = 0, None, None, ""
        try:
            client = self._open()
            client.async_stream_infer(
                self.llm_settings.triton_model,
                stream_inputs("Summarise:" + WORDS.text(seed, words), max_tokens),
                request_id=request_id,
                enable_empty_final_response=True,
            )
            deadline = start + self.llm_settings.request_timeout_s
            while True:
                try:
                    result, failure, at = self.events.get(
                        timeout=max(deadline - time.perf_counter(), 0)
                    )
                except gevent.queue.Empty:
                    error, detail = ErrorKind.TIMEOUT, "deadline"
                    self._reset()  # late responses must not reach the next request
                    break
                if failure is not None:
                    error = classify_grpc(failure.status(), failure.message())
                    detail = _short(failure.status(), failure.message())
                    if first is not None and error is not ErrorKind.RATE_LIMITED:
                        error = ErrorKind.BROKEN_STREAM
                    self._reset()
                    break
                response = result.get_response()
                if response.id != request_id:
                    continue
                text = result.as_numpy("text_output")
                if text is not None and text.size and text.reshape(-1)[0]:
                    first = first or at
                count = result.as_numpy("num_output_tokens")
                if count is not None and count.size:
                    tokens = max(tokens, int(count.reshape(-1)[0]))
                if "mufleet_node" in response.parameters:
                    node = response.parameters["mufleet_node"].string_param
                if response.parameters["triton_final_response"].bool_param:
                    end = at
                    break
        except Exception as exc:  # the stream could not be opened or written
            error, detail = ErrorKind.CONNECTION, type(exc).__name__
            self._reset()
        if error is not None:
            end = time.perf_counter()
        RECORDER.add(
            self.environment,
            RequestRecord(
                start_s=started_wall,
                user_class=type(self).__name__,
                tenant=self.tenant,
                endpoint="grpc",
                e2e_s=end - start,
                ttft_s=None if first is None else first - start,
                output_tokens=tokens,
                error=error,
                node=node,
            ),
            detail,
        )
