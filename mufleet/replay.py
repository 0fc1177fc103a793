"""One trace slice replayed on a real local sim fleet and on the fleet simulator.

The same requests go two ways:

* **real**: ``nodes`` sim-engine ``tritonserver`` nodes (one hardware profile, one
  ``time_scale``) behind the router (``mu_cost``, health probes off), fed by an asyncio
  client that sends each request at its arrival time over KServe gRPC streaming to the
  router and times every response;
* **simulated**: :func:`mufleet.simulator.run.simulate` over a fleet of the same pair, with
  the nodes' batch size and time scale, so its TTFT and TPOT are in wall seconds too.

Prompts are real text (:class:`mufleet.trace_prompts.PromptBuilder`): a Mooncake hash id
becomes a block of ``block_tokens`` tokens, so the trace's prefix sharing is token-prefix
sharing on the nodes, and the simulator gets the same blocks as prefix ids. The token
counts the simulator sees are those the nodes' preprocessing makes (BOS included).

KV hits on the real side come from each request's own ``kv_cache_reused_blocks`` (the
TensorRT-LLM ``return_perf_metrics`` outputs, which the router passes through), capped one
token short of the prompt as the engines count them.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as grpcaio
import yaml

from mufleet.fleet import LocalFleet
from mufleet.node import NodePorts, TritonNode
from mufleet.paths import profiles
from mufleet.repository import RenderParams, render
from mufleet.trace_prompts import PromptBuilder, Tokenizer
from mufleet.traces import Trace, TraceRequest, load_trace
from mufleet.triton_dist import locate
from python_backends.sim_engine.hardware import HardwareProfile, resolve_profile
from router.policies import Decision, NodeSnapshot, RequestView

__all__ = [
    "DEFAULT_TRACE",
    "PAIR",
    "FleetShape",
    "PinnedPolicy",
    "ReplayItem",
    "RouterProcess",
    "SimFleet",
    "SliceSpec",
    "Timing",
    "build_items",
    "check_settings",
    "engine_settings",
    "figures",
    "local_sim_fleet",
    "probe_overheads",
    "replay",
    "router_process",
    "send_one",
    "sim_trace",
    "simulate_items",
    "timings_json",
    "warm_up",
]

PAIR = "llama-3.1-8b_h100-sxm_tp1"
MODEL = "tiny-llama"
FRONT = "ensemble"
API_KEY = "key-replay-0123456789"
ADMIN_TOKEN = "replay-admin-token-0123456789"
DEFAULT_TRACE = (
    Path(__file__).resolve().parents[2]
    / "shared"
    / "traces"
    / "mooncake_conversation_trace.first40min.jsonl.gz"
)
EXIT_TIMEOUT_S = 10
"""``tritonserver --exit-timeout-secs``: its ensemble never reports unloaded, so a node
would otherwise take the whole default 30 s to exit."""
OUTPUTS = (
    "output_ids",
    "text_output",
    "kv_cache_reused_blocks",
    "arrival_time_ns",
    "first_scheduled_time_ns",
    "first_token_time_ns",
    "last_token_time_ns",
)


@dataclass(frozen=True)
class FleetShape:
    """What the real nodes run and the simulator assumes."""

    nodes: int = 4
    max_batch_size: int = 16
    time_scale: float = 50.0
    max_context: int = 4096
    scrape_interval_s: float = 1.0
    pair: str = PAIR

    def hardware(self) -> HardwareProfile:
        return HardwareProfile.load(resolve_profile(self.pair))


@dataclass(frozen=True)
class SliceSpec:
    """Which part of the trace, at what rate, mapped onto which blocks."""

    trace: Path = DEFAULT_TRACE
    start_s: float = 600.0
    duration_s: float = 100.0
    """Of trace time, before ``rate_scale``."""
    rate_scale: float = 1.0
    """Arrivals ``rate_scale`` times as fast as the trace's (below 1: slower)."""
    block_tokens: int = 64
    max_input_tokens: int = 3072
    max_output_tokens: int = 256
    max_requests: int | None = None
    spread_seed: int = 0
    """Seeds the spreading of Mooncake's 3 s timestamp buckets (:func:`load_trace`)."""
    text_seed: int = 0
    """Seeds the block texts: another seed, other texts (no KV hits across runs)."""


