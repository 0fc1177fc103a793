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


def summary(results: list[Calibration]) -> str:
    lines = [
        "| pair | capacity (MU/s) | req/s at capacity | concurrency | base (ms) "
        "| prefill (µs/tok) | decode (ms/tok) | context (ns/tok²) | MAPE busy | MAPE capacity |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for cal in results:
        p, c, f = cal.profile, cal.profile.coefficients, cal.profile.fit
        assert f is not None
        lines.append(
            f"| `{p.pair}` | {p.capacity_mu_s:.0f} | {p.capacity_rps:.2f} | "
            f"{p.capacity_concurrency} | {c.base_s * 1e3:.2f} | {c.prefill_token_s * 1e6:.2f} | "
            f"{c.output_token_s * 1e3:.3f} | {c.context_output_s * 1e9:.3f} | "
            f"{f.mape_busy_pct:.1f}% | {f.mape_capacity_pct:.1f}% |"
        )
    return "\n".join(lines)


def plot(results: list[Calibration], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r.profile.pair for r in results]
    fig, (cap, err) = plt.subplots(1, 2, figsize=(12, 4.5))
    cap.barh(names, [r.profile.capacity_mu_s for r in results], color="tab:green")
    cap.set(xlabel="capacity (MU/s; reference = 1000)", title="Capacity at the SLO")
    y = range(len(results))
    err.barh(
        [i - 0.2 for i in y],
        [r.profile.fit.mape_busy_pct for r in results if r.profile.fit],
        height=0.4,
        label="busy time, held-out classes",
    )
    err.barh(
        [i + 0.2 for i in y],
        [r.profile.fit.mape_capacity_pct for r in results if r.profile.fit],
        height=0.4,
        label="capacity, held-out mix",
    )
    err.axvline(10, color="red", ls="--", lw=1, label="10%")
    err.set(yticks=list(y), yticklabels=names, xlabel="MAPE (%)", title="Prediction error")
    err.legend(fontsize=8)
    for ax in (cap, err):
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


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
    results: list[Calibration] = []
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
                profiles = {pair: [r.profile for r in cals] for pair, cals in runs_by_pair.items()}
                (args.out / "reproducibility.md").write_text(table(profiles) + "\n")
        cal = runs[0]
        reference = reference or cal.profile
        cal.profile.save(args.profiles_dir / f"{spec.name}.json")
        write_report(cal, args.profiles_dir / spec.name / "report")
        results.append(cal)
        (args.out / "summary.md").write_text(summary(results) + "\n")
        plot(results, args.out / "summary.png")
    print(summary(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
