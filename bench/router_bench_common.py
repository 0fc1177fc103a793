"""Shared pieces of the router benchmarks (``router_capacity.py``, ``router_overhead.py``).

A ``mufleet route`` subprocess on ephemeral loopback ports with a YAML configuration,
waiting until it has scraped its nodes, stopping it by pid; CPU time of processes by pid;
the load average; percentiles and a bootstrap interval for a difference of medians.
"""

from __future__ import annotations

import json
import os
import selectors
import subprocess
import sys
import time
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import psutil
import yaml
from null_upstream import stop_process

from mufleet.node import NodePorts

REPO_ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).resolve().parent / "results"
ADMIN_TOKEN = "bench-admin-token-0123456789"
TENANT_KEY = "bench-key-0123456789"
MODEL = "tiny-llama"
PAIR = "llama-3.1-8b_h100-sxm_tp1"


def loadavg() -> tuple[float, float, float]:
    one, five, fifteen = os.getloadavg()
    return (round(one, 2), round(five, 2), round(fifteen, 2))


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def pct_ms(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (seconds) in milliseconds (NaN when empty)."""
    return float(np.percentile(values, q)) * 1000 if len(values) else float("nan")


def median_diff_ci_ms(
    a: Sequence[float], b: Sequence[float], resamples: int = 1000, seed: int = 0
) -> tuple[float, float]:
    """Bootstrap 95% interval of ``median(a) - median(b)`` in milliseconds."""
    if not len(a) or not len(b):
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    xa, xb = np.asarray(a), np.asarray(b)
    ia = rng.integers(0, len(xa), size=(resamples, len(xa)))
    ib = rng.integers(0, len(xb), size=(resamples, len(xb)))
    diffs = np.median(xa[ia], axis=1) - np.median(xb[ib], axis=1)
    low, high = np.percentile(diffs, [2.5, 97.5]) * 1000
    return (float(low), float(high))


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` (all its threads); NaN if it is gone."""
    try:
        times = psutil.Process(pid).cpu_times()
    except psutil.Error:
        return float("nan")
    return float(times.user + times.system)


def tenant_section(reserved_mu_s: float = 1e12) -> list[dict[str, Any]]:
    """One tenant with a reservation no benchmark can exhaust."""
    return [
        {
            "name": "bench",
            "api_key": TENANT_KEY,
            "tier": "interactive",
            "reserved_mu_s": reserved_mu_s,
            "burst_mu": reserved_mu_s,
            "max_sessions": 0,
        }
    ]


def router_config(
    nodes: Sequence[tuple[str, str, str, str]],
    tokenizer_dir: Path,
    ports: NodePorts,
    scrape_interval_s: float = 1.0,
    policy: str | None = None,
) -> dict[str, Any]:
    """A router configuration; ``nodes`` are ``(name, grpc host:port, http URL, metrics URL)``;
    ``policy`` None keeps the router's default (``mu_cost``)."""
    config: dict[str, Any] = {
        "listen": {"host": "127.0.0.1", "http_port": ports.http, "grpc_port": ports.grpc},
        "admin_token": ADMIN_TOKEN,
        "tenants": tenant_section(),
        "models": [{"name": MODEL, "tokenizer_dir": str(tokenizer_dir)}],
        "pairs": {PAIR: str(REPO_ROOT / "profiles" / f"{PAIR}.json")},
        "nodes": [
            {
                "name": name,
                "grpc_url": grpc_url,
                "http_url": http_url,
                "metrics_url": metrics_url,
                "pair": PAIR,
                "models": [MODEL],
            }
            for name, grpc_url, http_url, metrics_url in nodes
        ],
        "scrape": {"interval_s": scrape_interval_s, "timeout_s": 0.5},
    }
    if policy is not None:
        config["policy"] = {"name": policy}
    return config


@dataclass
class RouterProcess:
    """A ``mufleet route`` child process."""

    process: subprocess.Popen[str]
    http: str
    grpc: str
    config_path: Path
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return f"http://{self.http}{path}"

    def log_tail(self, lines: int = 20) -> str:
        if not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, timeout: float = 20.0) -> None:
        stop_process(self.process, timeout)


def _first_line(process: subprocess.Popen[str], timeout: float) -> str:
    assert process.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(process.stdout, selectors.EVENT_READ)
        if not selector.select(timeout):
            return ""
    return process.stdout.readline()


def start_router(
    config: dict[str, Any],
    workdir: Path,
    name: str = "router",
    command: Sequence[str] | None = None,
    timeout: float = 90.0,
) -> RouterProcess:
    """Write ``config`` and start ``mufleet route`` on it (or ``command`` + ``--config``);
    returns once it printed its ready line and scraped every node."""
    path = workdir / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    log_path = workdir / f"{name}.log"
    argv = list(command or [sys.executable, "-m", "mufleet.cli", "route"])
    with open(log_path, "ab") as log_file:
        process = subprocess.Popen(
            [*argv, "--config", str(path)],
            stdout=subprocess.PIPE,
            stderr=log_file,
            text=True,
            cwd=REPO_ROOT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    listen = config["listen"]
    router = RouterProcess(
        process,
        f"{listen['host']}:{listen['http_port']}",
        f"{listen['host']}:{listen['grpc_port']}",
        path,
        log_path,
    )
    try:
        line = _first_line(process, timeout)
        if not line.startswith("router ready"):
            raise RuntimeError(f"router did not start: {line!r}\n{router.log_tail()}")
        wait_scraped(router, timeout=30.0)
    except BaseException:
        router.stop()
        raise
    return router


def wait_scraped(router: RouterProcess, timeout: float = 30.0) -> None:
    """Until the router has scraped every node at least once."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        request = urllib.request.Request(
            router.url("/admin/nodes"), headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}
        )
        with urllib.request.urlopen(request, timeout=5) as response:
            nodes = json.loads(response.read())["nodes"]
        if all(n["metrics_age_s"] is not None and n["metrics_age_s"] < 5 for n in nodes):
            return
        time.sleep(0.1)
    raise RuntimeError(f"the router never scraped its nodes\n{router.log_tail()}")


def host_facts() -> dict[str, Any]:
    import platform

    return {
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "machine": platform.machine(),
        "loadavg_at_start": loadavg(),
    }
