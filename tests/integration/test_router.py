"""The router as its users call it: the openai SDK, tritonclient HTTP and gRPC, curl-style
JSON — in front of real tritonserver nodes (sim engine), as a real process."""

from __future__ import annotations

import json
import queue
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient
from nodes import serving, sim_params
from routed import ADMIN, KEYS, MODEL, Router, routing
from tritonclient.utils import InferenceServerException

from mufleet.node import TritonNode

pytestmark = pytest.mark.triton


@pytest.fixture(scope="module")
def sim_nodes(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[list[TritonNode]]:
    params = sim_params(tiny_model_dir, max_batch_size=8)
    with serving("rsim0", params, mufleet_home) as a, serving("rsim1", params, mufleet_home) as b:
        yield [a, b]


@pytest.fixture(scope="module")
def router(
    sim_nodes: list[TritonNode], tiny_model_dir: Path, mufleet_home: Path
) -> Iterator[Router]:
    limits = {"max_body_bytes": 64 << 10}
    with routing(sim_nodes, tiny_model_dir, mufleet_home, "main", limits=limits) as r:
        yield r


def _client(router: Router, tenant: str = "demo") -> openai.OpenAI:
    return openai.OpenAI(base_url=router.url("/v1"), api_key=KEYS[tenant], max_retries=0)


def _http(
    router: Router,
    path: str,
    body: bytes | dict[str, Any] | None = None,
    *,
    key: str | None = KEYS["demo"],
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        router.url(path), data=data, method="POST" if data is not None else "GET"
    )
    if key is not None:
        request.add_header("Authorization", f"Bearer {key}")
    for name, value in (headers or {}).items():
        request.add_header(name, value)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            raw, status = response.read(), response.status
            got = {k.lower(): v for k, v in response.headers.items()}
    except urllib.error.HTTPError as err:
        raw, status = err.read(), err.code
        got = {k.lower(): v for k, v in err.headers.items()}
    try:
        return status, got, json.loads(raw)
    except json.JSONDecodeError:
        return status, got, raw.decode()


# -- OpenAI -----------------------------------------------------------------------------------


def test_openai_chat_completion(router: Router) -> None:
    reply = _client(router).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Plan the next step of the agent loop."}],
        max_tokens=12,
    )
    assert reply.choices[0].message.content
    assert reply.choices[0].finish_reason in ("length", "stop")
    assert reply.usage is not None and reply.usage.completion_tokens == 12
    assert reply.usage.prompt_tokens > 5


def test_openai_chat_streaming_with_usage(router: Router) -> None:
    stream = _client(router).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Stream a short answer."}],
        max_tokens=10,
        stream=True,
        stream_options={"include_usage": True},
    )
    text, usage, finish = "", None, None
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            text += choice.delta.content or ""
            finish = choice.finish_reason or finish
    assert text and finish == "length"
    assert usage is not None and usage.completion_tokens == 10


def test_openai_completions_with_stop_list_seed_and_n(router: Router) -> None:
    reply = _client(router).completions.create(
        model=MODEL,
        prompt="An agent asks the fleet",
        max_tokens=8,
        stop=["zzz", "yyy"],
        seed=3,
        n=2,
        temperature=0.7,
    )
    assert len(reply.choices) == 2 and all(c.text for c in reply.choices)
    assert reply.usage is not None and reply.usage.completion_tokens == 16


def test_tools_and_tool_messages_are_accepted(router: Router) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "lookup",
                "description": "look a word up",
                "parameters": {"type": "object", "properties": {"q": {"type": "string"}}},
            },
        }
    ]
    messages = [
        {"role": "user", "content": "look up 'fleet'"},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "lookup", "arguments": '{"q": "fleet"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "a group of ships"},
    ]
    reply = _client(router).chat.completions.create(
        model=MODEL,
        messages=messages,
        tools=tools,
        max_tokens=6,  # type: ignore[arg-type]
    )
    assert reply.choices[0].finish_reason in ("stop", "length", "tool_calls")


def test_models_lists_what_the_fleet_serves(router: Router) -> None:
    assert [m.id for m in _client(router).models.list()] == [MODEL]


# -- KServe v2 ----------------------------------------------------------------------------------


def _text_inputs(module: Any, text: str, n: int) -> list[Any]:
    values = [
        ("text_input", np.array([[text]], dtype=object), "BYTES"),
        ("max_tokens", np.array([[n]], dtype=np.int32), "INT32"),
    ]
    out = []
    for name, array, dtype in values:
        tensor = module.InferInput(name, list(array.shape), dtype)
        tensor.set_data_from_numpy(array)
        out.append(tensor)
    return out