@dataclass(frozen=True)
class ReplayItem:
    index: int
    arrival_s: float
    prompt: str
    prompt_tokens: int
    """As the nodes' preprocessing tokenizes it (special tokens added)."""
    output_tokens: int
    block_ids: tuple[int, ...]


@dataclass
class Timing:
    """One request's figures, from either side (times in wall seconds from the start)."""

    index: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    """Tokens received (real) or generated (simulated)."""
    cached_tokens: int
    ttft_s: float | None
    tpot_s: float | None
    node: str = ""
    error: str | None = None
    lag_s: float = 0.0
    """How late the client sent it (real only)."""
    engine: dict[str, float] = field(default_factory=dict)
    """Real only: ``queue_s`` (engine arrival to admission), ``ttft_s`` (engine arrival to
    first token, inside ``tensorrt_llm``), ``tpot_s`` (between the engine's first and last
    token), ``to_engine_s`` (client send to engine arrival) and ``from_engine_s`` (engine
    first token to the client's)."""

    @property
    def ok(self) -> bool:
        return self.error is None and self.ttft_s is not None


# -- the requests ---------------------------------------------------------------------------


def build_items(spec: SliceSpec, tokenizer: Tokenizer) -> list[ReplayItem]:
    """The slice's requests with their prompt text, scaled onto ``spec.block_tokens``."""
    trace = load_trace(spec.trace, seed=spec.spread_seed)
    window = trace.window(spec.start_s, spec.duration_s).scaled(spec.rate_scale)
    requests = window.requests[: spec.max_requests] if spec.max_requests else window.requests
    builder = PromptBuilder(
        tokenizer,
        spec.block_tokens,
        seed=spec.text_seed,
        max_output_tokens=spec.max_output_tokens,
        max_input_tokens=spec.max_input_tokens,
    )
    items = []
    for index, request in enumerate(requests):
        scaled = builder.scale(request, index)
        prompt = builder.prompt(scaled)
        tokens = len(tokenizer.encode(prompt, add_special_tokens=True))
        items.append(
            ReplayItem(
                index,
                request.arrival_s,
                prompt,
                tokens,
                scaled.output_tokens,
                tuple(block for block, _ in scaled.blocks),
            )
        )
    return items


def sim_trace(items: Sequence[ReplayItem], block_tokens: int) -> Trace:
    """The items as a trace whose prefix ids are their blocks (real-token units)."""
    requests = tuple(
        TraceRequest(i.arrival_s, i.prompt_tokens, i.output_tokens, i.block_ids) for i in items
    )
    return Trace("replay", requests, block_tokens)


class PinnedPolicy:
    """Sends request ``i`` to the node the real fleet's router chose for it (``pinned[i]``,
    a node index): the simulator's engines then see the real fleet's placements, which
    tells engine fidelity apart from routing that diverged."""

    name = "replay_pinned"

    def __init__(self, pinned: Mapping[int, int], names: Sequence[str]) -> None:
        self.pinned = pinned
        self.names = names

    def choose(self, request: RequestView, nodes: Sequence[NodeSnapshot], now: float) -> Decision:
        return Decision(self.names[self.pinned[int(request.request_id)]], "pinned")

    def on_routed(self, request: RequestView, node: str, now: float) -> None:
        pass

    def on_finished(self, request: RequestView, node: str, now: float) -> None:
        pass


