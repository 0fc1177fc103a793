"""Small generated traces and fleets for the fleet simulator's tests."""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from mufleet.simulator.fleet_spec import FleetSpec, parse_fleet
from mufleet.simulator.run import no_reuse_capacity_rps
from mufleet.simulator.workload import Workload
from mufleet.traces import Trace, load_trace

MakeTrace = Callable[..., Path]


def write_mooncake(
    path: Path,
    n: int = 120,
    rate: float = 5.0,
    seed: int = 0,
    bucket_ms: int | None = None,
    input_range: tuple[int, int] = (200, 3000),
    output_range: tuple[int, int] = (1, 300),
) -> Path:
    """A Mooncake-style JSONL trace: every new conversation starts with block 0 (a shared
    system prompt) and 40% of requests continue an earlier request's prefix."""
    rng = random.Random(seed)
    t = 0.0
    next_id = 1
    earlier: list[list[int]] = []
    with open(path, "w") as f:
        for _ in range(n):
            t += rng.expovariate(rate)
            tokens = rng.randint(*input_range)
            blocks = -(-tokens // 512)
            if earlier and rng.random() < 0.4:
                ids = rng.choice(earlier) + [next_id + j for j in range(blocks)]
            else:
                ids = [0] + [next_id + j for j in range(blocks)]
            ids = ids[:blocks]
            next_id += blocks
            earlier.append(ids)
            ms = int(t * 1000)
            if bucket_ms is not None:
                ms = ms // bucket_ms * bucket_ms
            row = {
                "timestamp": ms,
                "input_length": tokens,
                "output_length": rng.randint(*output_range),
                "hash_ids": ids,
            }
            f.write(json.dumps(row) + "\n")
    return path


@pytest.fixture
def make_trace(tmp_path: Path) -> MakeTrace:
    """``make_trace(name, **write_mooncake options)``: a generated trace file in tmp_path."""

    def make(name: str = "trace.jsonl", **options: object) -> Path:
        return write_mooncake(tmp_path / name, **options)  # type: ignore[arg-type]

    return make


@pytest.fixture(scope="session")
def fleet_of() -> Callable[[int], FleetSpec]:
    cache: dict[int, FleetSpec] = {}

    def get(nodes: int) -> FleetSpec:
        if nodes not in cache:
            cache[nodes] = parse_fleet(None, None, nodes)
        return cache[nodes]

    return get


@pytest.fixture(scope="session")
def sim_trace(tmp_path_factory: pytest.TempPathFactory) -> Trace:
    """60 s of a 300-request conversation trace (about 5 req/s)."""
    path = tmp_path_factory.mktemp("sim-trace") / "conv.jsonl"
    return load_trace(write_mooncake(path, n=300, rate=5.0, seed=1))


def workload_at(trace: Trace, fleet: FleetSpec, load: float, seed: int = 0) -> Workload:
    """``trace`` at ``load`` times the fleet's no-reuse capacity."""
    capacity = no_reuse_capacity_rps(Workload(trace, 1.0), fleet)
    return Workload(trace, load * capacity / trace.rate_rps, seed=seed)


@pytest.fixture(scope="session")
def at_load() -> Callable[..., Workload]:
    return workload_at
