"""Synthetic fleets and traffic for tests, benchmarks and examples (pure, seeded).

Not a workload model to draw conclusions from — the fleet simulator replays real traces —
but realistic in the shapes a policy's hot path cares about: prompts of 100–4000 tokens,
multi-turn sessions whose prompts grow by their previous turn (so their blocks repeat),
a few shared system prompts, several hardware pairs with different capacities.
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from router.policies.base import NodeSnapshot, NodeState, RequestView
from router.policies.prefix import block_hashes

__all__ = ["MODEL", "PAIRS", "PairCost", "SyntheticTraffic", "make_node", "synthetic_fleet"]

MODEL = "llama-3.1-8b"


@dataclass(frozen=True)
class PairCost:
    """A toy linear price: ``MU = capacity · (base + prefill · P + output · E)``."""

    capacity_mu_s: float
    base_s: float
    prefill_token_s: float
    output_token_s: float

    def mu(self, prompt_tokens: int, expected_output: float) -> float:
        busy = (
            self.base_s
            + self.prefill_token_s * prompt_tokens
            + self.output_token_s * expected_output
        )
        return self.capacity_mu_s * busy


PAIRS: Mapping[str, PairCost] = {
    f"{MODEL}@h100": PairCost(1000.0, 2e-3, 1.7e-5, 1.1e-4),
    f"{MODEL}@a100": PairCost(620.0, 3e-3, 2.9e-5, 1.7e-4),
    f"{MODEL}@l40s": PairCost(450.0, 4e-3, 4.4e-5, 2.3e-4),
}


def make_node(
    name: str,
    *,
    pair: str = f"{MODEL}@h100",
    capacity_mu_s: float = 1000.0,
    models: frozenset[str] | set[str] | tuple[str, ...] = (MODEL,),
    state: NodeState = NodeState.HEALTHY,
    inflight_mu: float = 0.0,
    inflight_requests: int = 0,
    queued_requests: int = 0,
    kv_used_fraction: float = 0.0,
    metrics_age_s: float = 0.0,
    reserved_mu: float = 0.0,
    trust: float = 1.0,
) -> NodeSnapshot:
    """A snapshot with test-friendly defaults (one model, reference capacity, idle)."""
    return NodeSnapshot(
        name=name,
        pair=pair,
        models=frozenset(models),
        capacity_mu_s=capacity_mu_s,
        state=state,
        inflight_mu=inflight_mu,
        inflight_requests=inflight_requests,
        queued_requests=queued_requests,
        kv_used_fraction=kv_used_fraction,
        metrics_age_s=metrics_age_s,
        reserved_mu=reserved_mu,
        trust=trust,
    )


def synthetic_fleet(
    n: int, *, seed: int = 0, model: str = MODEL, pairs: Mapping[str, PairCost] = PAIRS
) -> list[NodeSnapshot]:
    """``n`` healthy nodes spread over ``pairs``, with some random load."""
    rng = random.Random(seed)
    names = list(pairs)
    nodes = []
    for i in range(n):
        pair = names[i % len(names)]
        cap = pairs[pair].capacity_mu_s
        inflight = rng.randint(0, 24)
        nodes.append(
            make_node(
                f"node-{i:04d}",
                pair=pair,
                capacity_mu_s=cap,
                models=(model,),
                inflight_mu=inflight * rng.uniform(50.0, 400.0),
                inflight_requests=inflight,
                queued_requests=rng.choice((0, 0, 0, 1, 2)),
                kv_used_fraction=rng.random(),
                metrics_age_s=rng.uniform(0.0, 2.0),
            )
        )
    return nodes


@dataclass
class _Session:
    session_id: str
    tenant: str
    tokens: list[int] = field(default_factory=list)


class SyntheticTraffic:
    """An endless, seeded stream of :class:`RequestView` s.

    Each request continues an open session (its prompt is the previous prompt, the previous
    answer and a new user turn) with probability ``continue_p``, else opens a new session
    whose prompt starts with one of ``system_prompts`` shared prefixes. Prompts stay within
    ``min_prompt``–``max_prompt`` tokens (a session that would outgrow it is closed).
    """

    def __init__(
        self,
        *,
        seed: int = 0,
        model: str = MODEL,
        pairs: Mapping[str, PairCost] = PAIRS,
        block_size: int = 16,
        min_prompt: int = 100,
        max_prompt: int = 4000,
        open_sessions: int = 256,
        continue_p: float = 0.6,
        system_prompts: int = 4,
        tenants: int = 16,
        vocab: int = 32_000,
    ) -> None:
        self._rng = random.Random(seed)
        self.model = model
        self.pairs = pairs
        self.block_size = block_size
        self.min_prompt = min_prompt
        self.max_prompt = max_prompt
        self.open_sessions = open_sessions
        self.continue_p = continue_p
        self.tenants = tenants
        self.vocab = vocab
        rng = self._rng
        self._systems = [self._tokens(rng.randint(64, 512)) for _ in range(system_prompts)]
        self._sessions: list[_Session] = []
        self._count = 0

    def _tokens(self, n: int) -> list[int]:
        rand = self._rng.randrange
        return [rand(self.vocab) for _ in range(n)]

    def _new_session(self) -> _Session:
        rng = self._rng
        session = _Session(f"s{self._count}", f"tenant-{rng.randrange(self.tenants)}")
        system = rng.choice(self._systems)
        total = rng.randint(max(self.min_prompt, len(system) + 1), self.max_prompt)
        session.tokens = system + self._tokens(total - len(system))
        return session

    def next(self) -> RequestView:
        rng = self._rng
        session: _Session | None = None
        if self._sessions and rng.random() < self.continue_p:
            k = rng.randrange(len(self._sessions))
            candidate = self._sessions[k]
            grow = rng.randint(50, 400)
            if len(candidate.tokens) + grow <= self.max_prompt:
                candidate.tokens = candidate.tokens + self._tokens(grow)
                session = candidate
            else:
                self._sessions.pop(k)
        if session is None:
            session = self._new_session()
            self._sessions.append(session)
            if len(self._sessions) > self.open_sessions:
                self._sessions.pop(0)
        self._count += 1
        prompt = len(session.tokens)
        max_tokens = rng.choice((128, 256, 512, 1024))
        expected = 0.3 * max_tokens
        return RequestView(
            request_id=f"req-{self._count}",
            tenant=session.tenant,
            model=self.model,
            prompt_tokens=prompt,
            max_tokens=max_tokens,
            mu_by_pair={p: c.mu(prompt, expected) for p, c in self.pairs.items()},
            session_id=session.session_id,
            block_hashes=block_hashes(session.tokens, self.block_size),
            block_size=self.block_size,
        )

    def __iter__(self) -> Iterator[RequestView]:
        while True:
            yield self.next()

    def take(self, n: int) -> list[RequestView]:
        return [self.next() for _ in range(n)]