def simulate_items(
    items: Sequence[ReplayItem],
    shape: FleetShape,
    block_tokens: int,
    policy: str = "mu_cost",
    pinned: Mapping[int, int] | None = None,
) -> list[Timing]:
    """The items through the fleet simulator configured as the real fleet is.

    ``pinned`` (request index → node index) replaces the policy by the real fleet's own
    placements.
    """
    from mufleet.simulator import run
    from mufleet.simulator.fleet_spec import parse_fleet
    from mufleet.simulator.workload import Workload

    hardware = shape.hardware()
    fleet = parse_fleet(pair=shape.pair, nodes=shape.nodes)
    settings = run.SimSettings(
        max_tokens=None,
        max_num_sequences=shape.max_batch_size,
        time_scale=shape.time_scale,
        scrape_interval_s=shape.scrape_interval_s,
    )
    workload = Workload(
        sim_trace(items, block_tokens), 1.0, pool_block_tokens=hardware.kv_cache.block_tokens
    )
    if pinned is None:
        result = run.simulate(workload, fleet, policy, settings)
    else:
        names = [f"{fleet.groups[0].pair}-{i}" for i in range(fleet.nodes)]
        chosen = PinnedPolicy(pinned, names)
        result = run.simulate(workload, fleet, chosen.name, settings, policy=chosen)
    out = []
    for r in result.requests:
        done = not r.shed and r.finish_s >= 0
        out.append(
            Timing(
                index=r.index,
                arrival_s=r.arrival_s,
                prompt_tokens=r.original_prompt,
                output_tokens=r.total_output if done else 0,
                cached_tokens=r.cached_tokens,
                ttft_s=r.ttft_s if done else None,
                tpot_s=r.tpot_s if done and r.total_output > 1 else None,
                node=str(r.node) if r.node >= 0 else "",
                error=None if done else "shed",
            )
        )
    return out


# -- the real fleet ---------------------------------------------------------------------------


@dataclass
class SimFleet:
    shape: FleetShape
    nodes: list[TritonNode]
    tokenizer_dir: Path
    workdir: Path


@contextmanager
def local_sim_fleet(
    shape: FleetShape,
    tokenizer_dir: Path,
    workdir: Path,
    name: str = "fid",
    overrides: dict[str, Any] | None = None,
) -> Iterator[SimFleet]:
    """``shape.nodes`` sim-engine nodes on ephemeral loopback ports, ready; stopped on exit.
    ``overrides`` are further :class:`RenderParams` fields."""
    params = RenderParams.model_validate(
        {
            "profile": "sim",
            "tokenizer_dir": tokenizer_dir,
            "hardware_profile": resolve_profile(shape.pair),
            "max_batch_size": shape.max_batch_size,
            "time_scale": shape.time_scale,
            "max_context": shape.max_context,
            **(overrides or {}),
        }
    )
    repository = render(params, workdir / f"repo-{name}")
    triton = locate()
    members = [
        TritonNode(
            name=f"{name}{i}",
            repository=repository,
            triton=triton,
            ports=NodePorts.ephemeral(),
            log_path=workdir / "logs" / f"{name}{i}.log",
            fault_file=workdir / "faults" / f"{name}{i}.json",
            extra_args=(f"--exit-timeout-secs={EXIT_TIMEOUT_S}",),
        )
        for i in range(shape.nodes)
    ]
    local = LocalFleet(members=members)
    local.start()
    try:
        local.wait_ready(300)
        yield SimFleet(shape, members, tokenizer_dir, workdir)
    finally:
        for node in members:  # all at once: each takes its exit timeout
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)
        local.stop()


