"""``mufleet up``: two supervised nodes that answer, survive a crash and stop on Ctrl-C."""

from __future__ import annotations

import os
import signal
import socket
import stat
import subprocess
import sys
import time
from pathlib import Path

import openai
import psutil
import pytest
import yaml
from clients import http_json

from mufleet.node import NodePorts

pytestmark = pytest.mark.triton


def _free_base_port(nodes: int) -> int:
    """A base port whose ``10 * nodes`` successors are all free on loopback."""
    for base in range(21000, 40000, 100):
        try:
            socks = []
            for port in range(base, base + 10 * nodes):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def _wait_for_line(proc: subprocess.Popen[str], needle: str, timeout: float) -> list[str]:
    lines: list[str] = []
    deadline = time.monotonic() + timeout
    assert proc.stdout is not None
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            if proc.poll() is not None:
                break
            continue
        lines.append(line)
        if needle in line:
            return lines
    raise AssertionError(f"{needle!r} not seen; output: {''.join(lines)}")


def _generate(port: int) -> int:
    status, _ = http_json(
        f"http://127.0.0.1:{port}/v2/models/ensemble/generate",
        {"text_input": "hello node", "max_tokens": 4},
    )
    return status


def test_up_supervises_two_nodes_behind_the_router(
    tiny_model_dir: Path, mufleet_home: Path
) -> None:
    base = _free_base_port(2)
    router_ports = NodePorts.ephemeral()
    config = mufleet_home / "local-router.yaml"
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mufleet.cli",
            "up",
            "--nodes",
            "2",
            "--base-port",
            str(base),
            "--model-dir",
            str(tiny_model_dir),
            "--max-batch-size",
            "2",
            "--router-config",
            str(config),
            "--router-http-port",
            str(router_ports.http),
            "--router-grpc-port",
            str(router_ports.grpc),
            "--supervisor-port",
            "0",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "MUFLEET_HOME": str(mufleet_home)},
    )
    try:
        _wait_for_line(proc, "fleet ready", timeout=300)
        assert _generate(base) == 200
        assert _generate(base + 10) == 200
        assert stat.S_IMODE(config.stat().st_mode) == 0o600, "the keys file is private"
        keys = {t["name"]: t["api_key"] for t in yaml.safe_load(config.read_text())["tenants"]}
        assert set(keys) == {"demo", "batch"}
        client = openai.OpenAI(
            base_url=f"http://127.0.0.1:{router_ports.http}/v1", api_key=keys["demo"]
        )
        reply = client.chat.completions.create(
            model="tiny-llama", messages=[{"role": "user", "content": "hi"}], max_tokens=4
        )
        assert reply.usage is not None and reply.usage.completion_tokens == 4

        servers = [p for p in psutil.Process(proc.pid).children() if p.name() == "tritonserver"]
        assert len(servers) == 2
        node1 = next(p for p in servers if f"--http-port={base + 10}" in p.cmdline())
        node1.kill()
        _wait_for_line(proc, "node1 restarted", timeout=60)
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline:
            try:
                if _generate(base + 10) == 200:
                    break
            except OSError:
                pass
            time.sleep(0.5)
        assert _generate(base + 10) == 200
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 0
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", base), timeout=2).close()
