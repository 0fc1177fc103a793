"""The real side: a local sim-engine fleet and the router in front of it."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mufleet.fleet import LocalFleet
from mufleet.node import NodePorts, TritonNode
from mufleet.paths import profiles
from mufleet.replay.spec import ADMIN_TOKEN, API_KEY, EXIT_TIMEOUT_S, MODEL, FleetShape
from mufleet.repository import RenderParams, render
from mufleet.triton_dist import locate
from python_backends.sim_engine.hardware import resolve_profile

# -- the real fleet ---------------------------------------------------------------------------


@dataclass
class SimFleet:
    shape: FleetShape
    nodes: list[TritonNode]
    tokenizer_dir: Path
    workdir: Path


@contextmanager
def local_sim_fleet(
    shape: FleetShape,
    tokenizer_dir: Path,
    workdir: Path,
    name: str = "fid",
    overrides: dict[str, Any] | None = None,
) -> Iterator[SimFleet]:
    """``shape.nodes`` sim-engine nodes on ephemeral loopback ports, ready; stopped on exit.
    ``overrides`` are further :class:`RenderParams` fields."""
    params = RenderParams.model_validate(
        {
            "profile": "sim",
            "tokenizer_dir": tokenizer_dir,
            "hardware_profile": resolve_profile(shape.pair),
            "max_batch_size": shape.max_batch_size,
            "time_scale": shape.time_scale,
            "max_context": shape.max_context,
            **(overrides or {}),
        }
    )
    repository = render(params, workdir / f"repo-{name}")
    triton = locate()
    members = [
        TritonNode(
            name=f"{name}{i}",
            repository=repository,
            triton=triton,
            ports=NodePorts.ephemeral(),
            log_path=workdir / "logs" / f"{name}{i}.log",
            fault_file=workdir / "faults" / f"{name}{i}.json",
            extra_args=(f"--exit-timeout-secs={EXIT_TIMEOUT_S}",),
        )
        for i in range(shape.nodes)
    ]
    local = LocalFleet(members=members)
    local.start()
    try:
        local.wait_ready(300)
        yield SimFleet(shape, members, tokenizer_dir, workdir)
    finally:
        for node in members:  # all at once: each takes its exit timeout
            if node.process is not None and node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    node.process.send_signal(signal.SIGTERM)
        local.stop()


@dataclass
class RouterProcess:
    http: str
    grpc: str
    config: Path
    process: subprocess.Popen[str]
    api_key: str = API_KEY

    def admin(self, path: str) -> Any:
        request = urllib.request.Request(
            f"http://{self.http}{path}", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())


def router_config(fleet: SimFleet, ports: NodePorts) -> dict[str, Any]:
    """The router in front of ``fleet``: one reserved interactive tenant, ``mu_cost``, the
    fleet's scrape interval, and no health probes (the simulator runs none without faults:
    a canary every second is an extra sequence on every node)."""
    shape = fleet.shape
    return {
        "listen": {"host": "127.0.0.1", "http_port": ports.http, "grpc_port": ports.grpc},
        "admin_token": ADMIN_TOKEN,
        "tenants": [
            {
                "name": "demo",
                "api_key": API_KEY,
                "tier": "interactive",
                "reserved_mu_s": 100000.0,
            }
        ],
        "models": [
            {
                "name": MODEL,
                "tokenizer_dir": str(fleet.tokenizer_dir),
                "max_context": shape.max_context,
            }
        ],
        "pairs": {shape.pair: str(profiles() / f"{shape.pair}.json")},
        "nodes": [
            {
                "name": node.name,
                "grpc_url": node.grpc_url,
                "http_url": f"http://{node.http_url}",
                "metrics_url": node.metrics_url,
                "pair": shape.pair,
                "models": [MODEL],
            }
            for node in fleet.nodes
        ],
        "policy": {"name": "mu_cost"},
        "scrape": {"interval_s": shape.scrape_interval_s, "timeout_s": 0.5},
        "health": {"enabled": False},
    }


@contextmanager
def router_process(fleet: SimFleet, name: str = "router") -> Iterator[RouterProcess]:
    """``mufleet route`` in front of ``fleet``, once it has scraped every node."""
    ports = NodePorts.ephemeral()
    path = fleet.workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(router_config(fleet, ports)))
    (fleet.workdir / "logs").mkdir(parents=True, exist_ok=True)
    log = open(fleet.workdir / "logs" / f"{name}.log", "ab")  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [sys.executable, "-m", "mufleet.cli", "route", "--config", str(path)],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        if not line.startswith("router ready"):
            raise RuntimeError(f"the router did not start: {line!r}")
        router = RouterProcess(f"127.0.0.1:{ports.http}", f"127.0.0.1:{ports.grpc}", path, process)
        deadline = time.monotonic() + 30
        while True:
            nodes = router.admin("/admin/nodes")["nodes"]
            ages = [n.get("metrics_age_s") for n in nodes]
            if all(a is not None and a < 5 for a in ages):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"the router never scraped its nodes: {nodes}")
            time.sleep(0.1)
        yield router
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


_SERIES = re.compile(r"^(nv_trt_llm_\w+)\{([^}]*)\}\s+(\S+)$")


def engine_settings(node: TritonNode) -> dict[str, float]:
    """The engine's own figures from the node's ``/metrics`` (``nv_trt_llm_*``): max
    sequences, KV blocks (max, tokens per block, reused so far)."""
    with urllib.request.urlopen(node.metrics_url, timeout=5) as response:
        text = response.read().decode()
    wanted = {
        ("nv_trt_llm_request_metrics", "request_type", "max"): "max_num_sequences",
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "max"): "kv_blocks",
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "tokens_per"): (
            "kv_block_tokens"
        ),
        ("nv_trt_llm_kv_cache_block_metrics", "kv_cache_block_type", "reused"): "kv_reused",
    }
    out: dict[str, float] = {}
    for line in text.splitlines():
        match = _SERIES.match(line.strip())
        if not match:
            continue
        family, labels, value = match.groups()
        pairs = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        for (name, key, label), field_name in wanted.items():
            if family == name and pairs.get(key) == label:
                out[field_name] = float(value)
    return out