@dataclass
class RouterProcess:
    http: str
    grpc: str
    config: Path
    process: subprocess.Popen[str]
    api_key: str = API_KEY

    def admin(self, path: str) -> Any:
        request = urllib.request.Request(
            f"http://{self.http}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())


def router_config(fleet: SimFleet, ports: NodePorts) -> dict[str, Any]:
    """The router in front of ``fleet``: one reserved interactive tenant, ``mu_cost``, the
    fleet's scrape interval, and no health probes (the simulator runs none without faults:
    a canary every second is an extra sequence on every node)."""
    shape = fleet.shape
    return {
        "listen": {"host": "127.0.0.1", "http_port": ports.http, "grpc_port": ports.grpc},
        "admin_token": ADMIN_TOKEN,
        "tenants": [
            {
                "name": "demo",
                "api_key": API_KEY,
                "tier": "interactive",
                "reserved_mu_s": 100000.0,
            }
        ],
        "models": [
            {
                "name": MODEL,
                "tokenizer_dir": str(fleet.tokenizer_dir),
                "max_context": shape.max_context,
            }
        ],
        "pairs": {shape.pair: str(profiles() / f"{shape.pair}.json")},
        "nodes": [
            {
                "name": node.name,
                "grpc_url": node.grpc_url,
                "http_url": f"http://{node.http_url}",
                "metrics_url": node.metrics_url,
                "pair": shape.pair,
                "models": [MODEL],
            }
            for node in fleet.nodes
        ],
        "policy": {"name": "mu_cost"},
        "scrape": {"interval_s": shape.scrape_interval_s, "timeout_s": 0.5},
        "health": {"enabled": False},
    }


@contextmanager
def router_process(fleet: SimFleet, name: str = "router") -> Iterator[RouterProcess]:
    """``mufleet route`` in front of ``fleet``, once it has scraped every node."""
    ports = NodePorts.ephemeral()
    path = fleet.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(router_config(fleet, ports)))
    (fleet.workdir / "logs").mkdir(parents=True, exist_ok=True)
    log = open(fleet.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "mufleet.cli", "route", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("router ready"):
            raise RuntimeError(f"the router did not start: {line!r}")
        router = RouterProcess(f"127.0.0.1:{ports.http}", f"127.0.0.1:{ports.grpc}", path, process)
        deadline = time.monotonic() + 30
        while True:
            nodes = router.admin("/admin/nodes")["nodes"]
            ages = [n.get("metrics_age_s") for n in nodes]
            if all(a is not None and a < 5 for a in ages):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the router never scraped its nodes: {nodes}")
            time.sleep(0.1)
        yield router
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


_SERIES = re.compile(r"^(nv_trt_llm_\w+)\{([^}]*)\}\s+(\S+)$")


def engine_settings(node: TritonNode) -> dict[str, float]:
    """The engine's own figures from the node's ``/metrics`` (``nv_trt_llm_*``): max
    sequences, KV blocks (max, tokens per block, reused so far)."""
    with urllib.request.urlopen(node.metrics_url, timeout=5) as response:
        text = response.read().decode()
    wanted = {
        ("nv_trt_llm_request_metrics", "request_type", "max"): "max_num_sequences",
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "max"): "kv_blocks",
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "tokens_per"): (
            "kv_block_tokens"
        ),
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "reused"): "kv_reused",
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SERIES.match(line.strip())
        if not match:
            continue
        family, labels, value = match.groups()
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        for (name, key, label), field_name in wanted.items():
            if family == name and pairs.get(key) == label:
                out[field_name] = float(value)
    return out


# -- the client ---------------------------------------------------------------------------------


def _tensor(name: str, array: np.ndarray, dtype: str) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(name, list(array.shape), dtype)
    tensor.set_data_from_numpy(array)
    return tensor


def _inputs(prompt: str, max_tokens: int) -> list[grpcclient.InferInput]:
    return [
        _tensor("text_input", np.array([[prompt.encode()]], dtype=object), "BYTES"),
        _tensor("max_tokens", np.array([[max_tokens]], dtype=np.int32), "INT32"),
        _tensor("stream", np.array([[True]], dtype=bool), "BOOL"),
        _tensor("return_perf_metrics", np.array([[True]], dtype=bool), "BOOL"),
    ]


def _scalar(result: Any, name: str) -> int | None:
    value = result.as_numpy(name)
    return None if value is None or not value.size else int(value.reshape(-1)[0])


