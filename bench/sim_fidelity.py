"""How close the fleet simulator comes to the real local fleet on the same trace slice.

    .venv/bin/python bench/sim_fidelity.py [--out bench/results/sim_fidelity] \
        [--rates 0.5,0.8] [--postprocessing-instances 1,2] [--nodes 4] [--time-scale 50]

One Mooncake window (100 s of trace from t = 600 s by default) is replayed at each rate
multiplier, with real prompt text whose hash ids are shared 64-token blocks
(:mod:`mufleet.trace_prompts`):

* **real**: four sim-engine ``tritonserver`` nodes (Llama-3.1-8B on H100, ``time_scale``
  50, ``max_batch_size`` 16) and the router (``mu_cost``, health probes off) in front, fed
  by an asyncio client over KServe gRPC streaming (:mod:`mufleet.replay`). A new router
  and new block texts for each rate, so neither the router's state nor the nodes' KV
  caches carry over.
* **sim**: :func:`mufleet.simulator.run.simulate` with the same fleet, batch size, time
  scale, scrape interval and requests (token counts as the nodes tokenize them), and its
  spread over arrivals jittered by a few ms (:func:`band`).
* **sim, real placements**: the simulator again, each request pinned to the node the real
  router chose: the engines' fidelity without the routing that diverged.

``--report-from results.json`` recomputes both simulated sides with the simulator as it is
now, from the recorded real runs (their requests and placements), and rewrites the report.

Then, on the idle fleet, lone requests through the router and straight to a node give the
overheads the simulator does not model, and every node's ``/metrics`` is checked against
the engine settings the simulator assumes. Writes ``results.json``, ``cdf.png`` and
``SECTION.md`` into ``--out`` and prints the table.
"""

from __future__ import annotations

import argparse
import json
import math
import random
import sys
import tempfile
import time
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import numpy as np
from sim_fidelity_report import (
    METRICS,
    SIDES,
    diagnosis_table,
    plot,
    section,
    table,
    verdict,
)

from mufleet.replay import (
    DEFAULT_TRACE,
    FleetShape,
    ReplayItem,
    SliceSpec,
    build_items,
    check_settings,
    figures,
    local_sim_fleet,
    probe_overheads,
    replay,
    router_process,
    simulate_items,
    timings_json,
    warm_up,
)
from mufleet.tiny_model import default_model_dir
from mufleet.trace_prompts import load_tokenizer

RESULTS = Path(__file__).parent / "results" / "sim_fidelity"
FLEET = "fid"
"""The real nodes' name prefix (``fid0`` …), which the router reports per request."""


def ratios(sim: dict[str, Any], real: dict[str, Any]) -> dict[str, float]:
    out = {}
    for key in (*METRICS, "kv_hit_rate"):
        a, b = sim.get(key, math.nan), real.get(key, math.nan)
        out[key] = a / b if b else math.nan
    return out


def jittered(items: list[ReplayItem], seed: int, jitter_s: float) -> list[ReplayItem]:
    """Every arrival late by a uniform draw in ``[0, jitter_s]``."""
    rng = random.Random(seed)
    moved = (replace(i, arrival_s=i.arrival_s + rng.uniform(0.0, jitter_s)) for i in items)
    return sorted(moved, key=lambda i: i.arrival_s)


def band(
    items: list[ReplayItem],
    shape: FleetShape,
    block_tokens: int,
    runs: int,
    jitter_s: float,
) -> dict[str, list[float]]:
    """The simulator's own spread: ``runs`` simulations with the arrivals :func:`jittered`
    (by what the client, the router and preprocessing add before a request reaches its
    engine). Routing is discontinuous in its inputs (a scrape a millisecond earlier or later
    flips a near-tie, and the placements drift apart from there), so this is the spread one
    replay of the slice has, however exact the simulator. Per figure: [min, median, max]."""
    rows: dict[str, list[float]] = {k: [] for k in (*METRICS, "kv_hit_rate")}
    for seed in range(runs):
        f = figures(simulate_items(jittered(items, seed, jitter_s), shape, block_tokens))
        for key, values in rows.items():
            values.append(f[key])
    return {k: [min(v), float(np.median(v)), max(v)] for k, v in rows.items()}


