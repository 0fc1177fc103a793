"""Mid-stream migration against real tritonserver nodes: a stream cut after k responses on
node A and continued on node B's tensorrt_llm gives the client the text (and token ids) of
the unbroken stream, through the router's own node channel. The cpu profile's nodes, and a
sim-profile node whose pseudo-text holds tokens back at many seams."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from clients import ENGINE_SLOTS
from nodes import serving, sim_params
from pydantic import SecretStr
from tritonclient.grpc import service_pb2

from mufleet.node import TritonNode
from mufleet.repository import RenderParams
from python_backends.text_codec import TextDecoder
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


def make_job(
    model: ServedModel,
    front: str,
    seed: int | None,
    text: str = PROMPT,
    max_tokens: int = MAX_TOKENS,
) -> Job:
    """A streamed job as the router's fronts build it: greedy, or seeded sampling."""
    sampling = {"temperature": 0.0} if seed is None else {"temperature": 0.9, "seed": seed}
    req = CompletionRequest(model="tiny", prompt=text, stream=True, **sampling)
    inputs = ensemble_inputs(req, text, max_tokens)
    prompt = model.encode(text)
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
    return Job(tenant, model, request, prompt, max_tokens)


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


# -- a sim-profile node ------------------------------------------------------------------------
SIM_PROMPT = "Paris is"
SIM_MAX_TOKENS = 160
SIM_CUTS = (1, 2, 15, 16, 17, 20, 43, 44, 45, 49, 50, 100)
"""Cuts right before, inside and right after responses that join held-back tokens."""


def ids_per_response(responses: Responses) -> list[list[int]]:
    return [
        [int(t) for t in v.reshape(-1)]
        for r in responses
        if (v := read_output(r, "output_ids")) is not None
    ]


def sim_job(model: ServedModel) -> Job:
    return make_job(model, "ensemble", None, SIM_PROMPT, SIM_MAX_TOKENS)


@pytest.fixture(scope="class")
def sim_node(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[TritonNode]:
    """One postprocessing instance: with several, Triton's ensemble pairs each response's
    ``output_ids`` with the next text to be ready, now and then a neighbouring response's,
    and the unbroken stream would be no reference (the ledger's settling of such texts at
    the seam is unit-tested)."""
    params = sim_params(
        tiny_model_dir, max_batch_size=ENGINE_SLOTS, postprocessing_instance_count=1
    )
    with serving("migrate-sim", params, mufleet_home) as node:
        yield node


@pytest.fixture(scope="class")
def sim_whole(sim_node: TritonNode, model: ServedModel, tiny_model_dir: Path) -> Responses:
    """The unbroken stream, its texts those of its own ids, with held-back tokens joined
    where :data:`SIM_CUTS` cut."""
    responses = asyncio.run(unbroken(sim_node, sim_job(model)))
    assert is_final(responses[-1])
    chunks = ids_per_response(responses)
    decoder = TextDecoder(tiny_model_dir)
    decoded = [decoder.decode(np.array([c]), np.array([len(c)]))[0].decode() for c in chunks]
    assert texts(responses) == decoded
    joined = {i for i, c in enumerate(chunks) if len(c) > 1}
    assert joined & set(SIM_CUTS)  # the continuation starts by joining held tokens
    assert joined & {cut - 1 for cut in SIM_CUTS}  # the client's last response joined some
    return responses


class TestSimNode:
    """The sim engine's pseudo-text has many lone bytes that are not UTF-8 alone, so its
    streams hold tokens back often. The continuation runs on the same node; the node's
    failure is what the ledger saw: the first responses of the unbroken stream."""

    @pytest.mark.parametrize("cut", SIM_CUTS)
    def test_migrated_stream_equals_the_unbroken_one(
        self, sim_node: TritonNode, model: ServedModel, sim_whole: Responses, cut: int
    ) -> None:
        whole = sim_whole
        job = sim_job(model)
        prepare_request(job)
        ledger = StreamLedger(job)
        client: Responses = []
        for response in whole[:cut]:
            ledger.observe(response)
            client.append(ledger.for_client(response))
        cont = ledger.continuation()
        assert cont.seam.owed == cont.seam.ahead == ()

        async def rest() -> Responses:
            channel = NodeChannel("sim", sim_node.grpc_url)
            try:
                return [r async for r in channel.stream(cont.request, 120)]
            finally:
                await channel.close()

        for response in asyncio.run(rest()):
            for out in cont.translate(response):
                ledger.observe(out)
                client.append(ledger.for_client(out))

        assert ledger.generated == tuple(token_ids(whole))
        assert texts(client) == texts(whole)
        assert counts(client) == counts(whole)
        assert is_final(client[-1]) and not any(is_final(r) for r in client[:-1])
        for response in client:
            assert {o.name for o in response.outputs} <= set(TEXT_OUTPUTS)