def _grpc_stream_tokens(url: str, headers: dict[str, str] | None, text: str) -> list[int]:
    client = grpcclient.InferenceServerClient(url)
    events: queue.Queue[tuple[Any, Any]] = queue.Queue()
    client.start_stream(callback=lambda result, error: events.put((result, error)), headers=headers)
    tokens: list[int] = []
    try:
        inputs = _text_inputs(grpcclient, text, 8)
        stream = grpcclient.InferInput("stream", [1, 1], "BOOL")
        stream.set_data_from_numpy(np.array([[True]]))
        client.async_stream_infer("ensemble", [*inputs, stream], enable_empty_final_response=True)
        while True:
            result, error = events.get(timeout=60)
            assert error is None, error
            ids = result.as_numpy("output_ids")
            if ids is not None:
                tokens += [int(t) for t in ids.reshape(-1)]
            if result.get_response().parameters["triton_final_response"].bool_param:
                return tokens
    finally:
        client.stop_stream()


def test_tritonclient_grpc_stream_gives_the_tokens_direct_gives(
    router: Router, sim_nodes: list[TritonNode]
) -> None:
    text = "The same prompt, routed or not"
    routed = _grpc_stream_tokens(router.grpc, {"authorization": f"Bearer {KEYS['demo']}"}, text)
    direct = _grpc_stream_tokens(sim_nodes[0].grpc_url, None, text)
    assert routed == direct and len(routed) == 8


def test_tritonclient_http_infer_gives_the_tokens_direct_gives(
    router: Router, sim_nodes: list[TritonNode]
) -> None:
    """Unary HTTP infer through the router (it streams from the node and answers once)
    gives the tokens a direct /generate gives."""
    client = httpclient.InferenceServerClient(router.http)
    routed = client.infer(
        "ensemble",
        _text_inputs(httpclient, "binary tensors over http", 6),
        headers={"Authorization": f"Bearer {KEYS['demo']}"},
    )
    ids = [int(t) for t in routed.as_numpy("output_ids").reshape(-1)]
    status, direct = _direct_generate(sim_nodes[0], "binary tensors over http", 6)
    assert status == 200 and ids == direct["output_ids"]


