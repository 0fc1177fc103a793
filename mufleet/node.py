"""One ``tritonserver`` process serving a rendered repository on loopback ports."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from mufleet import paths
from mufleet.triton_dist import TritonDistribution
from python_backends.sim_engine.faults import FAULT_FILE_ENV


class NodeStartError(RuntimeError):
    """The server exited or did not become ready in time."""


@dataclass(frozen=True)
class NodePorts:
    """The three Triton endpoints of one node."""

    http: int = 8000
    grpc: int = 8001
    metrics: int = 8002

    @classmethod
    def for_index(cls, index: int, base: int = 8000) -> NodePorts:
        """Node ``i`` of a local fleet: HTTP ``base+10i``, gRPC ``+1``, metrics ``+2``."""
        first = base + 10 * index
        return cls(first, first + 1, first + 2)

    @classmethod
    def ephemeral(cls) -> NodePorts:
        """Three currently free loopback ports (for tests)."""
        socks = [socket.socket() for _ in range(3)]
        try:
            for s in socks:
                s.bind(("127.0.0.1", 0))
            http, grpc, metrics = (s.getsockname()[1] for s in socks)
        finally:
            for s in socks:
                s.close()
        return cls(http, grpc, metrics)


@dataclass
class TritonNode:
    """A supervised ``tritonserver`` child process.

    The server runs in its own process group so that stopping it also reaches the Python
    backend stubs it spawned, and nothing else.
    """

    name: str
    repository: Path
    triton: TritonDistribution
    ports: NodePorts = field(default_factory=NodePorts)
    host: str = "127.0.0.1"
    log_path: Path | None = None
    extra_args: tuple[str, ...] = ()
    fault_file: Path | None = None
    """Control file of a sim engine's fault switches (default: ``faults/<name>.json``)."""
    process: subprocess.Popen[bytes] | None = None
    _log: IO[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.ports.metrics}/metrics"

    def __post_init__(self) -> None:
        if self.fault_file is None:
            self.fault_file = paths.home() / "faults" / f"{self.name}.json"

    def command(self) -> list[str]:
        """The full ``tritonserver`` command line for this node."""
        return [
            str(self.triton.binary),
            f"--model-repository={self.repository}",
            f"--backend-directory={self.triton.backend_dir}",
            f"--http-address={self.host}",
            f"--grpc-address={self.host}",
            f"--metrics-address={self.host}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            "--model-control-mode=explicit",
            "--load-model=*",
            "--strict-readiness=true",
            "--exit-on-error=true",
            # Every config.pbtxt is complete (rendered from the contract table).
            "--disable-auto-complete-config",
            "--log-verbose=0",
            # Unix-socket shared memory regions are per node: a fleet of nodes on one
            # machine must not collide on the default prefix.
            f"--backend-config=python,shm-region-prefix-name=mufleet_{os.getpid()}_{self.name}_",
            *self.extra_args,
        ]

    def start(self) -> None:
        """Spawn the server (does not wait for readiness)."""
        if self.alive():
            return
        if self.log_path is not None:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            self._log = open(self.log_path, "ab")  # noqa: SIM115 - lives as long as the node
        self.process = subprocess.Popen(
            self.command(),
            env={**self.triton.environment(), FAULT_FILE_ENV: str(self.fault_file)},
            stdout=self._log if self._log else subprocess.DEVNULL,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def ready(self, timeout: float = 2.0) -> bool:
        """Whether ``/v2/health/ready`` answers 200 now."""
        url = f"http://{self.http_url}/v2/health/ready"
        try:
            with urllib.request.urlopen(url, timeout=timeout) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout: float = 180.0) -> None:
        """Block until ready; raise :class:`NodeStartError` with the log tail otherwise."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if not self.alive():
                raise NodeStartError(f"{self.name} exited: {self.log_tail()}")
            if self.ready():
                return
            time.sleep(0.25)
        raise NodeStartError(f"{self.name} not ready after {timeout:.0f}s: {self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        if self.log_path is None or not self.log_path.exists():
            return "(no log)"
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])

    def stop(self, grace: float = 20.0) -> int | None:
        """SIGTERM the server, wait, then SIGKILL its process group if needed."""
        proc = self.process
        if proc is None:
            return None
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        # Stubs left behind by a crashed server share its process group.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
        if self._log is not None:
            self._log.close()
            self._log = None
        return proc.returncode