async def send_one(
    client: grpcaio.InferenceServerClient,
    prompt: str,
    prompt_tokens: int,
    max_tokens: int,
    *,
    api_key: str | None,
    index: int = 0,
    arrival_s: float = 0.0,
    block_tokens: int = 32,
    t0: float = 0.0,
    timeout_s: float = 600.0,
) -> Timing:
    """One streamed request to ``client`` (the router, or a node when ``api_key`` is None),
    timed from the moment it is sent."""

    async def one() -> AsyncIterator[dict[str, Any]]:
        yield {
            "model_name": FRONT,
            "inputs": _inputs(prompt, max_tokens),
            "outputs": [grpcclient.InferRequestedOutput(n) for n in OUTPUTS],
        }

    headers = {"authorization": f"Bearer {api_key}"} if api_key else None
    sent = time.monotonic()
    first: float | None = None
    last = sent
    tokens = 0
    reused: int | None = None
    perf: dict[str, int] = {}
    node = ""
    error: str | None = None
    try:
        async for result, err in client.stream_infer(
            one(), stream_timeout=timeout_s, headers=headers
        ):
            if err is not None:
                error = str(err)
                break
            now = time.monotonic()
            ids = result.as_numpy("output_ids")
            count = 0 if ids is None else int(ids.size)
            if count:
                first = now if first is None else first
                last = now
                tokens += count
            params = result.get_response().parameters
            if "mufleet_node" in params:
                node = params["mufleet_node"].string_param
            reused = _scalar(result, "kv_cache_reused_blocks") if reused is None else reused
            for name in ("arrival", "first_scheduled", "first_token", "last_token"):
                value = _scalar(result, f"{name}_time_ns")
                if value:
                    perf[name] = value
    except Exception as exc:  # every failure is a result
        error = f"{type(exc).__name__}: {exc}"
    engine: dict[str, float] = {}
    if {"arrival", "first_token"} <= perf.keys():
        arrival = perf["arrival"] / 1e9
        engine["to_engine_s"] = arrival - sent
        engine["ttft_s"] = perf["first_token"] / 1e9 - arrival
        if first is not None:
            engine["from_engine_s"] = first - perf["first_token"] / 1e9
        if "first_scheduled" in perf:
            engine["queue_s"] = perf["first_scheduled"] / 1e9 - arrival
        if "last_token" in perf and tokens > 1:
            engine["tpot_s"] = (perf["last_token"] - perf["first_token"]) / 1e9 / (tokens - 1)
    if error is None and tokens != max_tokens:
        error = f"{tokens} tokens of {max_tokens}"
    cached = min((reused or 0) * block_tokens, max(prompt_tokens - 1, 0))
    return Timing(
        index=index,
        arrival_s=arrival_s,
        prompt_tokens=prompt_tokens,
        output_tokens=tokens,
        cached_tokens=cached,
        ttft_s=None if first is None else first - sent,
        tpot_s=(last - first) / (tokens - 1) if first is not None and tokens > 1 else None,
        node=node,
        error=error,
        lag_s=sent - t0 - arrival_s if t0 else 0.0,
        engine=engine,
    )


async def _replay(
    items: Sequence[ReplayItem], grpc_url: str, api_key: str, block_tokens: int, lead_s: float
) -> list[Timing]:
    client = grpcaio.InferenceServerClient(grpc_url)
    try:
        t0 = time.monotonic() + lead_s

        async def due(item: ReplayItem) -> Timing:
            await asyncio.sleep(max(t0 + item.arrival_s - time.monotonic(), 0.0))
            return await send_one(
                client,
                item.prompt,
                item.prompt_tokens,
                item.output_tokens,
                api_key=api_key,
                index=item.index,
                arrival_s=item.arrival_s,
                block_tokens=block_tokens,
                t0=t0,
            )

        return list(await asyncio.gather(*(due(item) for item in items)))
    finally:
        await client.close()


def replay(
    items: Sequence[ReplayItem],
    router: RouterProcess,
    block_tokens: int = 32,
    lead_s: float = 0.5,
) -> list[Timing]:
    """Send every item at its arrival time (wall clock) to the router; every request's
    :class:`Timing`. ``block_tokens`` is the engines' KV block (reused blocks → tokens)."""
    return asyncio.run(_replay(items, router.grpc, router.api_key, block_tokens, lead_s))


