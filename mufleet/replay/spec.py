"""What is replayed: the fleet's shape, the trace slice, the requests with their text, and
their run through the fleet simulator."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from mufleet.trace_prompts import PromptBuilder, Tokenizer
from mufleet.traces import Trace, TraceRequest, load_trace
from python_backends.sim_engine.hardware import HardwareProfile, resolve_profile
from router.policies import Decision, NodeSnapshot, RequestView

PAIR = "llama-3.1-8b_h100-sxm_tp1"
MODEL = "tiny-llama"
FRONT = "ensemble"
API_KEY = "key-replay-0123456789"
ADMIN_TOKEN = "replay-admin-token-0123456789"
DEFAULT_TRACE = (
    Path(__file__).resolve().parents[3]
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
