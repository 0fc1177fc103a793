"""The ``mufleet load`` command, for any argparse command line (``add_commands``).

It runs Locust headless (one process, or a master and ``--workers`` workers) on the
``loadtests/`` locustfile, scrapes the router's ``/metrics`` every second meanwhile, sets
and clears a node's fault for the ``failover`` scenario, then writes the report folder.
Against the local fleet everything comes from ``$MUFLEET_HOME/router.yaml``: the router's
address, the nodes, the tenant keys (read by the Locust processes from the file, never
passed on a command line) and the calibrated capacity.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from mufleet.load.faults import FaultTimer
from mufleet.load.fleet_info import (
    FleetInfo,
    default_config_path,
    fault_file,
    kv_reused_tokens,
    time_scale,
)
from mufleet.load.locust_run import LocustPlan, LocustRun, free_port
from mufleet.load.metrics import ERROR_KINDS, Slo
from mufleet.load.report import (
    FaultWindow,
    RunContext,
    build_report,
    load_context,
    save_context,
)
from mufleet.load.scenarios import DEFAULT_TRACE, SCENARIOS
from mufleet.load.scrape import RouterScraper, write_samples
from mufleet.load.shapes import build_schedule


def _seconds(text: str) -> float:
    """``90``, ``90s``, ``2m`` → seconds."""
    scale = {"s": 1.0, "m": 60.0, "h": 3600.0}.get(text[-1:].lower(), 0.0)
    try:
        value = float(text[:-1]) * scale if scale else float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a duration: {text!r} (try 90, 90s or 2m)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a duration must be positive, got {text!r}")
    return value


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``load`` on ``subparsers``."""
    p = subparsers.add_parser(
        "load",
        help="run a Locust load scenario against a fleet and write a report folder",
        description="Runs Locust headless against the local fleet (or --host), then writes "
        "Locust's CSVs and HTML report, per-request LLM records and the PNG plots.",
    )
    p.add_argument("--scenario", choices=sorted(SCENARIOS))
    p.add_argument("--users", type=int, help="users (steady), last step, spike peak or pool")
    p.add_argument("--spawn-rate", type=float, default=4.0, help="users started per second")
    p.add_argument("--duration", type=_seconds, default=60.0, help="e.g. 90, 90s, 2m")
    p.add_argument("--shape", choices=("steady", "step", "spike"), help="agentic/mixed shape")
    p.add_argument("--steps", type=int, default=6, help="step shape: number of steps")
    p.add_argument("--host", help="base URL (default: the router in --router-config)")
    p.add_argument("--target", choices=("openai", "kserve", "direct"), default="openai")
    p.add_argument("--nodes", default="", help="direct target: node URLs, comma-separated")
    p.add_argument("--grpc-url", default="", help="TritonGrpcUser HOST:PORT")
    p.add_argument("--router-config", type=Path, help="default: $MUFLEET_HOME/router.yaml")
    p.add_argument("--metrics-url", help="router /metrics (default: the router's)")
    p.add_argument("--out", type=Path, help="report folder (default: load-results/…)")
    p.add_argument("--workers", type=int, default=0, help="Locust worker processes (0: one)")
    p.add_argument("--classes", nargs="+", help="user classes instead of the scenario's")
    p.add_argument("--tenants", default="", help="CLASS=TENANT,… (default: built in)")
    p.add_argument("--slo-ttft-ms", type=float, default=1000.0)
    p.add_argument("--slo-tpot-ms", type=float, default=50.0)
    p.add_argument("--slo-e2e-ms", type=float, default=0.0, help="0: not checked")
    p.add_argument("--request-timeout", type=float, default=60.0, help="seconds per request")
    p.add_argument("--trace", type=Path, help="trace file (default: the shared Mooncake slice)")
    p.add_argument("--trace-start", type=float, default=0.0, help="trace seconds to start at")
    p.add_argument("--rate-scale", type=float, default=1.0, help="trace arrival-rate scale")
    p.add_argument("--block-tokens", type=int, default=32, help="tokens per trace block")
    p.add_argument("--max-input", type=int, default=1536, help="trace prompt token cap")
    p.add_argument("--max-output", type=int, default=128, help="trace output token cap")
    p.add_argument("--fault-node", help="failover: node to hang (default: the last)")
    p.add_argument("--fault-at", type=float, help="failover: test second (default: half-way)")
    p.add_argument("--fault-for", type=float, help="failover: seconds hung (default: a quarter)")
    p.add_argument(
        "--expect-errors",
        default="rate_limited",
        help="error kinds that do not fail the command (comma-separated; '' for none); "
        f"kinds: {', '.join(k.value for k in ERROR_KINDS)}",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--report-from",
        type=Path,
        metavar="DIR",
        help="draw the report of an earlier run's folder again (runs nothing)",
    )
    p.set_defaults(func=cmd_load)