# -- figures --------------------------------------------------------------------------------


def _pct(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values, dtype=float), q)) if values else math.nan


def figures(timings: Sequence[Timing]) -> dict[str, Any]:
    """Percentiles (ms), KV hit rate and counts of one side's requests."""
    ok = [t for t in timings if t.ok]
    ttft = [t.ttft_s for t in ok if t.ttft_s is not None]
    tpot = [t.tpot_s for t in ok if t.tpot_s is not None]
    prompt = sum(t.prompt_tokens for t in ok)
    out: dict[str, Any] = {
        "requests": len(timings),
        "completed": len(ok),
        "errors": sorted({t.error for t in timings if t.error})[:5],
        "kv_hit_rate": sum(t.cached_tokens for t in ok) / prompt if prompt else 0.0,
        "prompt_tokens": prompt,
        "cached_tokens": sum(t.cached_tokens for t in ok),
        "output_tokens": sum(t.output_tokens for t in ok),
        "requests_per_node": sorted(
            (sum(1 for t in ok if t.node == n) for n in {t.node for t in ok}), reverse=True
        ),
    }
    for q in (50, 90, 99):
        out[f"ttft_p{q}_ms"] = 1000 * _pct(ttft, q)
        out[f"tpot_p{q}_ms"] = 1000 * _pct(tpot, q)
    out["ttft_mean_ms"] = 1000 * float(np.mean(ttft)) if ttft else math.nan
    out["tpot_mean_ms"] = 1000 * float(np.mean(tpot)) if tpot else math.nan
    engine = [t.engine for t in ok if t.engine]
    if engine:
        for key in ("to_engine_s", "queue_s", "ttft_s", "from_engine_s", "tpot_s"):
            values = [e[key] for e in engine if key in e]
            name = key.removesuffix("_s")
            for q in (50, 90, 99):
                out[f"engine_{name}_p{q}_ms"] = 1000 * _pct(values, q)
        lag = [t.lag_s for t in timings]
        out["client_lag_p50_ms"] = 1000 * _pct(lag, 50)
        out["client_lag_max_ms"] = 1000 * max(lag)
    return out


def timings_json(timings: Sequence[Timing]) -> list[dict[str, Any]]:
    return [asdict(t) for t in timings]


# -- overheads and settings -------------------------------------------------------------------


async def _sequential(
    url: str,
    prompts: Sequence[tuple[str, int]],
    max_tokens: int,
    api_key: str | None,
) -> list[Timing]:
    client = grpcaio.InferenceServerClient(url)
    try:
        out = []
        for prompt, tokens in prompts:
            out.append(await send_one(client, prompt, tokens, max_tokens, api_key=api_key))
            await asyncio.sleep(0.3)  # the node idle again, never mid-iteration
        return out
    finally:
        await client.close()


