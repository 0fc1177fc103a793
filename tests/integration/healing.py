"""A supervised sim fleet behind a router with health checks, under steady client load.

For the self-healing tests and ``bench/health_detection.py``: four sim-engine
``tritonserver`` nodes supervised by a :class:`~mufleet.fleet.LocalFleet` (with its control
API, so the router's ``supervisor`` restarter works), optional simulated GPU agents, the
router in front, and a :class:`SteadyLoad` of streaming OpenAI requests whose every failure
is recorded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from nodes import TEST_GPU
from routed import ADMIN, KEYS, MODEL, Router, routing

from mufleet.fleet import LocalFleet, RestartPolicy
from mufleet.node import NodePorts, TritonNode
from mufleet.repository import RenderParams, render
from mufleet.supervisor_api import SupervisorServer, write_token
from mufleet.triton_dist import locate
from python_backends.sim_engine.faults import FaultSwitches, write_faults

OUT_STATES = ("cordoned", "restarting", "probation", "draining")


@dataclass
class Fleet:
    nodes: list[TritonNode]
    local: LocalFleet
    router: Router
    gpu_files: dict[str, Path]
    home: Path

    def node(self, name: str) -> TritonNode:
        return next(n for n in self.nodes if n.name == name)

    def admin(self) -> list[dict[str, Any]]:
        response = httpx.get(
            self.router.url("/admin/nodes"),
            headers={"Authorization": f"Bearer {ADMIN}"},
            timeout=5,
        )
        response.raise_for_status()
        return list(response.json()["nodes"])

    def states(self) -> dict[str, str]:
        return {n["name"]: n["state"] for n in self.admin()}

    def fault(self, name: str, **switches: object) -> None:
        path = self.node(name).fault_file
        assert path is not None
        write_faults(path, FaultSwitches.model_validate(switches))

    def clear_faults(self) -> None:
        for node in self.nodes:
            assert node.fault_file is not None
            write_faults(node.fault_file, FaultSwitches())

    def wait_state(
        self, name: str, states: tuple[str, ...], timeout: float, since: float | None = None
    ) -> float:
        """Seconds from ``since`` (default now) until ``name`` is in one of ``states``."""
        start = time.monotonic() if since is None else since
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.states()[name] in states:
                return time.monotonic() - start
            time.sleep(0.05)
        raise AssertionError(f"{name} never reached {states} within {timeout} s: {self.admin()}")

    def wait_all_healthy(self, timeout: float = 240.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(s == "healthy" for s in self.states().values()):
                return
            time.sleep(0.2)
        raise AssertionError(f"the fleet did not heal within {timeout} s: {self.admin()}")

    def history(self, name: str) -> list[dict[str, Any]]:
        return list(next(n for n in self.admin() if n["name"] == name).get("history", []))


def health_sections(supervisor_url: str, token_file: Path) -> dict[str, Any]:
    return {
        "health": {
            "machine": {"ramp_s": 2.0, "restart_backoff_s": 0.5},
            "restarters": [
                {"kind": "model_reload", "timeout_s": 30},
                {"kind": "supervisor", "url": supervisor_url, "token_file": str(token_file)},
            ],
        },
        "failover": {"first_token_timeout_s": 10.0, "stall_timeout_s": 5.0},
    }


@contextmanager
def supervised_fleet(
    tokenizer_dir: Path, home: Path, name: str, nodes: int = 4, gpu_agents: int = 1
) -> Iterator[Fleet]:
    params = RenderParams.model_validate(
        {
            "profile": "sim",
            "tokenizer_dir": tokenizer_dir,
            "hardware_profile": TEST_GPU,
            "max_context": 4096,
            "max_batch_size": 8,
        }
    )
    repository = render(params, home / f"repo-{name}")
    triton = locate()
    members = [
        TritonNode(
            name=f"{name}{i}",
            repository=repository,
            triton=triton,
            ports=NodePorts.ephemeral(),
            log_path=home / "logs" / f"{name}{i}.log",
        )
        for i in range(nodes)
    ]
    local = LocalFleet(members=members, policy=RestartPolicy(initial_s=0.5, max_s=5.0))
    token_file = home / f"supervisor-{name}.token"
    token = write_token(token_file)
    server = SupervisorServer(local, token, port=0)
    stop = threading.Event()
    agents: list[subprocess.Popen[str]] = []
    gpu_files: dict[str, Path] = {}

    def supervise() -> None:
        while not stop.wait(0.2):
            local.supervise_once()

    thread = threading.Thread(target=supervise, name="supervise", daemon=True)
    local.start()
    try:
        local.wait_ready(240)
        server.start()
        thread.start()
        urls: dict[str, str] = {}
        for member in members[:gpu_agents]:
            state = home / "gpu" / f"{member.name}.json"
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "mufleet.gpu.agent",
                    "gpu-agent",
                    "--node",
                    member.name,
                    "--port",
                    "0",
                    "--interval",
                    "0.2",
                    "--simulated",
                    str(state),
                ],
                stdout=subprocess.PIPE,
                text=True,
            )
            agents.append(agent)
            assert agent.stdout is not None
            line = agent.stdout.readline()
            assert "ready" in line, line
            urls[member.name] = line.split()[2].rstrip("/")
            gpu_files[member.name] = state
        sections = health_sections(server.url, token_file)
        extra = {node: {"gpu_url": url} for node, url in urls.items()}
        with routing(members, tokenizer_dir, home, name, node_extra=extra, **sections) as router:
            fleet = Fleet(members, local, router, gpu_files, home)
            fleet.wait_all_healthy(60)
            yield fleet
    finally:
        stop.set()
        server.stop()
        for agent in agents:
            agent.send_signal(signal.SIGTERM)
            try:
                agent.wait(timeout=10)
            except subprocess.TimeoutExpired:
                agent.kill()
        local.stop()


@dataclass
class SteadyLoad:
    """Workers sending short streaming completions to the router until stopped."""

    router: Router
    workers: int = 3
    max_tokens: int = 24
    results: list[dict[str, Any]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> SteadyLoad:
        for i in range(self.workers):
            t = threading.Thread(target=self._run, args=(i,), daemon=True)
            t.start()
            self._threads.append(t)
        return self

    def stop(self) -> list[dict[str, Any]]:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=120)
        return self.results

    def _run(self, worker: int) -> None:
        n = 0
        with httpx.Client(timeout=60) as client:
            while not self._stop.is_set() and n < 10_000:
                n += 1
                started = time.monotonic()
                record: dict[str, Any] = {"at": started, "worker": worker}
                try:
                    record.update(self._one(client, f"worker {worker} turn {n}"))
                except Exception as exc:  # every failure is a result
                    record.update(ok=False, error=f"{type(exc).__name__}: {exc}")
                record["s"] = time.monotonic() - started
                with self._lock:
                    self.results.append(record)

    def _one(self, client: httpx.Client, prompt: str) -> dict[str, Any]:
        body = {
            "model": MODEL,
            "prompt": prompt,
            "max_tokens": self.max_tokens,
            "stream": True,
            "temperature": 0,
        }
        headers = {"Authorization": f"Bearer {KEYS['demo']}"}
        text, node, first = "", None, None
        started = time.monotonic()
        with client.stream(
            "POST", self.router.url("/v1/completions"), json=body, headers=headers
        ) as response:
            node = response.headers.get("x-mufleet-node")
            if response.status_code != 200:
                return {
                    "ok": False,
                    "status": response.status_code,
                    "node": node,
                    "error": response.read().decode()[:300],
                }
            done = False
            for line in response.iter_lines():
                if not line.startswith("data: "):
                    continue
                data = line[6:]
                if data == "[DONE]":
                    done = True
                    break
                event = json.loads(data)
                if "error" in event:
                    return {"ok": False, "node": node, "error": str(event["error"])[:300]}
                if first is None:
                    first = time.monotonic() - started
                text += event["choices"][0].get("text", "")
        return {
            "ok": done,
            "node": node,
            "ttft": first,
            "text": text,
            **({} if done else {"error": "stream ended without [DONE]"}),
        }


def failures(results: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in results if not r.get("ok")]
