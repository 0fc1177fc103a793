"""The ``mufleet calibrate`` command, for any argparse command line (``add_commands``).

It measures a running node (gRPC for the load, its ``/metrics`` page for the engine's
configuration and host lag), fits the pair's cost profile and writes it with a report.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from urllib.parse import urlsplit


def default_metrics_url(grpc_url: str) -> str:
    """Triton's metrics page on the same host, at its default port."""
    host = urlsplit(f"//{grpc_url}").hostname or "127.0.0.1"
    return f"http://{host}:8002/metrics"


def cmd_calibrate(args: argparse.Namespace) -> int:
    from mufleet.calibration.report import write_report
    from mufleet.calibration.run import CalibrationSettings, Calibrator
    from mufleet.calibration.server_facts import server_facts
    from mufleet.calibration.workload import FULL_SWEEP, QUICK_SWEEP
    from mufleet.tiny_model import CORPUS_PATH, default_model_dir
    from router.cost_model import SLO, PairProfile

    facts = server_facts(args.url, args.model)
    settings = CalibrationSettings(
        url=args.url,
        metrics_url=args.metrics_url or default_metrics_url(args.url),
        engine_model=args.model,
        pair=args.pair,
        slo=SLO(ttft_p99_s=args.slo_ttft_p99_ms / 1e3, tpot_p99_s=args.slo_tpot_p99_ms / 1e3),
        tokenizer_dir=args.tokenizer_dir or default_model_dir(),
        corpus=CORPUS_PATH,
        sweep=QUICK_SWEEP if args.quick else FULL_SWEEP,
        block_tokens=facts.block_tokens,
        hardware=args.hardware or facts.hardware,
        model_name=args.model_name or facts.model,
        reference=PairProfile.load(args.reference) if args.reference else None,
    )
    calibration = Calibrator(settings, progress=lambda line: print(line, flush=True)).calibrate()
    out = args.out or Path("profiles") / f"{args.pair}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    calibration.profile.save(out)
    report = write_report(calibration, args.report_dir or out.with_suffix("") / "report")
    print(f"profile: {out}\nreport:  {report}")
    return 0


def add_commands(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    cal = sub.add_parser(
        "calibrate",
        help="measure a running server and fit its MU cost profile",
        description="Finds the node's SLO-bounded capacity on the standard mix, sweeps "
        "request shapes at that load, fits the cost model and writes the pair's profile "
        "(with the engine configuration it was measured under) plus a report. Load goes to "
        "the engine model as token ids, timed by the engine's own perf metrics; a sim engine "
        "that falls behind its emulated timeline is slowed down and the point measured again.",
    )
    cal.add_argument("--url", required=True, help="gRPC HOST:PORT of the server")
    cal.add_argument(
        "--metrics-url", help="its Prometheus page (default: http://HOST:8002/metrics)"
    )
    cal.add_argument("--model", default="tensorrt_llm", help="the engine model")
    cal.add_argument("--pair", required=True, help="name of the (model, hardware) pair")
    cal.add_argument("--out", type=Path, help="profile path (default profiles/PAIR.json)")
    cal.add_argument("--report-dir", type=Path, help="default: next to the profile")
    cal.add_argument("--slo-ttft-p99-ms", type=float, default=1000.0)
    cal.add_argument("--slo-tpot-p99-ms", type=float, default=30.0)
    cal.add_argument("--tokenizer-dir", type=Path, help="the server's tokenizer")
    cal.add_argument("--reference", type=Path, help="reference pair profile (MU/s scale)")
    cal.add_argument("--hardware", help="hardware name (sim servers report their own)")
    cal.add_argument("--model-name", help="model name (sim servers report their own)")
    cal.add_argument("--quick", action="store_true", help="fewer request classes")
    cal.set_defaults(func=cmd_calibrate)
