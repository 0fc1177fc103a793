"""Unit tests for mufleet.gpu.cli, through a parser built here as the main CLI would."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

import mufleet.gpu.cli as gpu_cli
from mufleet.gpu.cli import add_commands, build_agent, open_telemetry
from mufleet.gpu.simulated import SimulatedTelemetry, read_state


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_commands(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


class FailingNvml:
    def __init__(self) -> None:
        raise RuntimeError("NVML Shared Library Not Found")


def test_gpu_agent_defaults() -> None:
    args = parse("gpu-agent", "--node", "node1")

    assert (args.node, args.host, args.port, args.interval) == ("node1", "127.0.0.1", 9400, 1.0)
    assert args.simulated is None and not args.nvml
    assert args.func is gpu_cli.cmd_gpu_agent


def test_simulated_takes_an_optional_file() -> None:
    assert parse("gpu-agent", "--node", "n", "--simulated").simulated == ""
    assert parse("gpu-agent", "--node", "n", "--simulated", "/s.json").simulated == "/s.json"


def test_simulated_and_nvml_exclude_each_other(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        parse("gpu-agent", "--node", "n", "--simulated", "--nvml")
    assert "not allowed with" in capsys.readouterr().err


def test_default_source_falls_back_to_the_nodes_state_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUFLEET_HOME", str(tmp_path))
    monkeypatch.setattr(gpu_cli, "NvmlTelemetry", FailingNvml)

    telemetry, source = open_telemetry(parse("gpu-agent", "--node", "n9", "--gpus", "4"))

    assert isinstance(telemetry, SimulatedTelemetry)
    assert telemetry.path == tmp_path / "gpu" / "n9.json"
    assert source == f"simulated {tmp_path / 'gpu' / 'n9.json'}"
    assert len(telemetry.sample()) == 4


def test_nvml_only_fails_without_nvml(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(gpu_cli, "NvmlTelemetry", FailingNvml)

    with pytest.raises(SystemExit, match="NVML unavailable"):
        open_telemetry(parse("gpu-agent", "--node", "n", "--nvml"))


def test_nvml_is_preferred_when_it_initialises(monkeypatch: pytest.MonkeyPatch) -> None:
    class WorkingNvml:
        gpu_count = 8
        xid_unavailable = None

    monkeypatch.setattr(gpu_cli, "NvmlTelemetry", WorkingNvml)

    telemetry, source = open_telemetry(parse("gpu-agent", "--node", "n"))

    assert isinstance(telemetry, WorkingNvml)
    assert source == "nvml, 8 GPUs"


def test_build_agent_applies_the_health_flags(tmp_path: Path) -> None:
    config = tmp_path / "health.json"
    config.write_text(json.dumps({"pcie_replays_per_minute": 2, "xid_warn_hold_s": 30}))
    args = parse(
        "gpu-agent",
        "--node",
        "n",
        "--simulated",
        str(tmp_path / "s.json"),
        "--port",
        "0",
        "--interval",
        "0.5",
        "--expected-gpus",
        "8",
        "--health-config",
        str(config),
    )

    agent = build_agent(args)

    cfg = agent.judge.config
    assert (cfg.pcie_replays_per_minute, cfg.xid_warn_hold_s, cfg.expected_gpus) == (2, 30.0, 8)
    assert agent.interval_s == 0.5 and agent.source.startswith("simulated ")
    assert agent.poll_once().status == "warn"  # 1 of 8 GPUs reported


def test_gpu_fault_edits_the_state_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "n.json"
    args = parse("gpu-fault", "n", "--file", str(path), "--xid", "79", "--temperature", "83")

    assert args.func(args) == 0

    state = read_state(path)
    assert [x.xid for x in state.xids] == [79]
    assert state.gpus[0].temperature_c == 83.0
    out = capsys.readouterr().out
    assert str(path) in out and "gpu0:79" in out


def test_gpu_fault_flags_map_onto_the_state(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    flags = [
        "--ecc-uncorrected", "1", "--ecc-corrected", "4", "--throttle", "power",
        "--retired-pending", "--remap-pending", "--remap-failure", "--pcie-replays", "9",
    ]  # fmt: skip
    args = parse("gpu-fault", "n", "--file", str(path), *flags)
    assert args.func(args) == 0
    gpu = read_state(path).gpus[0]

    assert (gpu.ecc_volatile_uncorrected, gpu.ecc_volatile_corrected) == (1, 4)
    assert gpu.clock_event_reasons == ["sw_power_cap"]
    assert gpu.retired_pages_pending and gpu.remapped_rows_pending and gpu.remapped_rows_failure
    assert gpu.pcie_replay_count == 9


def test_gpu_fault_clear(tmp_path: Path) -> None:
    path = tmp_path / "n.json"
    for argv in (["--xid", "48", "--throttle", "thermal"], ["--clear"]):
        args = parse("gpu-fault", "n", "--file", str(path), *argv)
        assert args.func(args) == 0
    state = read_state(path)

    assert state.xids == [] and state.reset_epoch == 1
    assert state.gpus[0].clock_event_reasons == []


def test_gpu_fault_without_flags_only_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "n.json"
    args = parse("gpu-fault", "n", "--file", str(path))

    assert args.func(args) == 0
    assert not path.exists()
    assert "XID events: none" in capsys.readouterr().out


def test_gpu_fault_default_file_is_by_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MUFLEET_HOME", str(tmp_path))
    args = parse("gpu-fault", "node3", "--pcie-replays", "2")

    assert args.func(args) == 0
    assert read_state(tmp_path / "gpu" / "node3.json").gpus[0].pcie_replay_count == 2


@pytest.mark.parametrize("argv", [["--gpu", "5", "--xid", "79"], ["--ecc-corrected", "-1"]])
def test_gpu_fault_rejects_bad_edits(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str]
) -> None:
    args = parse("gpu-fault", "n", "--file", str(tmp_path / "n.json"), *argv)

    assert args.func(args) == 2
    assert capsys.readouterr().err.startswith("gpu-fault: ")
