"""Mid-stream migration against real cpu-profile tritonserver nodes: a stream cut after k
responses on node A and continued on node B's tensorrt_llm gives the client the text (and
token ids) of the unbroken stream, through the router's own node channel."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clients import ENGINE_SLOTS
from nodes import serving
from pydantic import SecretStr
from tritonclient.grpc import service_pb2

from mufleet.node import TritonNode
from mufleet.repository import RenderParams
from router.admission import TenantConfig
from router.api.openai import TEXT_OUTPUTS, CompletionRequest, ensemble_inputs
from router.migration import StreamLedger, prepare_request
from router.models import ModelConfig, ServedModel
from router.pipeline import Job
from router.upstream import NodeChannel
from router.wire import build_request, is_final, read_output

pytestmark = pytest.mark.triton

PROMPT = "The quick brown fox"
MAX_TOKENS = 24
CUT = 5
"""Responses the client gets from node A before it is cut off."""
Responses = list[service_pb2.ModelInferResponse]


@pytest.fixture(scope="module")
def node_b(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[TritonNode]:
    params = RenderParams(profile="cpu", tokenizer_dir=tiny_model_dir, max_batch_size=ENGINE_SLOTS)
    with serving("migrate-b", params, mufleet_home) as node:
        yield node


@pytest.fixture(scope="module")
def model(tiny_model_dir: Path) -> ServedModel:
    return ServedModel(ModelConfig(name="tiny", tokenizer_dir=tiny_model_dir))


def make_job(model: ServedModel, front: str, seed: int | None) -> Job:
    """A streamed job as the router's fronts build it: greedy, or seeded sampling."""
    sampling = {"temperature": 0.0} if seed is None else {"temperature": 0.9, "seed": seed}
    req = CompletionRequest(model="tiny", prompt=PROMPT, stream=True, **sampling)
    inputs = ensemble_inputs(req, PROMPT, MAX_TOKENS)
    prompt = model.encode(PROMPT)
    if front == "tensorrt_llm":
        engine = {
            "input_ids": np.array([prompt], dtype=np.int32),
            "input_lengths": np.array([[len(prompt)]], dtype=np.int32),
            "request_output_len": inputs["max_tokens"],
            "streaming": inputs["stream"],
            "return_num_output_tokens": inputs["return_num_output_tokens"],
        }
        if seed is None:
            engine["runtime_top_k"] = inputs["top_k"]
        else:
            engine |= {"temperature": inputs["temperature"], "seed": inputs["seed"]}
        request = build_request(front, engine, request_id="mig-1")
    else:
        request = build_request(front, inputs, request_id="mig-1", outputs=TEXT_OUTPUTS)
    tenant = TenantConfig(name="acme", api_key=SecretStr("key-acme"), reserved_mu_s=1000.0)
    return Job(tenant, model, request, prompt, MAX_TOKENS)


async def unbroken(node: TritonNode, job: Job) -> Responses:
    prepare_request(job)  # as the router sends it: with output_ids
    channel = NodeChannel("a", node.grpc_url)
    try:
        return [r async for r in channel.stream(job.request, 120)]
    finally:
        await channel.close()


async def migrated(a: TritonNode, b: TritonNode, job: Job) -> tuple[Responses, StreamLedger]:
    """What the client gets when A's stream stops after :data:`CUT` responses."""
    prepare_request(job)
    ledger = StreamLedger(job)
    client: Responses = []
    first, second = NodeChannel("a", a.grpc_url), NodeChannel("b", b.grpc_url)
    try:
        async with contextlib.aclosing(first.stream(job.request, 120)) as stream:
            async for response in stream:
                ledger.observe(response)
                client.append(ledger.for_client(response))
                if len(client) == CUT:
                    break  # closing the stream cancels the call on A
        assert ledger.migratable, ledger.why_not
        cont = ledger.continuation()
        async for response in second.stream(cont.request, 120):
            for out in cont.translate(response):
                ledger.observe(out)
                client.append(ledger.for_client(out))
    finally:
        await first.close()
        await second.close()
    return client, ledger


def texts(responses: Responses) -> list[str]:
    return [
        b"".join(v.reshape(-1).tolist()).decode()
        for r in responses
        if (v := read_output(r, "text_output")) is not None
    ]


def token_ids(responses: Responses) -> list[int]:
    return [
        int(t)
        for r in responses
        if (v := read_output(r, "output_ids")) is not None
        for t in v.reshape(-1)
    ]


@pytest.mark.parametrize(
    ("front", "seed"),
    [
        ("ensemble", None),
        ("ensemble", 1234),
        ("tensorrt_llm_bls", 99),
        ("tensorrt_llm", 7),
    ],
)
def test_migrated_stream_equals_the_unbroken_one(
    triton_node: TritonNode,
    node_b: TritonNode,
    model: ServedModel,
    front: str,
    seed: int | None,
) -> None:
    whole = asyncio.run(unbroken(triton_node, make_job(model, front, seed)))
    assert is_final(whole[-1])
    expected_ids = token_ids(whole)
    assert len(expected_ids) > CUT  # the cut falls mid-stream

    client, ledger = asyncio.run(migrated(triton_node, node_b, make_job(model, front, seed)))

    assert ledger.generated == tuple(expected_ids)
    assert is_final(client[-1])
    assert not ledger.migratable
    if front == "tensorrt_llm":
        assert token_ids(client) == expected_ids
    else:
        assert "".join(texts(client)) == "".join(texts(whole))
        assert texts(client) == texts(whole)  # cut into the same chunks, too
        for response in client:  # only the outputs the client listed
            assert {o.name for o in response.outputs} <= set(TEXT_OUTPUTS)
    assert counts(client) == counts(whole)
    assert counts(client)[-1] == len(expected_ids)


def counts(responses: Responses) -> list[int]:
    """The running ``num_output_tokens`` of the responses that carry it."""
    return [
        int(v.reshape(-1)[0])
        for r in responses
        if (v := read_output(r, "num_output_tokens")) is not None
    ]
