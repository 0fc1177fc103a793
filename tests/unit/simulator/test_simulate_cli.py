"""``mufleet simulate``: its outputs on a tiny trace, and refusals of bad arguments."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mufleet.cli import main

PNG = b"\x89PNG\r\n\x1a\n"


def _exit_code(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse refusals
        return int(exc.code or 0)


@pytest.fixture
def tiny(make_trace: Callable[..., Path]) -> Path:
    return make_trace("tiny.jsonl", n=40, rate=4.0, seed=3)


def _summary(out: Path) -> dict[str, Any]:
    return json.loads((out / "summary.json").read_text())


def test_simulate_without_search(
    tiny: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "no-search"
    argv = ["simulate", "--trace", str(tiny), "--nodes", "2", "--no-search", "--out", str(out)]
    argv += ["--policies", "round_robin,mu_cost,oracle", "--load", "0.5,1.0", "--seed", "4"]

    assert main(argv) == 0

    summary = _summary(out)
    assert set(summary) == {"_run", "round_robin", "mu_cost", "oracle"}
    run = summary["_run"]
    assert run["trace"] == "tiny" and run["trace_requests"] == 40 and run["nodes"] == 2
    assert run["loads"] == [0.5, 1.0] and run["seed"] == 4
    for policy in ("round_robin", "mu_cost", "oracle"):
        entry = summary[policy]
        assert "rate_at_slo90_rps" not in entry and "rate_search" not in entry
        assert set(entry["by_load"]) == {"0.5", "1"}
        assert 0 <= entry["slo_attainment"] <= 1
        assert entry["requests"] > 0
        assert entry["rate_rps"] == pytest.approx(0.5 * run["no_reuse_capacity_rps"])
        assert entry["by_load"]["1"]["rate_rps"] == pytest.approx(run["no_reuse_capacity_rps"])
        assert 0 <= entry["kv_hit_bound"] <= 1
    report = (out / "report.md").read_text()
    assert "| round_robin |" in report and "| oracle |" in report
    assert (out / "latency_and_balance.png").read_bytes().startswith(PNG)
    assert not (out / "rate_at_slo90.png").exists()  # nothing searched, nothing to plot
    printed = capsys.readouterr().out
    assert "done in" in printed and "round_robin load 0.50" in printed


def test_simulate_with_a_rate_search(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "search"
    argv = ["simulate", "--trace", str(tiny), "--nodes", "2", "--out", str(out)]
    argv += ["--policies", "round_robin,least_request", "--search-runs", "4", "--duration", "8"]

    assert main(argv) == 0

    summary = _summary(out)
    assert summary["_run"]["duration_s"] <= 8.0
    for policy in ("round_robin", "least_request"):
        entry = summary[policy]
        runs = entry["rate_search"]
        assert len(runs) == 4
        assert all(r["rate_rps"] > 0 and 0 <= r["slo_attainment"] <= 1 for r in runs)
        passing = [r["rate_rps"] for r in runs if r["slo_attainment"] >= 0.9]
        assert entry["rate_at_slo90_rps"] == (max(passing) if passing else 0.0)
        assert runs[0]["rate_rps"] == pytest.approx(summary["_run"]["no_reuse_capacity_rps"])
    for plot in ("rate_at_slo90.png", "latency_and_balance.png"):
        assert (out / plot).read_bytes().startswith(PNG)
    report = (out / "report.md").read_text()
    assert "rate at 90% SLO" in report and "![rate_at_slo90](rate_at_slo90.png)" in report


def test_simulate_with_faults_and_a_rate_scale(tiny: Path, tmp_path: Path) -> None:
    out = tmp_path / "faults"
    argv = ["simulate", "--trace", str(tiny), "--nodes", "3", "--no-search", "--out", str(out)]
    argv += ["--policies", "mu_cost", "--rate-scale", "4", "--faults", "slow3:2@1"]
    argv += ["--slo", "ttft=1s,tpot=50ms", "--max-tokens", "256"]

    assert main(argv) == 0

    summary = _summary(out)
    assert summary["_run"]["slo"] == {"ttft_s": 1.0, "ttft_per_1k_s": 0.05, "tpot_s": 0.05}
    assert summary["_run"]["settings"]["max_tokens"] == 256
    entry = summary["mu_cost"]
    assert entry["rate_multiplier"] == pytest.approx(4.0)
    assert entry["lost_requests"] == 0
    assert "during_faults" in entry


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--policies", "round_robin,nope"], "unknown policies nope"),
        (["--policies", "best"], "unknown policies best"),
        (["--fleet", "llama-3.1-8b_h100-sxm_tp1"], "fleet entries are PAIR:COUNT"),
        (["--fleet", "llama-3.1-8b_h100-sxm_tp1:x"], "fleet entries are PAIR:COUNT"),
        (["--fleet", "no-such-pair:2"], "no hardware profile 'no-such-pair'"),
        (["--fleet", "llama-3.1-8b_h100-sxm_tp1:0"], "node count must be >= 1"),
        (["--nodes", "0"], "node count must be >= 1"),
        (["--slo", "ttft=fast"], "not a duration"),
        (["--slo", "latency=1s"], "--slo takes ttft, ttft_per_1k, tpot"),
        (["--faults", "crash:0@1"], "KIND:NODE@START"),
        (["--faults", "hang:9@1"], "the fleet has nodes 0..1"),
        (["--max-tokens", "0"], "--max-tokens must be >= 1"),
        (["--load", "0.5,-1"], "--load values must be > 0"),
        (["--load", "half"], "--load takes numbers"),
        (["--load", "1", "--rate-scale", "2"], "not allowed with argument"),
    ],
)
def test_bad_arguments_exit_2_with_a_message(
    tiny: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    extra: list[str],
    message: str,
) -> None:
    out = tmp_path / "never"
    argv = ["simulate", "--trace", str(tiny), "--nodes", "2", "--no-search", "--out", str(out)]

    assert _exit_code(argv + extra) == 2

    assert message in capsys.readouterr().err
    assert not out.exists()


def test_a_bad_trace_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"timestamp": 0, "input_length": 5, "output_length": 1}\n{oops}\n')
    assert _exit_code(["simulate", "--trace", str(bad), "--no-search"]) == 2
    assert f"mufleet simulate: {bad}:2:" in capsys.readouterr().err
    assert _exit_code(["simulate", "--trace", str(tmp_path / "none.csv"), "--no-search"]) == 2
    assert "no trace file" in capsys.readouterr().err


@pytest.mark.parametrize("scale", ["0", "-2"])
def test_a_non_positive_rate_scale_exits_2(tiny: Path, tmp_path: Path, scale: str) -> None:
    argv = ["simulate", "--trace", str(tiny), "--nodes", "2", "--no-search"]
    argv += ["--policies", "round_robin", "--rate-scale", scale, "--out", str(tmp_path / "o")]
    assert _exit_code(argv) == 2


@pytest.mark.filterwarnings("ignore:No artists with labels")
def test_a_negative_duration_exits_2(tiny: Path, tmp_path: Path) -> None:
    argv = ["simulate", "--trace", str(tiny), "--nodes", "2", "--no-search"]
    argv += ["--policies", "round_robin", "--duration", "-1", "--out", str(tmp_path / "o")]
    assert _exit_code(argv) == 2