def _llm_args(
    args: argparse.Namespace,
    fleet: FleetInfo | None,
    shape: str,
    classes: tuple[str, ...],
    out: Path,
) -> list[str]:
    values: dict[str, object] = {
        "target": args.target,
        "shape": shape,
        "steps": args.steps,
        "out": out,
        "slo-ttft-ms": args.slo_ttft_ms,
        "slo-tpot-ms": args.slo_tpot_ms,
        "slo-e2e-ms": args.slo_e2e_ms,
        "request-timeout": args.request_timeout,
        "seed": args.seed,
    }
    if fleet is not None:
        values["router-config"] = fleet.config_path
        values["model"] = fleet.model
    for key, value in (
        ("nodes", args.nodes),
        ("grpc-url", args.grpc_url),
        ("tenants", args.tenants),
    ):
        if value:
            values[key] = value
    if shape == "trace" or "TraceReplayUser" in classes:
        trace = args.trace or DEFAULT_TRACE
        if not trace.exists():
            raise SystemExit(f"mufleet load: no trace file {trace}; pass --trace")
        values.update(
            {
                "trace": trace.resolve(),
                "trace-start": args.trace_start,
                "rate-scale": args.rate_scale,
                "block-tokens": args.block_tokens,
                "max-input": args.max_input,
                "max-output": args.max_output,
            }
        )
    out_args = []
    for key, value in values.items():
        out_args += [f"--llm-{key}", str(value)]
    return out_args


def _fleet(args: argparse.Namespace) -> FleetInfo | None:
    from router.config import ConfigError

    path = args.router_config or default_config_path()
    if not path.exists():
        if args.router_config is not None or args.host is None:
            raise SystemExit(
                f"mufleet load: no router configuration at {path}; run `mufleet "
                "up` first, or pass --host (and MUFLEET_API_KEY for its keys)"
            )
        return None
    try:
        return FleetInfo.load(path)
    except ConfigError as exc:
        raise SystemExit(f"mufleet load: {exc}") from None


def _capacity(fleet: FleetInfo | None) -> tuple[float | None, str]:
    """The fleet's calibrated MU per wall-clock second, and how it was reached."""
    if fleet is None or not fleet.nodes:
        return None, ""
    scales = [time_scale(n) or 1.0 for n in fleet.nodes]
    total = sum(n.capacity_mu_s / s for n, s in zip(fleet.nodes, scales, strict=True))
    parts = {f"{n.capacity_mu_s:g} MU/s" for n in fleet.nodes}
    note = f" ({len(fleet.nodes)} nodes × {' / '.join(sorted(parts))}"
    if any(s != 1.0 for s in scales):
        note += f", sims at time scale {' / '.join(sorted({f'{s:g}' for s in scales}))}"
    return total, note + ")"


def _report(out: Path, ctx: RunContext) -> int:
    report = build_report(out, ctx)
    total = report.total
    print(
        f"requests {total.requests}, ok {total.ok}, errors {total.errors or 'none'}; "
        f"TTFT p50/p99 {total.ttft_ms.get(50) or 0:.0f}/{total.ttft_ms.get(99) or 0:.0f} ms; "
        f"{total.output_token_rate:.0f} output tok/s; SLO attained "
        f"{100 * (total.slo_attainment or 0):.1f}%\nreport: {report.path}"
    )
    if report.unexpected_failures:
        print(f"mufleet load: {report.unexpected_failures} unexpected failures", file=sys.stderr)
        return 1
    return 0


def _slo(args: argparse.Namespace) -> Slo:
    def seconds(ms: float) -> float | None:
        return ms / 1e3 if ms > 0 else None

    return Slo(seconds(args.slo_ttft_ms), seconds(args.slo_tpot_ms), seconds(args.slo_e2e_ms))


def _run(
    plan: LocustPlan, scraper: RouterScraper | None, timer: FaultTimer | None, timeout_s: float
) -> int:
    """Locust's exit code; the scrape and the fault timeline end with it, whatever happens."""
    run = LocustRun(plan)
    if scraper:
        scraper.start()
    run.start()
    if timer:
        timer.start()
    try:
        return run.wait(timeout_s=timeout_s)
    except KeyboardInterrupt:
        run.stop()
        return run.wait(timeout_s=60)
    finally:
        if timer:
            timer.stop()
        if scraper:
            scraper.stop()
            write_samples(plan.out_dir / "router_metrics.csv", scraper.samples)


