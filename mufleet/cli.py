"""The ``mufleet`` command line."""

from __future__ import annotations

import argparse
import logging
import re
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from mufleet import paths
from mufleet.repository import PROFILES, RenderParams, render, render_cached


def _add_repository_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=PROFILES, default="cpu")
    parser.add_argument(
        "--model-dir",
        type=Path,
        help="local HF checkpoint (default: the generated tiny Llama, built on first use)",
    )
    parser.add_argument("--tokenizer-dir", type=Path, help="HF tokenizer (default: --model-dir)")
    parser.add_argument("--engine-dir", type=Path, help="TensorRT-LLM engine (trtllm profile)")
    parser.add_argument(
        "--max-batch-size",
        type=int,
        help="sequences in flight per engine (default: sim, the hardware profile's "
        "max_num_sequences; cpu, 8); a sim value that differs from the profile is logged",
    )
    parser.add_argument("--engine-threads", type=int, default=1, help="torch threads (cpu)")
    parser.add_argument(
        "--hardware-profile",
        default="llama-3.1-8b_h100-sxm_tp1",
        help="sim: a file or the name of a shipped profile in profiles/hardware/",
    )
    parser.add_argument(
        "--time-scale",
        type=float,
        default=1.0,
        help="sim: run N times slower than the emulated GPU (for hosts too small to relay "
        "its token rate)",
    )
    parser.add_argument(
        "--decoupled",
        choices=("true", "false"),
        default="true",
        help="decoupled_mode of tensorrt_llm and tensorrt_llm_bls: true streams; false "
        "serves unary infer on ensemble, tensorrt_llm and tensorrt_llm_bls",
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="any other render parameter (for example max_queue_size=64, "
        "bls_instance_count=2, accumulate_tokens=true); repeatable",
    )


def _render_params(args: argparse.Namespace) -> RenderParams:
    model_dir = args.model_dir
    if model_dir is None and args.tokenizer_dir is None:
        from mufleet.tiny_model import default_model_dir

        model_dir = default_model_dir()
    tokenizer_dir = args.tokenizer_dir or model_dir
    sim = args.profile == "sim"
    hardware = None
    max_context = 0
    if sim:
        from python_backends.sim_engine.hardware import HardwareProfile, resolve_profile

        hardware = resolve_profile(args.hardware_profile).resolve()
        max_context = HardwareProfile.load(hardware).max_context
    values: dict[str, object] = dict(
        profile=args.profile,
        tokenizer_dir=Path(tokenizer_dir).resolve(),
        model_dir=Path(model_dir).resolve() if model_dir else None,
        engine_dir=Path(args.engine_dir).resolve() if args.engine_dir else None,
        max_batch_size=args.max_batch_size,
        engine_threads=args.engine_threads,
        hardware_profile=hardware,
        time_scale=args.time_scale,
        max_context=max_context,
        decoupled_mode=args.decoupled == "true",
    )
    for item in args.set:
        field, sep, value = item.partition("=")
        if not sep or field not in RenderParams.model_fields or field in values:
            settable = sorted(set(RenderParams.model_fields) - set(values))
            raise SystemExit(
                f"--set {item!r}: expected FIELD=VALUE with FIELD one of {', '.join(settable)}"
            )
        values[field] = value
    try:
        return RenderParams.model_validate(values)
    except ValueError as exc:
        raise SystemExit(f"invalid render parameters: {exc}") from None


class _StopFlag:
    """Turns SIGINT/SIGTERM into a flag the main loop polls.

    The handler only assigns a bool: setting a ``threading.Event`` from a signal handler
    deadlocks when the signal lands while the main thread is inside ``Event.wait``.
    """

    def __init__(self) -> None:
        self.stopped = False
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._set)

    def _set(self, signum: int, frame: FrameType | None) -> None:
        self.stopped = True

    def wait(self, seconds: float) -> bool:
        """Sleep up to ``seconds``; True once a stop signal has arrived."""
        deadline = time.monotonic() + seconds
        while not self.stopped and time.monotonic() < deadline:
            time.sleep(0.1)
        return self.stopped


def cmd_make_model(args: argparse.Namespace) -> int:
    from mufleet.tiny_model import build_tiny_model, default_model_dir

    out = build_tiny_model(args.out) if args.out else default_model_dir()
    print(out)
    return 0


def cmd_render(args: argparse.Namespace) -> int:
    print(render(_render_params(args), args.out))
    return 0


