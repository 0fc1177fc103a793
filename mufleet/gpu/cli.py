"""The ``gpu-agent`` and ``gpu-fault`` commands, for any argparse command line.

``add_commands(subparsers)`` registers both; each sets ``func`` to a function taking the
parsed namespace and returning an exit code, as the main ``mufleet`` command line expects.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import time
from pathlib import Path
from types import FrameType

from mufleet.gpu.agent import GpuAgent
from mufleet.gpu.nvml import NvmlTelemetry
from mufleet.gpu.simulated import (
    GpuFault,
    SimulatedState,
    SimulatedTelemetry,
    default_state_path,
    edit_state,
    read_state,
)
from mufleet.gpu.telemetry import GpuTelemetry
from mufleet.gpu.verdict import GpuHealthConfig, GpuHealthJudge

_DEFAULT_STATE = ""  # --simulated without a file: the node's default state file


def add_commands(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``gpu-agent`` and ``gpu-fault`` on ``subparsers``."""
    agent = subparsers.add_parser(
        "gpu-agent",
        help="serve a node's GPU telemetry (/metrics) and health verdict (/health)",
        description="Polls NVML (or a simulated state file) and serves Prometheus metrics and "
        "a JSON health verdict. Default source: NVML when it initialises, else the node's "
        "simulated state file.",
    )
    agent.add_argument("--node", required=True, help="node name, e.g. node1")
    agent.add_argument("--host", default="127.0.0.1")
    agent.add_argument("--port", type=int, default=9400, help="0 picks a free port")
    agent.add_argument("--interval", type=float, default=1.0, help="seconds between polls")
    source = agent.add_mutually_exclusive_group()
    source.add_argument(
        "--simulated",
        nargs="?",
        const=_DEFAULT_STATE,
        metavar="STATE_FILE",
        help="simulated GPUs (default file: $MUFLEET_HOME/gpu/NODE.json)",
    )
    source.add_argument("--nvml", action="store_true", help="NVML only; fail without it")
    agent.add_argument(
        "--gpus", type=int, default=1, help="simulated: GPUs in a newly created state file"
    )
    agent.add_argument("--expected-gpus", type=int, help="warn when fewer GPUs are reported")
    agent.add_argument("--health-config", type=Path, help="GpuHealthConfig thresholds (JSON)")
    agent.set_defaults(func=cmd_gpu_agent)

    fault = subparsers.add_parser(
        "gpu-fault",
        help="edit a node's simulated GPU state (no flags: show it)",
        description="Edits the simulated state file the node's gpu-agent reads. Counters are "
        "added to; --clear (applied first) restores healthy readings, drops XID events and "
        "marks the GPUs as reset, which releases latched verdicts.",
    )
    fault.add_argument("node", help="node name, e.g. node1")
    fault.add_argument("--file", type=Path, help="state file (default: by node name)")
    fault.add_argument("--gpu", type=int, default=0, help="GPU index the fault applies to")
    fault.add_argument("--xid", type=int, metavar="N", help="raise XID N")
    fault.add_argument("--temperature", type=float, metavar="C", help="set the temperature")
    fault.add_argument("--ecc-uncorrected", type=int, default=0, metavar="N")
    fault.add_argument("--ecc-corrected", type=int, default=0, metavar="N")
    fault.add_argument("--throttle", choices=("thermal", "power", "hw_slowdown"))
    fault.add_argument("--retired-pending", action="store_true", help="a page retirement waits")
    fault.add_argument("--remap-pending", action="store_true", help="a row remap waits")
    fault.add_argument("--remap-failure", action="store_true", help="a row remap failed")
    fault.add_argument("--pcie-replays", type=int, default=0, metavar="N")
    fault.add_argument("--clear", action="store_true", help="back to healthy (a GPU reset)")
    fault.set_defaults(func=cmd_gpu_fault)


def build_parser() -> argparse.ArgumentParser:
    """A parser with just these two commands (for ``python -m mufleet.gpu.agent``)."""
    parser = argparse.ArgumentParser(prog="python -m mufleet.gpu.agent")
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser


