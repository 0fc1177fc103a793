"""Running Locust headless: one process, or a master and N workers on loopback.

One Python process drives a few hundred streaming users at most (gevent on one core), so
``--workers N`` starts Locust's distributed mode: a master (``--master``, bound to
127.0.0.1, waiting for ``--expect-workers N``) that runs the shape and writes the CSVs and
the HTML report, and N ``--worker`` processes that run the users. Every process gets the
same ``--llm-…`` options (Locust forwards custom options to workers only once a test has
started).
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

LOCUSTFILE = Path(__file__).resolve().parents[2] / "loadtests" / "locustfile.py"


@dataclass(frozen=True)
class LocustPlan:
    host: str
    users: int
    spawn_rate: float
    duration_s: float
    out_dir: Path
    classes: tuple[str, ...]
    llm_args: tuple[str, ...]
    workers: int = 0
    master_port: int = 5557
    stop_timeout_s: float = 30.0
    locustfile: Path = LOCUSTFILE


def master_command(plan: LocustPlan) -> list[str]:
    """The master's (or the single process's) command line."""
    command = [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(plan.locustfile),
        "--headless",
        "--host",
        plan.host,
        "--users",
        str(plan.users),
        "--spawn-rate",
        f"{plan.spawn_rate:g}",
        "--run-time",
        f"{round(plan.duration_s)}s",
        "--stop-timeout",
        f"{round(plan.stop_timeout_s)}",
        "--csv",
        str(plan.out_dir / "stats"),
        "--csv-full-history",
        "--html",
        str(plan.out_dir / "report.html"),
        "--only-summary",
        *plan.llm_args,
        "--llm-duration",
        f"{round(plan.duration_s)}",
    ]
    if plan.workers > 0:
        command += [
            "--master",
            "--master-bind-host",
            "127.0.0.1",
            "--master-bind-port",
            str(plan.master_port),
            "--expect-workers",
            str(plan.workers),
            "--llm-workers",
            str(plan.workers),
        ]
    return [*command, *plan.classes]


def worker_command(plan: LocustPlan) -> list[str]:
    return [
        sys.executable,
        "-m",
        "locust",
        "-f",
        str(plan.locustfile),
        "--worker",
        "--master-host",
        "127.0.0.1",
        "--master-port",
        str(plan.master_port),
        *plan.llm_args,
        "--llm-duration",
        f"{round(plan.duration_s)}",
        "--llm-workers",
        str(plan.workers),
    ]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LocustRun:
    """The running processes of one plan; their output goes to ``locust*.log``."""

    def __init__(self, plan: LocustPlan) -> None:
        self.plan = plan
        self.processes: list[subprocess.Popen[bytes]] = []
        self._logs: list[IO[bytes]] = []

    def _spawn(self, command: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        out = open(log, "wb")  # noqa: SIM115 - closed in wait()
        self._logs.append(out)
        process = subprocess.Popen(list(command), stdout=out, stderr=subprocess.STDOUT)
        self.processes.append(process)
        return process

    def start(self) -> None:
        self.plan.out_dir.mkdir(parents=True, exist_ok=True)
        self._spawn(master_command(self.plan), self.plan.out_dir / "locust.log")
        for i in range(self.plan.workers):
            self._spawn(worker_command(self.plan), self.plan.out_dir / f"locust-worker{i}.log")

    def wait(self, timeout_s: float) -> int:
        """The master's exit code; every process is ended (killed past ``timeout_s``)."""
        master = self.processes[0]
        try:
            code = master.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            master.kill()
            code = master.wait()
        for worker in self.processes[1:]:
            try:
                worker.wait(timeout=15)
            except subprocess.TimeoutExpired:
                worker.kill()
                worker.wait()
        for log in self._logs:
            with contextlib.suppress(OSError):
                log.close()
        return code

    def stop(self) -> None:
        """Ask every process to stop (Ctrl-C): Locust then writes what it has."""
        for process in self.processes:
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