def cmd_triton(args: argparse.Namespace) -> int:
    from mufleet.node import NodePorts, TritonNode
    from mufleet.triton_dist import locate

    stop = _StopFlag()
    node = TritonNode(
        name="triton",
        repository=render_cached(_render_params(args)),
        triton=locate(),
        ports=NodePorts(args.http_port, args.grpc_port, args.metrics_port),
        host=args.host,
        log_path=args.log_file,
    )
    node.start()
    try:
        node.wait_ready(args.ready_timeout)
        print(f"ready: http {node.http_url}  grpc {node.grpc_url}  metrics {node.metrics_url}")
        sys.stdout.flush()
        while not stop.wait(0.5):
            if not node.alive():
                print(f"tritonserver exited with code {node.process and node.process.returncode}")
                return 1
    finally:
        node.stop()
    return 0


def cmd_up(args: argparse.Namespace) -> int:
    from mufleet.fleet import LocalFleet
    from mufleet.supervisor_api import SupervisorServer, token_path, write_token
    from mufleet.triton_dist import locate

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = _StopFlag()
    log_dir = args.log_dir or paths.home() / "logs"
    params = _render_params(args)
    fleet = LocalFleet(
        repository=render_cached(params),
        triton=locate(),
        nodes=args.nodes,
        base_port=args.base_port,
        host=args.host,
        log_dir=log_dir,
    )
    try:
        control = SupervisorServer(fleet, write_token(), port=args.supervisor_port)
    except OSError as exc:
        raise SystemExit(
            f"the supervisor control API cannot listen on 127.0.0.1:{args.supervisor_port}: {exc}"
        ) from None
    print(f"starting {args.nodes} node(s); logs in {log_dir}")
    fleet.start()
    control.start()
    print(f"supervisor control API {control.url} (token in {token_path()})")
    router = None
    try:
        fleet.wait_ready(args.ready_timeout)
        for node in fleet.members:
            print(
                f"{node.name}: http {node.http_url}  grpc {node.grpc_url}  "
                f"metrics {node.metrics_url}"
            )
        if not args.no_router:
            router = _start_router(args, fleet, params, control.url)
        print("fleet ready; Ctrl-C stops it")
        sys.stdout.flush()
        while not stop.wait(1.0):
            fleet.supervise_once()
            if router is not None and router.poll() is not None:  # type: ignore[attr-defined]
                print("the router exited; restarting it")
                router = _start_router(args, fleet, params, control.url)
    finally:
        print("stopping fleet")
        if router is not None:
            router.terminate()  # type: ignore[attr-defined]
            router.wait(timeout=15)  # type: ignore[attr-defined]
        control.stop()
        fleet.stop()
    return 0


def cmd_route(args: argparse.Namespace) -> int:
    from router.config import ConfigError, load_config
    from router.server import run

    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"mufleet route: {exc}", file=sys.stderr)
        return 2
    return run(config)