def open_telemetry(args: argparse.Namespace) -> tuple[GpuTelemetry, str]:
    """The telemetry source the ``gpu-agent`` flags ask for, and a description of it."""
    if args.simulated is None:
        try:
            nvml = NvmlTelemetry()
        except Exception as exc:
            if args.nvml:
                raise SystemExit(f"gpu-agent: NVML unavailable: {exc}") from None
            print(f"gpu-agent: NVML unavailable ({exc}); using simulated GPUs", file=sys.stderr)
        else:
            if nvml.xid_unavailable:
                print(f"gpu-agent: XID events unavailable: {nvml.xid_unavailable}", file=sys.stderr)
            return nvml, f"nvml, {nvml.gpu_count} GPUs"
    path = Path(args.simulated) if args.simulated else default_state_path(args.node)
    return SimulatedTelemetry(path, default_gpus=args.gpus), f"simulated {path}"


def build_agent(args: argparse.Namespace) -> GpuAgent:
    """The ``GpuAgent`` for parsed ``gpu-agent`` arguments, not yet started."""
    config = (
        GpuHealthConfig.model_validate_json(args.health_config.read_text())
        if args.health_config
        else GpuHealthConfig()
    )
    if args.expected_gpus is not None:
        config = config.model_copy(update={"expected_gpus": args.expected_gpus})
    telemetry, source = open_telemetry(args)
    return GpuAgent(
        telemetry,
        args.node,
        judge=GpuHealthJudge(config),
        host=args.host,
        port=args.port,
        interval_s=args.interval,
        source=source,
    )


class _StopFlag:
    """SIGINT/SIGTERM set a bool the main loop polls (a handler must not take locks)."""

    def __init__(self) -> None:
        self.stopped = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._set)

    def _set(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True


def cmd_gpu_agent(args: argparse.Namespace) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    agent = build_agent(args)
    stop = _StopFlag()
    agent.start()
    try:
        print(f"gpu-agent ready: {agent.url} ({agent.source})", flush=True)
        while not stop.stopped:
            time.sleep(0.1)
    finally:
        agent.stop()
    return 0


def _fault_from_args(args: argparse.Namespace) -> GpuFault:
    return GpuFault(
        gpu=args.gpu,
        clear=args.clear,
        xid=args.xid,
        temperature_c=args.temperature,
        ecc_uncorrected=args.ecc_uncorrected,
        ecc_corrected=args.ecc_corrected,
        throttle=args.throttle,
        retired_pending=args.retired_pending,
        remap_pending=args.remap_pending,
        remap_failure=args.remap_failure,
        pcie_replays=args.pcie_replays,
    )


def describe_state(state: SimulatedState) -> list[str]:
    """One line per GPU, and the XID events kept in the file."""
    lines = []
    for g in state.gpus:
        lines.append(
            f"gpu{g.index}: {g.temperature_c:g}°C, SM {g.sm_clock_mhz:g}/{g.max_sm_clock_mhz:g} "
            f"MHz, reasons {g.clock_event_reasons or '[]'}, ECC corrected "
            f"{g.ecc_volatile_corrected} uncorrected {g.ecc_volatile_uncorrected}, PCIe replays "
            f"{g.pcie_replay_count}, pending retire/remap {g.retired_pages_pending}/"
            f"{g.remapped_rows_pending}, remap failure {g.remapped_rows_failure}"
        )
    xids = ", ".join(f"gpu{x.gpu}:{x.xid}" for x in state.xids) or "none"
    lines.append(f"XID events: {xids}; reset epoch {state.reset_epoch}")
    return lines


def cmd_gpu_fault(args: argparse.Namespace) -> int:
    path = args.file or default_state_path(args.node)
    try:
        fault = _fault_from_args(args)
        state = edit_state(path, fault) if fault != GpuFault(gpu=args.gpu) else read_state(path)
    except ValueError as exc:  # pydantic's ValidationError is one
        print(f"gpu-fault: {exc}", file=sys.stderr)
        return 2
    print(path)
    for line in describe_state(state):
        print(f"  {line}")
    return 0