def pinned_of(real: list[dict[str, Any]]) -> dict[int, int]:
    """Request index → index of the node the real router chose (``fid2`` → 2)."""
    return {
        t["index"]: int(t["node"].removeprefix(FLEET)) for t in real if t["node"].startswith(FLEET)
    }


def shape_of(config: dict[str, Any]) -> FleetShape:
    return FleetShape(**config["shape"])


def slices_of(config: dict[str, Any], tokenizer: Any) -> dict[float, list[ReplayItem]]:
    """The replayed requests of every rate (a new text seed per rate: no KV hits carry
    over from one rate's run to the next on the same nodes)."""
    slices = {}
    for k, rate in enumerate(config["rates"]):
        spec = SliceSpec(
            trace=Path(config["trace"]),
            start_s=config["window_start_s"],
            duration_s=config["window_s"],
            rate_scale=rate,
            block_tokens=config["block_tokens"],
            max_input_tokens=config["max_input_tokens"],
            max_output_tokens=config["max_output_tokens"],
            max_requests=config.get("max_requests"),
            text_seed=k,
        )
        slices[rate] = build_items(spec, tokenizer)
    return slices


def config_of(args: argparse.Namespace) -> dict[str, Any]:
    shape = FleetShape(
        nodes=args.nodes,
        max_batch_size=args.max_batch_size,
        time_scale=args.time_scale,
        max_context=args.max_context,
        scrape_interval_s=args.scrape_interval,
    )
    return {
        "trace": str(args.trace),
        "window_start_s": args.window_start,
        "window_s": args.window,
        "rates": args.rates,
        "block_tokens": args.block_tokens,
        "max_input_tokens": args.max_input_tokens,
        "max_output_tokens": args.max_output_tokens,
        "max_requests": args.max_requests,
        "shape": asdict(shape),
        "policy": "mu_cost",
        "router_health": "off",
        "band_runs": args.band_runs,
        "band_jitter_s": args.band_jitter,
    }


def add_sim(results: dict[str, Any], slices: dict[float, list[ReplayItem]]) -> None:
    """The simulated side of every run, with the current simulator: free routing and its
    spread (:func:`band`), the real run's placements pinned, and every ratio to real."""
    config = results["config"]
    shape = shape_of(config)
    block = config["block_tokens"]
    runs, jitter = config.get("band_runs", 20), config.get("band_jitter_s", 0.02)
    cache: dict[float, dict[str, Any]] = {}
    for entry in results["runs"]:
        rate = entry["rate_scale"]
        items = slices[rate]
        if rate not in cache:
            cache[rate] = {
                "sim": simulate_items(items, shape, block),
                "sim_band": band(items, shape, block, runs, jitter),
            }
        c = cache[rate]
        pinned = simulate_items(items, shape, block, pinned=pinned_of(entry["timings"]["real"]))
        for side, timings in (("sim", c["sim"]), ("sim_pinned", pinned)):
            entry[side] = figures(timings)
            entry["timings"][side] = timings_json(timings)
        entry["sim_band"] = c["sim_band"]
        entry["band_runs"], entry["band_jitter_s"] = runs, jitter
        entry["ratio"] = {side: ratios(entry[side], entry["real"]) for side in SIDES}