def _direct_generate(node: TritonNode, text: str, n: int) -> tuple[int, Any]:
    request = urllib.request.Request(
        f"http://{node.http_url}/v2/models/ensemble/generate",
        data=json.dumps({"text_input": text, "max_tokens": n}).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def test_tritonclient_http_generate_and_metadata(router: Router) -> None:
    status, _, body = _http(
        router, "/v2/models/ensemble/generate", {"text_input": "hello fleet", "max_tokens": 5}
    )
    assert status == 200, body
    assert body["text_output"] and body["sequence_length"] == 5
    client = httpclient.InferenceServerClient(router.http)
    headers = {"Authorization": f"Bearer {KEYS['demo']}"}
    assert client.is_server_live() and client.is_server_ready()
    metadata = client.get_model_metadata("ensemble", headers=headers)
    assert {i["name"] for i in metadata["inputs"]} >= {"text_input", "max_tokens"}


def test_grpc_unary_infer_through_the_router(router: Router) -> None:
    client = grpcclient.InferenceServerClient(router.grpc)
    result = client.infer(
        "ensemble",
        _text_inputs(grpcclient, "unary over grpc", 4),
        headers={"authorization": f"Bearer {KEYS['demo']}"},
    )
    assert result.as_numpy("text_output") is not None
    assert int(result.as_numpy("sequence_length").reshape(-1)[0]) == 4


# -- admission, sessions, priorities --------------------------------------------------------------


def test_over_reservation_gets_429_while_the_reserved_tenant_is_served(router: Router) -> None:
    body = {"model": MODEL, "prompt": "spend my budget " * 20, "max_tokens": 64}
    statuses, refusal = [], None
    for _ in range(6):
        status, headers, reply = _http(router, "/v1/completions", body, key=KEYS["tight"])
        statuses.append(status)
        if status == 429:
            refusal = (headers, reply)
    assert 429 in statuses and refusal is not None, statuses
    assert int(refusal[0].get("retry-after", 0)) >= 1, refusal
    assert refusal[1]["error"]["type"] == "rate_limit_error"
    status, _, reply = _http(router, "/v1/completions", body, key=KEYS["demo"])
    assert status == 200, reply


def test_session_turns_stay_on_one_node_until_it_is_overloaded(
    router: Router, sim_nodes: list[TritonNode]
) -> None:
    status, _, session = _http(router, "/v1/sessions", {"budget_mu": 1e7, "ttl_s": 120})
    assert status == 201, session
    headers = {"X-Session-ID": session["id"]}
    history = "You are an agent. " * 10
    nodes = []
    for turn in range(4):
        history += f" Turn {turn}: the tool said ok."
        body = {"model": MODEL, "prompt": history, "max_tokens": 4}
        status, got, reply = _http(router, "/v1/completions", body, headers=headers)
        assert status == 200, reply
        nodes.append(got["x-mufleet-node"])
    assert len(set(nodes)) == 1, nodes
    home = next(n for n in sim_nodes if n.name == nodes[0])
    from python_backends.sim_engine.faults import FaultSwitches, write_faults

    assert home.fault_file is not None
    write_faults(home.fault_file, FaultSwitches(hang=True))
    time.sleep(0.2)
    import threading

    def pile() -> None:
        _http(router, "/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 200})

    threads = []
    try:
        for _ in range(12):
            thread = threading.Thread(target=pile, daemon=True)
            thread.start()
            threads.append(thread)
        time.sleep(1.0)
        history += " Turn 4: one more."
        body = {"model": MODEL, "prompt": history, "max_tokens": 4}
        status, got, reply = _http(router, "/v1/completions", body, headers=headers)
        assert status == 200, reply
        assert got["x-mufleet-node"] != nodes[0], "the session should move off a loaded node"
    finally:
        write_faults(home.fault_file, FaultSwitches())
        for thread in threads:
            thread.join(timeout=60)


def test_priorities_follow_the_tier(router: Router) -> None:
    body = {"model": MODEL, "prompt": "which level am I", "max_tokens": 2}
    _, interactive, _ = _http(router, "/v1/completions", body, key=KEYS["demo"])
    _, batch, _ = _http(router, "/v1/completions", body, key=KEYS["batch"])
    assert int(interactive["x-mufleet-priority"]) < int(batch["x-mufleet-priority"])
    assert int(interactive["x-mufleet-priority"]) >= 2, "level 1 is the canaries'"


def test_a_requested_priority_above_the_maximum_is_clamped(router: Router) -> None:
    client = grpcclient.InferenceServerClient(router.grpc)
    result = client.infer(
        "ensemble",
        _text_inputs(grpcclient, "let me jump the queue", 2),
        priority=1,
        headers={"authorization": f"Bearer {KEYS['batch']}"},
    )
    assert result.as_numpy("text_output") is not None
    level = result.get_response().parameters["mufleet_priority"].int64_param
    assert level == 4, "batch's max_priority is 4: a request for level 1 is clamped to it"


# -- admin and metrics ---------------------------------------------------------------------------


def test_admin_nodes_and_tenants(router: Router) -> None:
    status, _, body = _http(router, "/admin/nodes", key=ADMIN)
    assert status == 200
    for node in body["nodes"]:
        assert {"name", "url", "state", "reason", "inflight_mu", "capacity_mu_s"} <= set(node)
    status, _, _ = _http(router, "/admin/nodes", key=KEYS["demo"])
    assert status == 401
    status, _, body = _http(router, "/admin/tenants", key=ADMIN)
    assert status == 200 and {t["name"] for t in body["tenants"]} == set(KEYS)


def test_cordoned_node_gets_no_new_work(router: Router, sim_nodes: list[TritonNode]) -> None:
    name = sim_nodes[1].name
    status, _, _ = _http(router, f"/admin/nodes/{name}/cordon", b"", key=ADMIN)
    assert status == 200
    try:
        body = {"model": MODEL, "prompt": "not on the cordoned node", "max_tokens": 2}
        for _ in range(4):
            status, headers, reply = _http(router, "/v1/completions", body)
            assert status == 200, reply
            assert headers["x-mufleet-node"] != name
    finally:
        _http(router, f"/admin/nodes/{name}/uncordon", b"", key=ADMIN)


def test_router_metrics_are_prometheus_text(router: Router) -> None:
    with urllib.request.urlopen(router.url("/metrics"), timeout=10) as response:
        text = response.read().decode()
    for name in (
        "mufleet_router_admitted_mu_total",
        "mufleet_router_ttft_seconds_bucket",
        "mufleet_router_routing_decisions_total",
        "mufleet_router_inflight_mu",
    ):
        assert name in text, name


# -- bad input -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body", "key", "status"),
    [
        ("/v1/completions", b"{not json", KEYS["demo"], 400),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": 8}, None, 401),
        ("/v1/completions", {"model": MODEL, "prompt": "x"}, "wrong-key", 401),
        ("/v1/completions", {"model": "no-such-model", "prompt": "x"}, KEYS["demo"], 404),
        ("/v1/completions", {"model": MODEL, "prompt": "x", "max_tokens": -3}, KEYS["demo"], 400),
        (
            "/v1/completions",
            {"model": MODEL, "prompt": "x", "max_tokens": 10**7},
            KEYS["demo"],
            400,
        ),
        ("/v1/completions", {"model": MODEL, "prompt": 17}, KEYS["demo"], 422),
        ("/v1/chat/completions", {"model": MODEL, "messages": []}, KEYS["demo"], 422),
        ("/v1/completions", b"x" * (100 << 10), KEYS["demo"], 413),
        ("/v2/models/ensemble/generate", b"{", KEYS["demo"], 400),
        ("/v2/models/unknown/generate", {"text_input": "x", "max_tokens": 2}, KEYS["demo"], 404),
        ("/v2/models/ensemble/generate", {"text_input": "x", "max_tokens": 0}, KEYS["demo"], 400),
    ],
)
def test_bad_input_gets_a_json_error_and_the_router_keeps_serving(
    router: Router, path: str, body: Any, key: str | None, status: int
) -> None:
    got, _, reply = _http(router, path, body, key=key)
    assert got == status, reply
    assert isinstance(reply, dict) and "error" in reply
    ok, _, _ = _http(router, "/v1/completions", {"model": MODEL, "prompt": "ok", "max_tokens": 2})
    assert ok == 200


def test_grpc_without_a_key_is_unauthenticated(router: Router) -> None:
    client = grpcclient.InferenceServerClient(router.grpc)
    with pytest.raises(InferenceServerException) as err:
        client.infer("ensemble", _text_inputs(grpcclient, "no key", 2))
    assert "StatusCode.UNAUTHENTICATED" in str(err.value.status())


# -- priorities as Triton orders them ------------------------------------------------------------


def test_the_router_s_priority_is_observed_in_triton_s_ordering(
    triton_node: TritonNode, tiny_model_dir: Path, mufleet_home: Path
) -> None:
    """A cpu node with few engine slots, flooded by the batch tenant (low priority): a later
    interactive request overtakes the batch requests queued in Triton."""
    from clients import ENGINE_SLOTS, metric_value

    with routing([triton_node], tiny_model_dir, mufleet_home, "prio") as r:
        client = grpcclient.InferenceServerClient(r.grpc)
        finished: queue.Queue[str] = queue.Queue()

        def callback(result: Any, error: Any) -> None:
            assert error is None, error
            response = result.get_response()
            if response.parameters["triton_final_response"].bool_param:
                finished.put(response.id)

        def send(request_id: str, tenant: str) -> None:
            inputs = _text_inputs(grpcclient, f"{request_id} wants tokens", 96)
            minimum = grpcclient.InferInput("min_tokens", [1, 1], "INT32")
            minimum.set_data_from_numpy(np.array([[96]], dtype=np.int32))
            stream = grpcclient.InferInput("stream", [1, 1], "BOOL")
            stream.set_data_from_numpy(np.array([[True]]))
            client.async_stream_infer(
                "ensemble",
                [*inputs, minimum, stream],
                request_id=request_id,
                enable_empty_final_response=True,
            )

        client.start_stream(callback=callback, headers={"authorization": f"Bearer {KEYS['batch']}"})
        urgent = grpcclient.InferenceServerClient(r.grpc)
        urgent_done: queue.Queue[str] = queue.Queue()
        try:
            lows = 6 * ENGINE_SLOTS
            for i in range(lows):
                send(f"batch{i}", "batch")
            deadline = time.monotonic() + 60  # until requests queue in the engine
            while time.monotonic() < deadline:
                pending = metric_value(
                    triton_node.metrics_url,
                    "nv_trt_llm_request_metrics",
                    model="tensorrt_llm",
                    request_type="waiting",
                )
                if pending >= 2 * ENGINE_SLOTS:
                    break
                time.sleep(0.02)
            urgent.start_stream(
                callback=lambda result, error: urgent_done.put(
                    "late" if error is None else f"error {error}"
                ),
                headers={"authorization": f"Bearer {KEYS['demo']}"},
            )
            inputs = _text_inputs(grpcclient, "late interactive request", 8)
            urgent.async_stream_infer("ensemble", inputs, request_id="late")
            assert urgent_done.get(timeout=120) == "late"
            done_before = finished.qsize()
            for _ in range(lows):
                finished.get(timeout=180)
        finally:
            client.stop_stream()
            urgent.stop_stream()
        assert done_before <= lows - 2 * ENGINE_SLOTS, (
            f"{done_before} of {lows} batch requests finished before the interactive one"
        )
