"""Small clients shared by the integration tests (real HTTP and gRPC)."""

from __future__ import annotations

import json
import queue
import re
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

ENGINE_SLOTS = 4
"""Engine slots of the test node: small, so a few requests fill it and the rest queue."""


def http_json(url: str, body: bytes | dict[str, Any] | None = None) -> tuple[int, Any]:
    """POST (or GET without a body); returns ``(status, parsed JSON or text)``."""
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method="POST" if data else "GET")
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            raw = response.read().decode()
            status = response.status
    except urllib.error.HTTPError as err:
        raw, status = err.read().decode(), err.code
    try:
        return status, json.loads(raw)
    except json.JSONDecodeError:
        return status, raw


def sse_events(url: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    """All ``data:`` events of a ``generate_stream`` call."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    with urllib.request.urlopen(request, timeout=120) as response:
        text = response.read().decode()
    return [json.loads(line[5:]) for line in text.splitlines() if line.startswith("data:")]


def metric_value(metrics_url: str, name: str, **labels: str) -> float:
    """Sum of the samples of ``name`` whose labels include ``labels``."""
    with urllib.request.urlopen(metrics_url, timeout=10) as response:
        text = response.read().decode()
    total = 0.0
    for line in text.splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if not match:
            continue
        found = dict(re.findall(r'(\w+)="([^"]*)"', match.group(1)))
        if all(found.get(k) == v for k, v in labels.items()):
            total += float(match.group(2))
    return total


def ensemble_inputs(
    module: Any,
    text: str,
    max_tokens: int,
    *,
    seed: int | None = None,
    top_k: int | None = None,
    min_tokens: int | None = None,
    stream: bool | None = None,
) -> list[Any]:
    """tritonclient inputs for the ``ensemble``/``tensorrt_llm_bls`` models."""
    values: list[tuple[str, np.ndarray, str]] = [
        ("text_input", np.array([[text]], dtype=object), "BYTES"),
        ("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
    ]
    if seed is not None:
        values.append(("seed", np.array([[seed]], dtype=np.uint64), "UINT64"))
    if top_k is not None:
        values.append(("top_k", np.array([[top_k]], dtype=np.int32), "INT32"))
    if min_tokens is not None:
        values.append(("min_tokens", np.array([[min_tokens]], dtype=np.int32), "INT32"))
    if stream is not None:
        values.append(("stream", np.array([[stream]], dtype=bool), "BOOL"))
    inputs = []
    for name, array, dtype in values:
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    return inputs


@dataclass
class StreamRecorder:
    """Collects gRPC stream responses in arrival order, per request id."""

    events: queue.Queue[tuple[Any, Any]] = field(default_factory=queue.Queue)

    def callback(self, result: Any, error: Any) -> None:
        self.events.put((result, error))

    def drain(self, finals_expected: int, timeout: float = 120.0) -> list[tuple[str, list[int]]]:
        """``(request_id, tokens)`` per response until that many final responses came."""
        arrivals: list[tuple[str, list[int]]] = []
        finals = 0
        while finals < finals_expected:
            result, error = self.events.get(timeout=timeout)
            if error is not None:
                raise AssertionError(f"stream error: {error}")
            response = result.get_response(as_json=True)
            ids = result.as_numpy("output_ids")
            tokens = [] if ids is None else [int(t) for t in ids.reshape(-1)]
            arrivals.append((response["id"], tokens))
            params = response.get("parameters", {})
            if params.get("triton_final_response", {}).get("bool_param"):
                finals += 1
        return arrivals


def grpc_client(url: str) -> grpcclient.InferenceServerClient:
    return grpcclient.InferenceServerClient(url)


def http_client(url: str) -> httpclient.InferenceServerClient:
    return httpclient.InferenceServerClient(url, network_timeout=120)
