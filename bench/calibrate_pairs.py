"""Calibrate several (model, hardware) pairs side by side, first one as the MU reference.

    python bench/calibrate_pairs.py                     # the shipped sim pairs + the cpu engine
    python bench/calibrate_pairs.py --pairs sim:llama-3.1-8b_h100-sxm_tp1 cpu --repeat 3

Each pair is served by a fresh local node (``sim:PROFILE:TIME_SCALE`` or ``cpu``),
calibrated with ``mufleet calibrate``'s procedure, and written to ``profiles/PAIR.json``
with its report. The summary (Markdown table + a capacity/MAPE plot) goes to
``bench/results/calibration/``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from calibration_repro import table
from calibration_summary import plot, summary

from mufleet.calibration.report import write_report
from mufleet.calibration.run import Calibration, CalibrationSettings, Calibrator
from mufleet.calibration.server_facts import server_facts
from mufleet.calibration.workload import FULL_SWEEP, QUICK_SWEEP
from mufleet.node import NodePorts, TritonNode
from mufleet.repository import RenderParams, render_cached
from mufleet.tiny_model import CORPUS_PATH, default_model_dir
from mufleet.triton_dist import locate
from python_backends.sim_engine.hardware import HardwareProfile, resolve_profile
from router.cost_model import SLO, PairProfile

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PAIRS = (
    "sim:llama-3.1-8b_h100-sxm_tp1",
    "sim:llama-3.1-70b_h100-sxm_tp4",
    "sim:llama-3.1-8b_a100-sxm-80gb_tp1",
    "sim:llama-3.1-8b_h200-sxm_tp1",
    "sim:llama-3.1-70b_h100-sxm_tp8",
    "cpu",
)
"""Each node starts as ``mufleet triton --profile sim --hardware-profile P`` starts it (time
scale 1, the profile's engine limits); the calibration slows the emulation by itself
wherever the host falls behind."""


@dataclass(frozen=True)
class PairSpec:
    name: str
    params: RenderParams


def parse_pair(text: str, tokenizer_dir: Path) -> PairSpec:
    """``cpu`` or ``sim:PROFILE[:TIME_SCALE]``."""
    if text == "cpu":
        return PairSpec(
            "tiny-llama_cpu-2core", RenderParams(profile="cpu", tokenizer_dir=tokenizer_dir)
        )
    kind, _, rest = text.partition(":")
    if kind != "sim" or not rest:
        raise SystemExit(f"pair {text!r}: expected 'cpu' or 'sim:PROFILE[:TIME_SCALE]'")
    name, _, scale = rest.partition(":")
    path = resolve_profile(name)
    hardware = HardwareProfile.load(path)
    params = RenderParams(
        profile="sim",
        tokenizer_dir=tokenizer_dir,
        hardware_profile=path.resolve(),
        max_context=hardware.max_context,
        time_scale=float(scale or 1.0),
    )
    return PairSpec(hardware.name, params)


def calibrate_pair(
    spec: PairSpec, slo: SLO, reference: PairProfile | None, quick: bool, out_dir: Path
) -> Calibration:
    node = TritonNode(
        name=f"calibrate-{spec.name}",
        repository=render_cached(spec.params),
        triton=locate(),
        ports=NodePorts.ephemeral(),
        log_path=out_dir / "logs" / f"{spec.name}.log",
    )
    node.start()
    try:
        node.wait_ready()
        facts = server_facts(node.grpc_url)
        settings = CalibrationSettings(
            url=node.grpc_url,
            metrics_url=node.metrics_url,
            pair=spec.name,
            slo=slo,
            tokenizer_dir=spec.params.tokenizer_dir,
            corpus=CORPUS_PATH,
            sweep=QUICK_SWEEP if quick else FULL_SWEEP,
            block_tokens=facts.block_tokens,
            hardware=facts.hardware,
            model_name=facts.model,
            reference=reference,
        )
        return Calibrator(settings, progress=lambda line: print(line, flush=True)).calibrate()
    finally:
        node.stop()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", nargs="+", default=list(DEFAULT_PAIRS))
    parser.add_argument("--slo-ttft-p99-ms", type=float, default=1000.0)
    parser.add_argument("--slo-tpot-p99-ms", type=float, default=30.0)
    parser.add_argument("--full", action="store_true", help="the full sweep (slower)")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="calibrations per pair, each on a fresh node; the first is saved as the profile "
        "and the spread goes to reproducibility.md",
    )
    parser.add_argument(
        "--reference",
        type=Path,
        help="an existing reference profile (default: the first pair is the reference)",
    )
    parser.add_argument("--profiles-dir", type=Path, default=ROOT / "profiles")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "calibration")
    args = parser.parse_args(argv)
    slo = SLO(ttft_p99_s=args.slo_ttft_p99_ms / 1e3, tpot_p99_s=args.slo_tpot_p99_ms / 1e3)
    tokenizer_dir = default_model_dir()
    results: list[PairProfile] = []
    runs_by_pair: dict[str, list[Calibration]] = {}
    reference = PairProfile.load(args.reference) if args.reference else None
    args.out.mkdir(parents=True, exist_ok=True)
    args.profiles_dir.mkdir(parents=True, exist_ok=True)
    if args.repeat > 1:
        (args.out / "runs").mkdir(exist_ok=True)
    for k, text in enumerate(args.pairs, start=1):
        spec = parse_pair(text, tokenizer_dir)
        runs = runs_by_pair.setdefault(spec.name, [])
        for repeat in range(1, args.repeat + 1):
            print(f"=== pair {k}/{len(args.pairs)}: {spec.name}, run {repeat}/{args.repeat}")
            runs.append(calibrate_pair(spec, slo, reference, not args.full, args.out))
            if args.repeat > 1:
                runs[-1].profile.save(args.out / "runs" / f"{spec.name}-{repeat}.json")
                spreads = {pair: [r.profile for r in cals] for pair, cals in runs_by_pair.items()}
                (args.out / "reproducibility.md").write_text(table(spreads) + "\n")
        cal = runs[0]
        reference = reference or cal.profile
        cal.profile.save(args.profiles_dir / f"{spec.name}.json")
        write_report(cal, args.profiles_dir / spec.name / "report")
        results.append(cal.profile)
        (args.out / "summary.md").write_text(summary(results) + "\n")
        plot(results, args.out / "summary.png")
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
