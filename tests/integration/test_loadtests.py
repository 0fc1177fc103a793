"""``mufleet load`` headless against a real fleet: two sim-engine tritonservers and the
router, every user class of ``loadtests/`` at once, then the report folder's contents.

No timing is asserted: what is checked is that requests were counted, TTFT recorded, SLO
attainment and errors by kind present, and that nothing failed.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from nodes import sim_params
from routed import Router, routing
from synthetic_trace import mooncake_trace

from mufleet.node import NodePorts, TritonNode
from mufleet.repository import render
from mufleet.trace_prompts import PromptBuilder, load_tokenizer
from mufleet.traces import TraceRequest
from mufleet.triton_dist import locate

pytestmark = pytest.mark.triton

REQUEST_TYPES = {"openai", "grpc"}
"""The Locust row types that are requests (the others are LLM metrics)."""


@pytest.fixture(scope="module")
def load_nodes(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[list[TritonNode]]:
    """Two sim nodes on one rendered repository, started and stopped side by side (a
    sim node takes its whole grace period to stop; two in a row would double it)."""
    repository = render(sim_params(tiny_model_dir, max_batch_size=16), mufleet_home / "repo-load")
    nodes = [
        TritonNode(
            name=name,
            repository=repository,
            triton=locate(),
            ports=NodePorts.ephemeral(),
            log_path=mufleet_home / "logs" / f"{name}.log",
        )
        for name in ("load0", "load1")
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready(timeout=240)
        yield nodes
    finally:
        stoppers = [threading.Thread(target=node.stop, kwargs={"grace": 5.0}) for node in nodes]
        for thread in stoppers:
            thread.start()
        for thread in stoppers:
            thread.join()


@pytest.fixture(scope="module")
def load_router(
    load_nodes: list[TritonNode], tiny_model_dir: Path, mufleet_home: Path
) -> Iterator[Router]:
    with routing(load_nodes, tiny_model_dir, mufleet_home, "load") as router:
        yield router


def _rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _reused_blocks(node: TritonNode) -> float:
    with urllib.request.urlopen(node.metrics_url, timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("nv_trt_llm_kv_cache_block_metrics")
        and 'kv_cache_block_type="reused"' in line
    )


def _generate(node: TritonNode, text: str) -> dict[str, object]:
    body = {"text_input": text, "max_tokens": 2, "return_perf_metrics": True}
    request = urllib.request.Request(
        f"http://{node.http_url}/v2/models/tensorrt_llm_bls/generate",
        data=json.dumps(body).encode(),
        method="POST",
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        result: dict[str, object] = json.loads(response.read())
    return result


def test_shared_hash_ids_are_cached_tokens_on_a_sim_node(
    load_nodes: list[TritonNode], tiny_model_dir: Path
) -> None:
    builder = PromptBuilder(load_tokenizer(tiny_model_dir), 32)
    first = TraceRequest(0.0, 3 * 512, 2, (900_001, 900_002, 900_003))
    follow_up = TraceRequest(1.0, 5 * 512, 2, (900_001, 900_002, 900_003, 900_004, 900_005))
    node = load_nodes[0]
    assert _generate(node, builder.prompt(first))["kv_cache_reused_blocks"] == 0
    reused = _generate(node, builder.prompt(follow_up))["kv_cache_reused_blocks"]
    assert reused == 3, "96 shared tokens after the BOS: three 32-token KV blocks"


def test_a_short_headless_run_writes_the_report(
    load_router: Router, load_nodes: list[TritonNode], mufleet_home: Path, tmp_path: Path
) -> None:
    trace = mooncake_trace(tmp_path)
    out = tmp_path / "report"
    reused_before = sum(_reused_blocks(n) for n in load_nodes)
    command = [
        sys.executable,
        "-m",
        "mufleet.cli",
        "load",
        "--scenario",
        "mixed",
        "--classes",
        "AgentUser",
        "SummaryUser",
        "ReasoningUser",
        "TritonGrpcUser",
        "TraceReplayUser",
        "--users",
        "10",
        "--spawn-rate",
        "10",
        "--duration",
        "16",
        "--router-config",
        str(load_router.config),
        "--trace",
        str(trace),
        "--rate-scale",
        "2",
        "--slo-ttft-ms",
        "2000",
        "--expect-errors",
        "",
        "--out",
        str(out),
    ]
    done = subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=150,
        env={**os.environ, "MUFLEET_HOME": str(mufleet_home)},
    )
    assert done.returncode == 0, done.stdout + done.stderr + (out / "locust.log").read_text()

    stats = _rows(out / "stats_stats.csv")
    requests = [r for r in stats if r["Type"] in REQUEST_TYPES]
    classes = {r["Name"].split(" ")[0] for r in requests}
    assert classes == {
        "AgentUser",
        "SummaryUser",
        "ReasoningUser",
        "TritonGrpcUser",
        "TraceReplayUser",
    }
    assert all(int(r["Request Count"]) > 0 for r in requests)
    assert sum(int(r["Failure Count"]) for r in stats) == 0
    ttft = {r["Name"]: int(r["Request Count"]) for r in stats if r["Type"] == "TTFT"}
    assert set(ttft) == {r["Name"] for r in requests} and all(ttft.values())
    assert any(r["Type"] == "TPOT" for r in stats)
    assert any(r["Type"] == "session" and "open" in r["Name"] for r in stats)
    assert not _rows(out / "stats_failures.csv"), "zero failures"

    summary = {(r["user_class"], r["tenant"]): r for r in _rows(out / "llm_summary.csv")}
    total = summary[("all", "all")]
    assert int(total["requests"]) == sum(int(r["Request Count"]) for r in requests)
    assert total["slo_attainment_pct"] != ""
    assert total["ttft_p99_ms"] != ""
    error_columns = [k for k in total if k.startswith("errors_")]
    assert {k.removeprefix("errors_") for k in error_columns} == {
        "rate_limited",
        "server_error",
        "timeout",
        "broken_stream",
        "client_error",
        "connection",
    }
    assert all(total[k] == "0" for k in error_columns)
    assert summary[("SummaryUser", "batch")]["requests"] != "0"
    assert summary[("AgentUser", "demo")]["requests"] != "0"

    records = _rows(out / "llm_requests.csv")
    assert len(records) == int(total["requests"])
    assert {r["node"] for r in records if r["endpoint"] == "openai"} <= {"load0", "load1"}
    router_samples = _rows(out / "router_metrics.csv")
    utilisation = {
        r["labels"] for r in router_samples if r["metric"] == "mufleet_router_utilisation_ratio"
    }
    assert utilisation == {"node=load0", "node=load1"}
    assert sum(_reused_blocks(n) for n in load_nodes) > reused_before, "trace prefixes hit"

    for name in ("report.html", "report.md", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    for name in ("latency.png", "throughput.png", "router.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", name
    figures = json.loads((out / "summary.json").read_text())
    assert figures["unexpected_failures"] == 0 and figures["requests"] == int(total["requests"])
    assert figures["cached_prompt_tokens"] > 0, "the report sees the nodes' prefix-cache hits"