def probe_overheads(
    fleet: SimFleet,
    router: RouterProcess,
    tokenizer: Tokenizer,
    *,
    sizes: Sequence[int] = (1, 1024),
    repeats: int = 5,
    seed: int = 10**6,
) -> list[dict[str, Any]]:
    """TTFT of lone requests on the idle fleet, through the router and straight to a node,
    against what the engine alone takes (one prefill iteration × ``time_scale``).

    ``sizes`` are prompt lengths in words (one token each, plus BOS); every prompt is new
    text, so nothing is cached. Each row gives medians in ms: the client's TTFT, the
    emulated iteration, client → engine arrival (router, gRPC, preprocessing), the engine's
    own TTFT, and engine first token → client (postprocessing, relay).
    """
    builder = PromptBuilder(tokenizer, 64, seed=seed)
    step = fleet.shape.hardware().step
    rows = []
    for size in sizes:
        for target in ("router", "node"):
            prompts = []
            for k in range(repeats):
                text = builder.words.text(f"probe:{seed}:{size}:{target}:{k}", size)
                prompts.append((text, len(tokenizer.encode(text, add_special_tokens=True))))
            url, key = (
                (router.grpc, router.api_key)
                if target == "router"
                else (fleet.nodes[0].grpc_url, None)
            )
            timings = asyncio.run(_sequential(url, prompts, 2, key))
            ok = [t for t in timings if t.ok and t.engine]
            expected = step.iteration_s(prompts[0][1], 0, 0) * fleet.shape.time_scale
            row: dict[str, Any] = {
                "target": target,
                "prompt_tokens": prompts[0][1],
                "requests": len(timings),
                "ok": len(ok),
                "expected_engine_ms": 1000 * expected,
            }
            if ok:
                row["ttft_ms"] = 1000 * float(np.median([t.ttft_s for t in ok]))
                for key_name in ("to_engine_s", "ttft_s", "from_engine_s"):
                    values = [t.engine[key_name] for t in ok if key_name in t.engine]
                    row[f"engine_{key_name.removesuffix('_s')}_ms"] = 1000 * float(
                        np.median(values)
                    )
                row["overhead_ms"] = row["ttft_ms"] - row["expected_engine_ms"]
            rows.append(row)
    return rows


def warm_up(fleet: SimFleet, tokenizer: Tokenizer) -> None:
    """One short request straight to every node (first calls of each stub), unique text."""
    builder = PromptBuilder(tokenizer, 64, seed=2 * 10**6)
    for i, node in enumerate(fleet.nodes):
        text = builder.words.text(f"warm:{i}", 8)
        tokens = len(tokenizer.encode(text, add_special_tokens=True))
        asyncio.run(_sequential(node.grpc_url, [(text, tokens)], 2, None))


def _parameter(config: str, key: str) -> str | None:
    match = re.search(rf'key: "{key}" value: {{ string_value: "([^"]*)" }}', config)
    return match.group(1) if match else None


def check_settings(fleet: SimFleet) -> dict[str, Any]:
    """What every node's engine runs (its ``/metrics`` and rendered configuration) against
    what the simulator assumes; ``mismatches`` lists every difference."""
    from mufleet.simulator.node import EngineShape

    shape = fleet.shape
    hardware = shape.hardware()
    assumed = EngineShape.of(
        hardware,
        hardware.kv_cache.block_tokens,
        max_num_sequences=shape.max_batch_size,
        time_scale=shape.time_scale,
    )
    expected = {
        "max_num_sequences": assumed.max_num_sequences,
        "kv_blocks": assumed.kv_tokens // assumed.block_tokens,
        "kv_block_tokens": assumed.block_tokens,
    }
    config = (fleet.nodes[0].repository / "tensorrt_llm" / "config.pbtxt").read_text()
    profile_path = _parameter(config, "hardware_profile") or ""
    served = HardwareProfile.load(Path(profile_path)) if profile_path else None
    rendered = {
        "hardware_profile": profile_path,
        "time_scale": float(_parameter(config, "time_scale") or "nan"),
        "max_num_tokens": served.max_num_tokens if served else None,
        "step": served.step.model_dump() if served else None,
    }
    mismatches = []
    if rendered["time_scale"] != shape.time_scale:
        mismatches.append(f"time_scale {rendered['time_scale']} != {shape.time_scale}")
    if served is None or served.max_num_tokens != assumed.max_num_tokens:
        mismatches.append(
            f"max_num_tokens {rendered['max_num_tokens']} != {assumed.max_num_tokens}"
        )
    if served is None or served.step != hardware.step:
        mismatches.append("step timing differs from the simulator's profile")
    nodes = {}
    for node in fleet.nodes:
        seen = engine_settings(node)
        nodes[node.name] = seen
        for key, value in expected.items():
            if seen.get(key) != value:
                mismatches.append(f"{node.name}: {key} {seen.get(key)} != {value}")
    return {
        "simulator": {**expected, "max_num_tokens": assumed.max_num_tokens},
        "rendered": rendered,
        "nodes": nodes,
        "mismatches": mismatches,
    }
