"""Locust command lines, the locustfile's settings, durations and the fault timeline."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import yaml
from llm_options import read_router_config, settings_from

from mufleet.load.cli import _seconds
from mufleet.load.faults import FaultTimer
from mufleet.load.locust_run import LocustPlan, master_command, worker_command


def _plan(tmp_path: Path, workers: int) -> LocustPlan:
    return LocustPlan(
        host="http://127.0.0.1:9000",
        users=12,
        spawn_rate=4.0,
        duration_s=90.0,
        out_dir=tmp_path,
        classes=("AgentUser", "SummaryUser"),
        llm_args=("--llm-router-config", "/x/router.yaml"),
        workers=workers,
        master_port=5600,
    )


def test_a_single_process_run(tmp_path: Path) -> None:
    command = master_command(_plan(tmp_path, 0))
    assert "--master" not in command and "--headless" in command
    assert command[-2:] == ["AgentUser", "SummaryUser"]
    assert command[command.index("--csv") + 1] == str(tmp_path / "stats")
    assert command[command.index("--run-time") + 1] == "90s"
    assert "--html" in command and "--csv-full-history" in command


def test_distributed_runs_bind_the_master_to_loopback_and_share_options(tmp_path: Path) -> None:
    plan = _plan(tmp_path, 3)
    master, worker = master_command(plan), worker_command(plan)
    assert master[master.index("--master-bind-host") + 1] == "127.0.0.1"
    assert master[master.index("--expect-workers") + 1] == "3"
    assert "--worker" in worker and worker[worker.index("--master-port") + 1] == "5600"
    for command in (master, worker):
        assert command[command.index("--llm-workers") + 1] == "3"
        assert command[command.index("--llm-duration") + 1] == "90"
        assert "/x/router.yaml" in command
    assert "AgentUser" not in worker, "the master picks the classes"


class _Options:
    def __init__(self, config: Path, **values: object) -> None:
        defaults = dict(
            llm_router_config=str(config),
            llm_nodes="",
            llm_target="openai",
            llm_slo_ttft_ms=1000.0,
            llm_slo_tpot_ms=0.0,
            llm_slo_e2e_ms=0.0,
            llm_model="tiny-llama",
            llm_triton_model="ensemble",
            llm_grpc_url="",
            llm_tenants="",
            llm_request_timeout=60.0,
            llm_session_budget_mu=10.0,
            llm_session_ttl=60.0,
            llm_max_context=1000,
            llm_tokenizer="",
            llm_out="",
            llm_seed=0,
        )
        self.__dict__.update({**defaults, **values})


def _config(tmp_path: Path) -> Path:
    path = tmp_path / "router.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "listen": {"host": "127.0.0.1", "http_port": 9000, "grpc_port": 9001},
                "tenants": [
                    {"name": "demo", "api_key": "key-demo"},
                    {"name": "batch", "api_key": "key-batch"},
                ],
                "models": [{"name": "tiny-llama", "tokenizer_dir": "/models/tiny"}],
                "nodes": [
                    {
                        "name": "n0",
                        "http_url": "http://127.0.0.1:8000",
                        "grpc_url": "127.0.0.1:8001",
                    }
                ],
            }
        )
    )
    return path


def test_settings_take_keys_from_the_router_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("MUFLEET_API_KEY", raising=False)
    config = _config(tmp_path)
    facts = read_router_config(str(config))
    assert facts.grpc_url == "127.0.0.1:9001" and facts.tokenizer_dir == "/models/tiny"
    s = settings_from(_Options(config, llm_tenants="AgentUser=batch"))
    assert s.key_for(s.tenant_for("AgentUser")) == "key-batch"
    assert s.key_for(s.tenant_for("ReasoningUser")) == "key-demo"
    assert s.slo.ttft_s == 1.0 and s.slo.tpot_s is None
    direct = settings_from(_Options(config, llm_target="direct"))
    assert direct.key_for("demo") is None and direct.node_urls == ("http://127.0.0.1:8000",)
    monkeypatch.setenv("MUFLEET_API_KEY", "shared")
    assert settings_from(_Options(config)).key_for("batch") == "shared"
    with pytest.raises(ValueError, match="CLASS=TENANT"):
        settings_from(_Options(config, llm_tenants="AgentUser"))


def test_durations() -> None:
    assert _seconds("90") == 90.0 and _seconds("90s") == 90.0 and _seconds("2m") == 120.0
    for bad in ("soon", "0", "-5s"):
        with pytest.raises(Exception, match="duration"):
            _seconds(bad)


def test_the_fault_timer_hangs_then_clears_from_the_tests_start(tmp_path: Path) -> None:
    meta, faults = tmp_path / "llm_meta.json", tmp_path / "faults" / "node1.json"
    timer = FaultTimer("node1", faults, meta, at_s=0.2, clear_s=0.5)
    timer.start()
    time.sleep(0.1)
    assert not faults.exists(), "nothing before the test has started"
    meta.write_text(json.dumps({"start_s": time.time()}))
    time.sleep(0.4)
    assert json.loads(faults.read_text())["hang"] is True
    timer.join(timeout=2)
    assert json.loads(faults.read_text())["hang"] is False
    assert 0.2 <= timer.applied["hang"] < timer.applied["clear"] < 1.0
    with pytest.raises(ValueError):
        FaultTimer("node1", faults, meta, at_s=5.0, clear_s=5.0)