def _start_router(
    args: argparse.Namespace, fleet: object, params: RenderParams, supervisor_url: str
) -> object:
    """Write the router's configuration for ``fleet`` and start ``mufleet route`` on it.

    The router restarts a cordoned node by reloading its engine model, and if that fails
    through the supervisor's control API at ``supervisor_url``.
    """
    import subprocess

    from mufleet.router_setup import demo_key, write_router_config
    from mufleet.supervisor_api import token_path

    path = args.router_config or paths.home() / "router.yaml"
    sim = params.profile == "sim" and params.hardware_profile is not None
    pair = paths.profiles() / (
        f"{params.hardware_profile.stem}.json" if sim and params.hardware_profile else ""
    )
    if not sim or not pair.exists():
        if sim:
            print(
                f"mufleet up: no pair profile {pair} for this hardware profile; the router "
                "prices the fleet with the cpu pair's (calibrate one: mufleet calibrate)",
                file=sys.stderr,
            )
        pair = paths.profiles() / "tiny-llama_cpu-2core.json"
    model = params.model_dir or params.tokenizer_dir
    restarters: list[dict[str, object]] = [
        {"kind": "model_reload"},
        {"kind": "supervisor", "url": supervisor_url, "token_file": str(token_path())},
    ]
    config = write_router_config(
        path,
        fleet.members,  # type: ignore[attr-defined]
        model_name=re.sub(r"-v\d+$", "", model.name),
        tokenizer_dir=params.tokenizer_dir,
        pair_profile=pair,
        http_port=args.router_http_port,
        grpc_port=args.router_grpc_port,
        host=args.host,
        restarters=restarters,
    )
    log_path = (args.log_dir or paths.home() / "logs") / "router.log"
    log_path.parent.mkdir(parents=True, exist_ok=True)
    process = subprocess.Popen(
        [sys.executable, "-m", "mufleet.cli", "route", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=open(log_path, "ab"),  # noqa: SIM115 - the child owns it
        text=True,
    )
    assert process.stdout is not None
    line = process.stdout.readline().strip()
    if not line.startswith("router ready"):
        process.kill()
        raise SystemExit(f"the router did not start; see {log_path}")
    print(line)
    print(f"router config {path} (mode 0600); demo tenant key: {demo_key(config)}")
    return process


def cmd_fault(args: argparse.Namespace) -> int:
    from python_backends.sim_engine.faults import FaultSwitches, write_faults

    switches = FaultSwitches(
        hang=args.hang,
        slowdown=args.slowdown,
        error_rate=args.error_rate,
        garbage=args.garbage,
        crash=args.crash,
        iteration_errors=args.iteration_errors,
        until_restart=args.until_restart,
    )
    path = args.file or paths.home() / "faults" / f"{args.node}.json"
    write_faults(path, switches)
    print(f"{path}: {switches.model_dump_json()}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mufleet", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    make = sub.add_parser("make-model", help="build the seeded tiny Llama checkpoint")
    make.add_argument("--out", type=Path, help="output directory (default: the cached one)")
    make.set_defaults(func=cmd_make_model)

    rend = sub.add_parser("render", help="render the model repository for a profile")
    _add_repository_args(rend)
    rend.add_argument("--out", type=Path, required=True)
    rend.set_defaults(func=cmd_render)

    triton = sub.add_parser("triton", help="run one tritonserver in the foreground")
    _add_repository_args(triton)
    triton.add_argument("--host", default="127.0.0.1")
    triton.add_argument("--http-port", type=int, default=8000)
    triton.add_argument("--grpc-port", type=int, default=8001)
    triton.add_argument("--metrics-port", type=int, default=8002)
    triton.add_argument("--log-file", type=Path)
    triton.add_argument("--ready-timeout", type=float, default=300.0)
    triton.set_defaults(func=cmd_triton)

    up = sub.add_parser("up", help="start and supervise a local fleet of nodes")
    _add_repository_args(up)
    up.add_argument("--nodes", type=int, default=2)
    up.add_argument("--host", default="127.0.0.1")
    up.add_argument("--base-port", type=int, default=8000)
    up.add_argument("--log-dir", type=Path)
    up.add_argument("--ready-timeout", type=float, default=300.0)
    up.add_argument(
        "--router-config",
        type=Path,
        help="router configuration to write and serve (default: $MUFLEET_HOME/router.yaml)",
    )
    up.add_argument("--router-http-port", type=int, default=9000)
    up.add_argument("--router-grpc-port", type=int, default=9001)
    up.add_argument("--no-router", action="store_true", help="start the nodes only")
    up.add_argument(
        "--supervisor-port",
        type=int,
        default=9010,
        help="loopback port of the control API through which the router restarts a node's "
        "process (0: any free port)",
    )
    up.set_defaults(func=cmd_up)

    route = sub.add_parser(
        "route",
        help="run the router in front of a fleet",
        description="Serves OpenAI /v1, KServe v2 HTTP and gRPC, /metrics and /admin.",
    )
    route.add_argument("--config", type=Path, required=True, help="router YAML")
    route.set_defaults(func=cmd_route)

    fault = sub.add_parser(
        "fault",
        help="set the fault switches of a sim node (no flags: clear them)",
        description="Writes the node's control file; the sim engine applies it within 50 ms.",
    )
    fault.add_argument("node", help="node name, e.g. node1 (as printed by `mufleet up`)")
    fault.add_argument("--file", type=Path, help="control file (default: by node name)")
    fault.add_argument("--hang", action="store_true", help="stop producing tokens")
    fault.add_argument("--slowdown", type=float, default=1.0, help="iteration time factor")
    fault.add_argument("--error-rate", type=float, default=0.0, help="fraction failed")
    fault.add_argument("--garbage", action="store_true", help="invalid tokens, wrong lengths")
    fault.add_argument("--crash", action="store_true", help="the engine process exits")
    fault.add_argument(
        "--iteration-errors",
        type=int,
        default=0,
        metavar="N",
        help="the next N engine iterations raise; 3 or more in a row kill the engine",
    )
    fault.add_argument(
        "--until-restart",
        action="store_true",
        help="only the engine running now is affected: a model reload or restart clears it",
    )
    fault.set_defaults(func=cmd_fault)

    from mufleet.calibration.cli import add_commands as add_calibration_commands
    from mufleet.gpu.cli import add_commands as add_gpu_commands
    from mufleet.load.cli import add_commands as add_load_commands
    from mufleet.simulator.cli import add_commands as add_simulator_commands

    add_calibration_commands(sub)
    add_gpu_commands(sub)
    add_simulator_commands(sub)
    add_load_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    sys.exit(main())
