"""A real router process in front of real tritonserver nodes, for the router's tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mufleet.node import NodePorts, TritonNode

ADMIN = "test-admin-token-0123456789"
KEYS = {"demo": "key-demo-0123456789", "tight": "key-tight-0123456789", "batch": "key-b-0123"}
MODEL = "tiny-llama"
PAIR = Path(__file__).parents[2] / "profiles" / "llama-3.1-8b_h100-sxm_tp1.json"


@dataclass
class Router:
    http: str
    grpc: str
    config: Path
    process: subprocess.Popen[str]

    def url(self, path: str) -> str:
        return f"http://{self.http}{path}"


def router_config(
    nodes: Sequence[TritonNode],
    tokenizer_dir: Path,
    ports: NodePorts,
    node_extra: dict[str, dict[str, Any]] | None = None,
    **sections: Any,
) -> dict[str, Any]:
    """Tenants: ``demo`` (reserved, interactive), ``tight`` (a tiny reservation, no
    best-effort), ``batch`` (best-effort only).

    The test nodes batch a few sequences on a slowed emulation, not the engine the shipped
    pair profile was calibrated on; the engine check is off unless a test turns it on, so
    the other tests see the profile's capacity as it is.
    """
    sections.setdefault("engine_check", {"enabled": False})
    return {
        "listen": {"host": "127.0.0.1", "http_port": ports.http, "grpc_port": ports.grpc},
        "admin_token": ADMIN,
        "tenants": [
            {
                "name": "demo",
                "api_key": KEYS["demo"],
                "tier": "interactive",
                "reserved_mu_s": 100000.0,
            },
            {
                "name": "tight",
                "api_key": KEYS["tight"],
                "tier": "standard",
                "reserved_mu_s": 1.0,
                "burst_mu": 1.0,
                "best_effort": False,
            },
            {
                "name": "batch",
                "api_key": KEYS["batch"],
                "tier": "batch",
                "reserved_mu_s": 0.0,
                "max_priority": 4,
            },
        ],
        "models": [{"name": MODEL, "tokenizer_dir": str(tokenizer_dir)}],
        "pairs": {"llama-3.1-8b_h100-sxm_tp1": str(PAIR)},
        "nodes": [
            {
                "name": node.name,
                "grpc_url": node.grpc_url,
                "http_url": f"http://{node.http_url}",
                "metrics_url": node.metrics_url,
                "pair": "llama-3.1-8b_h100-sxm_tp1",
                "models": [MODEL],
                **(node_extra or {}).get(node.name, {}),
            }
            for node in nodes
        ],
        "scrape": {"interval_s": 0.2, "timeout_s": 0.5},
        **sections,
    }


@contextmanager
def routing(
    nodes: Sequence[TritonNode],
    tokenizer_dir: Path,
    home: Path,
    name: str,
    node_extra: dict[str, dict[str, Any]] | None = None,
    **sections: Any,
) -> Iterator[Router]:
    """``mufleet route`` on ephemeral ports; stopped (SIGTERM, then SIGKILL) on exit."""
    ports = NodePorts.ephemeral()
    path = home / f"router-{name}.yaml"
    config = router_config(nodes, tokenizer_dir, ports, node_extra, **sections)
    path.write_text(yaml.safe_dump(config))
    log = open(home / "logs" / f"router-{name}.log", "ab")  # noqa: SIM115 - closed below
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
        assert line.startswith("router ready"), f"router did not start: {line!r}"
        router = Router(f"127.0.0.1:{ports.http}", f"127.0.0.1:{ports.grpc}", path, process)
        _wait_for_metrics(router)
        yield router
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        log.close()


def _wait_for_metrics(router: Router, timeout: float = 30.0) -> None:
    """Until the router has scraped every node once (its snapshots are then fresh)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            router.url("/admin/nodes"), headers={"Authorization": f"Bearer {ADMIN}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            import json

            nodes = json.loads(response.read())["nodes"]
        if all(n["metrics_age_s"] is not None and n["metrics_age_s"] < 5 for n in nodes):
            return
        time.sleep(0.1)
    raise AssertionError("the router never scraped its nodes")