def run(args: argparse.Namespace) -> tuple[dict[str, Any], dict[float, list[ReplayItem]]]:
    config = config_of(args)
    shape = shape_of(config)
    tokenizer_dir = default_model_dir()
    tokenizer = load_tokenizer(tokenizer_dir)
    slices = slices_of(config, tokenizer)
    kv_block = shape.hardware().kv_cache.block_tokens
    runs: list[dict[str, Any]] = []
    probes: dict[int, list[dict[str, Any]]] = {}
    settings: dict[int, dict[str, Any]] = {}
    for instances in args.postprocessing_instances:
        overrides = {"postprocessing_instance_count": instances}
        with (
            tempfile.TemporaryDirectory(prefix="sim-fidelity-") as tmp,
            local_sim_fleet(shape, tokenizer_dir, Path(tmp), FLEET, overrides) as fleet,
        ):
            warm_up(fleet, tokenizer)
            for rate, items in slices.items():
                with router_process(fleet, f"router-{instances}-{rate}") as router:
                    started = time.monotonic()
                    print(
                        f"postprocessing x{instances}, rate x{rate:g}: replaying {len(items)} "
                        f"requests over {items[-1].arrival_s:.0f} s",
                        flush=True,
                    )
                    real = replay(items, router, kv_block)
                    wall = time.monotonic() - started
                    if rate == args.rates[-1] and not args.no_probes:
                        probes[instances] = probe_overheads(fleet, router, tokenizer)
                runs.append(
                    {
                        "postprocessing_instances": instances,
                        "rate_scale": rate,
                        "requests": len(items),
                        "span_s": items[-1].arrival_s,
                        "wall_s": wall,
                        "real": figures(real),
                        "timings": {"real": timings_json(real)},
                    }
                )
            settings[instances] = check_settings(fleet)
    results = {
        "config": config,
        "runs": runs,
        "probes": {str(k): v for k, v in probes.items()},
        "settings": {str(k): v for k, v in settings.items()},
    }
    return results, slices


def recorded(results: dict[str, Any]) -> dict[str, Any]:
    """What ``results.json`` keeps: everything but the simulated per-request timings, which
    ``--report-from`` recomputes (the real runs' stay: their placements pin the simulator's)."""
    runs = [{**r, "timings": {"real": r["timings"]["real"]}} for r in results["runs"]]
    return {**results, "runs": runs}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--trace", type=Path, default=DEFAULT_TRACE)
    p.add_argument("--rates", type=lambda s: [float(x) for x in s.split(",")], default=[0.5, 0.8])
    p.add_argument(
        "--postprocessing-instances",
        type=lambda s: [int(x) for x in s.split(",")],
        default=[1, 2],
        help="one real fleet per value (1 is the repository's default)",
    )
    p.add_argument("--nodes", type=int, default=4)
    p.add_argument("--max-batch-size", type=int, default=16)
    p.add_argument("--time-scale", type=float, default=50.0)
    p.add_argument("--max-context", type=int, default=4096)
    p.add_argument("--scrape-interval", type=float, default=1.0)
    p.add_argument("--window-start", type=float, default=600.0)
    p.add_argument("--window", type=float, default=100.0)
    p.add_argument("--block-tokens", type=int, default=64)
    p.add_argument("--max-input-tokens", type=int, default=3072)
    p.add_argument("--max-output-tokens", type=int, default=256)
    p.add_argument("--max-requests", type=int)
    p.add_argument("--band-runs", type=int, default=20, help="simulations per spread")
    p.add_argument("--band-jitter", type=float, default=0.02, help="arrivals late by [0, this] s")
    p.add_argument("--no-probes", action="store_true")
    p.add_argument(
        "--report-from",
        type=Path,
        help="a results.json: redo the simulated side and the report, start no fleet",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.report_from is not None:
        results = json.loads(args.report_from.read_text())
        results["config"].setdefault("band_runs", args.band_runs)
        results["config"].setdefault("band_jitter_s", args.band_jitter)
        results.setdefault("command", ".venv/bin/python bench/sim_fidelity.py")
        slices = slices_of(results["config"], load_tokenizer(default_model_dir()))
    else:
        started = time.monotonic()
        results, slices = run(args)
        results["bench_wall_s"] = time.monotonic() - started
        given = " ".join(argv if argv is not None else sys.argv[1:])
        results["command"] = f".venv/bin/python bench/sim_fidelity.py {given}".strip()
    add_sim(results, slices)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(json.dumps(recorded(results), default=str))
    plot(results, args.out / "cdf.png")
    (args.out / "SECTION.md").write_text(section(results))
    print(table(results["runs"]))
    print()
    print(diagnosis_table(results["runs"]))
    print()
    print(verdict(results))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
