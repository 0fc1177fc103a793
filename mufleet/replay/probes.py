"""What explains a gap between the two sides: overheads, warm-up and the engines' settings."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tritonclient.grpc.aio as grpcaio

from mufleet.replay.client import send_one
from mufleet.replay.fleet import RouterProcess, SimFleet, engine_settings
from mufleet.replay.spec import Timing
from mufleet.trace_prompts import PromptBuilder, Tokenizer
from python_backends.sim_engine.hardware import HardwareProfile

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