def cmd_load(args: argparse.Namespace) -> int:
    if args.report_from is not None:
        return _report(args.report_from, load_context(args.report_from / "run.json"))
    if args.scenario is None:
        raise SystemExit("mufleet load: --scenario is required (or --report-from DIR)")
    scenario = SCENARIOS[args.scenario]
    shape = "trace" if scenario.shape == "trace" else (args.shape or scenario.shape)
    users = args.users or scenario.users
    fleet = _fleet(args)
    host = args.host or (fleet.router_http if fleet else None)
    if host is None:
        raise SystemExit("mufleet load: pass --host")
    if args.target == "direct" and not args.host and fleet and fleet.nodes:
        host = fleet.nodes[0].http_url
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = (args.out or Path("load-results") / f"{args.scenario}-{stamp}").resolve()
    out.mkdir(parents=True, exist_ok=True)
    schedule_args: dict[str, Any] = {
        "shape": shape,
        "users": users,
        "spawn_rate": args.spawn_rate,
        "duration_s": args.duration,
        "steps": args.steps,
    }
    schedule = build_schedule(**schedule_args)
    classes = tuple(args.classes or scenario.classes)
    plan = LocustPlan(
        host=host,
        users=users,
        spawn_rate=args.spawn_rate,
        duration_s=args.duration,
        out_dir=out,
        classes=classes,
        llm_args=tuple(_llm_args(args, fleet, shape, classes, out)),
        workers=args.workers,
        master_port=free_port() if args.workers else 5557,
        stop_timeout_s=min(args.request_timeout, 30.0),
    )
    command = " ".join(shlex.quote(a) for a in ["mufleet", *sys.argv[1:]])
    (out / "command.txt").write_text(command + "\n")
    metrics_url = args.metrics_url or (
        f"{fleet.router_http}/metrics"
        if fleet
        else (None if args.target == "direct" else f"{host}/metrics")
    )
    timer = _fault_timer(args, fleet, out) if scenario.fault else None
    (out / "llm_meta.json").unlink(missing_ok=True)
    print(
        f"mufleet load: {scenario.name} ({scenario.description}), {shape} shape, {users} users, "
        f"{args.duration:g} s against {host}; report in {out}",
        flush=True,
    )
    load_before = os.getloadavg()[0]
    cached_before = kv_reused_tokens(fleet.nodes) if fleet else None
    scraper = RouterScraper(metrics_url) if metrics_url else None
    code = _run(plan, scraper, timer, args.duration + plan.stop_timeout_s + 120)
    if not (out / "llm_requests.csv").exists():
        print(
            f"mufleet load: Locust exited with {code} and wrote no records; "
            f"see {out / 'locust.log'}",
            file=sys.stderr,
        )
        return 1
    capacity, note = _capacity(fleet)
    fault = None
    if timer is not None and "hang" in timer.applied:
        fault = FaultWindow(
            timer.node, timer.applied["hang"], timer.applied.get("clear", timer.clear_s)
        )
    cached_after = kv_reused_tokens(fleet.nodes) if fleet else None
    ctx = RunContext(
        scenario=args.scenario,
        command=command,
        schedule=schedule,
        slo=_slo(args),
        capacity_mu_s=capacity,
        capacity_note=note,
        fault=fault,
        expected_errors=frozenset(k.strip() for k in args.expect_errors.split(",") if k.strip()),
        host_note=f"Host: {os.cpu_count()} cores, load average {load_before:.1f} before the "
        f"run and {os.getloadavg()[0]:.1f} after it.",
        cached_tokens=None
        if cached_before is None or cached_after is None
        else cached_after - cached_before,
    )
    save_context(out / "run.json", ctx, schedule_args)
    return _report(out, ctx)


def _fault_timer(args: argparse.Namespace, fleet: FleetInfo | None, out: Path) -> FaultTimer:
    if fleet is None or not fleet.nodes:
        raise SystemExit("mufleet load: the failover scenario needs the fleet's router.yaml")
    node = args.fault_node or fleet.nodes[-1].name
    try:
        fleet.node(node)
    except KeyError as exc:
        raise SystemExit(f"mufleet load: {exc.args[0]}") from None
    at = args.fault_at if args.fault_at is not None else args.duration / 2
    hold = args.fault_for if args.fault_for is not None else args.duration / 4
    return FaultTimer(node, fault_file(node), out / "llm_meta.json", at, at + hold)
