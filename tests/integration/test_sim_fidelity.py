"""The fleet simulator against a real two-node sim fleet, on one small Mooncake slice.

A small version of ``bench/sim_fidelity.py``: 40 trace requests with real prompt text go
through two sim-engine nodes and the router, and through the simulator configured the same
way. What is asserted is what could fail without being timing-fragile: every request
completes on both sides with its whole output, both see KV hits from the trace's shared
prefixes, and the two TTFT medians are within a factor of two of each other.

Why a factor of two and not the bench's 15%: 40 requests are too few for a stable median
(TTFT is bimodal here: short prompts a few hundred ms, long ones several times that), and
the live router's placements drift away from the simulated router's after the first
near-tie (a scrape a few ms apart), which moves single TTFTs by whole prefill iterations.
A broken simulator or fleet misses by far more: a time scale not applied is 12.5x off, a
KV pool or batch limit that differs turns queueing on or off, and a unit error is 1000x.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from synthetic_trace import mooncake_trace

from mufleet.replay import (
    FleetShape,
    SliceSpec,
    build_items,
    figures,
    local_sim_fleet,
    replay,
    router_process,
    simulate_items,
)
from mufleet.trace_prompts import load_tokenizer

pytestmark = pytest.mark.triton

SHAPE = FleetShape(nodes=2, max_batch_size=8, time_scale=12.5)
"""Two nodes each fed ~20 emulated requests/s: busy, with queueing, not overloaded."""
SLICE = SliceSpec(
    start_s=600.0,
    duration_s=60.0,
    rate_scale=1.0,
    max_requests=40,
    max_input_tokens=1536,
    max_output_tokens=48,
)


def test_simulator_tracks_the_real_fleet(tiny_model_dir: Path, tmp_path: Path) -> None:
    spec = dataclasses.replace(SLICE, trace=mooncake_trace(tmp_path))
    items = build_items(spec, load_tokenizer(tiny_model_dir))
    assert len(items) == 40
    simulated = simulate_items(items, SHAPE, spec.block_tokens)
    # Two postprocessing instances: with one, a streamed response can wait for the next
    # batch of tokens (bench/results/sim_fidelity/SECTION.md), which the simulator does not
    # model.
    overrides = {"postprocessing_instance_count": 2}
    with (
        local_sim_fleet(SHAPE, tiny_model_dir, tmp_path, overrides=overrides) as fleet,
        router_process(fleet) as router,
    ):
        real = replay(items, router)

    sim_f, real_f = figures(simulated), figures(real)
    assert real_f["completed"] == len(items), real_f["errors"]
    assert sim_f["completed"] == len(items), sim_f["errors"]
    # Every real request streamed exactly its max_tokens (send_one records a shortfall).
    assert sum(t.output_tokens for t in real) == sum(i.output_tokens for i in items)
    assert sim_f["prompt_tokens"] == real_f["prompt_tokens"]

    assert real_f["kv_hit_rate"] > 0 and sim_f["kv_hit_rate"] > 0, (real_f, sim_f)
    assert 0.5 <= sim_f["kv_hit_rate"] / real_f["kv_hit_rate"] <= 2.0, (real_f, sim_f)

    ratio = sim_f["ttft_p50_ms"] / real_f["ttft_p50_ms"]
    assert 0.5 <= ratio <= 2.0, (sim_f["ttft_p50_ms"], real_f["ttft_p50_ms"])
