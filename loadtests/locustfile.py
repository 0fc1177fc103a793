"""mufleet's Locust load tests: LLM users, trace replay and gRPC streaming, with LLM stats.

Run it through ``mufleet load`` (which starts workers, scrapes the router and writes the
report), or directly::

    .venv/bin/locust -f loadtests/locustfile.py --headless -u 8 -r 2 -t 60s \\
        --host http://127.0.0.1:9000 --llm-router-config .mufleet/router.yaml \\
        AgentUser SummaryUser

User classes: ``AgentUser``, ``SummaryUser``, ``ReasoningUser`` (HTTP, ``--llm-target``
openai | kserve | direct), ``TraceReplayUser`` (``--llm-trace``) and ``TritonGrpcUser``.
See ``loadtests/README.md``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import gevent
from grpc_user import TritonGrpcUser
from llm_options import add_arguments, settings
from llm_recorder import RECORDER
from llm_users import AgentUser, ReasoningUser, SummaryUser
from load_shapes import LlmShape, schedule_from
from locust import events
from locust.runners import MasterRunner, WorkerRunner
from locust.stats import CSV_STATS_INTERVAL_SEC
from trace_user import TraceReplayUser, feed_for

__all__ = [
    "AgentUser",
    "LlmShape",
    "ReasoningUser",
    "SummaryUser",
    "TraceReplayUser",
    "TritonGrpcUser",
]


@events.init_command_line_parser.add_listener
def _options(parser: Any) -> None:
    add_arguments(parser)


_feed_ready: list[gevent.Greenlet] = []


@events.init.add_listener
def _role(environment: Any, **_: Any) -> None:
    if isinstance(environment.runner, WorkerRunner):
        RECORDER.role = "worker"
    elif isinstance(environment.runner, MasterRunner):
        RECORDER.role = "master"
    if RECORDER.role != "master" and environment.parsed_options.llm_trace:
        # Reading the trace and the tokenizer takes seconds of CPU: in a native thread, so
        # that the worker keeps answering the master's heartbeats meanwhile.
        pool = gevent.get_hub().threadpool
        _feed_ready.append(gevent.spawn(pool.apply, feed_for, (environment,)))


@events.test_start.add_listener
def _started(environment: Any, **_: Any) -> None:
    RECORDER.started_s = time.time()
    if RECORDER.role != "master":
        gevent.joinall(_feed_ready)
        feed = feed_for(environment)
        if feed is not None:
            feed.start(time.time())  # after it is built: its first requests are due at once
    if RECORDER.role != "worker" and settings(environment).out_dir:
        out = Path(settings(environment).out_dir)
        out.mkdir(parents=True, exist_ok=True)
        meta = {"start_s": RECORDER.started_s, **_run_facts(environment)}
        (out / "llm_meta.json").write_text(json.dumps(meta, indent=2) + "\n")


@events.test_stop.add_listener
def _stopped(environment: Any, **_: Any) -> None:
    RECORDER.stopped_s = time.time()


@events.report_to_master.add_listener
def _ship(client_id: str, data: dict[str, Any]) -> None:
    data["llm_records"] = RECORDER.take_unsent()


@events.worker_report.add_listener
def _gather(client_id: str, data: dict[str, Any]) -> None:
    RECORDER.receive(data.get("llm_records") or [])


@events.quitting.add_listener
def _write(environment: Any, **_: Any) -> None:
    if RECORDER.role == "worker":
        return
    s = settings(environment)
    if s.out_dir:
        RECORDER.write(Path(s.out_dir), s.slo, _run_facts(environment))
    if environment.parsed_options.csv_prefix:
        # Locust rewrites its CSV tables once a second and not at exit: let it make one
        # more pass, or the requests of the last second would be missing from them.
        gevent.sleep(CSV_STATS_INTERVAL_SEC + 0.25)


def _run_facts(environment: Any) -> dict[str, Any]:
    options = environment.parsed_options
    schedule = schedule_from(options)
    return {
        "shape": options.llm_shape,
        "schedule": type(schedule).__name__,
        "duration_s": schedule.duration_s,
        "users": options.num_users,
        "spawn_rate": options.spawn_rate,
        "target": options.llm_target,
        "host": environment.host,
        "user_classes": sorted(c.__name__ for c in environment.user_classes),
        "trace": options.llm_trace or None,
        "rate_scale": options.llm_rate_scale if options.llm_trace else None,
        "block_tokens": options.llm_block_tokens if options.llm_trace else None,
    }
