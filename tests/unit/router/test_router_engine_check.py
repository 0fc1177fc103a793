"""Unit tests for the router's engine configuration check as the service wires it: a scrape
that lands in the table derates the node, sets the gauges, logs one JSON line and shows in
``/admin/nodes`` (fake pages, no network, no Triton)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from router.api.admin import AdminFront
from router.config import REPOSITORY_ROOT, RouterConfig
from router.cost_model import PairProfile
from router.engine_record import EngineRecord
from router.service import RouterService

SHIPPED = REPOSITORY_ROOT / "profiles" / "llama-3.1-8b_h100-sxm_tp1.json"
PROFILED = EngineRecord(
    engine="sim", hardware_profile="sim_test_gpu", max_num_sequences=64, kv_cache_blocks=4096
)
LABELS = 'model="tensorrt_llm",version="1"'
PLAIN_PAGE = (
    "# TYPE nv_inference_pending_request_count gauge\n"
    f"nv_inference_pending_request_count{{{LABELS}}} 0\n"
)


def node_page(max_num_sequences: int = 4) -> str:
    """A sim node's page: what python_backends/engine_metrics.py exports."""
    config = {"max_num_sequences": max_num_sequences, "kv_cache_blocks": 4096, "time_scale": 1}
    return (
        PLAIN_PAGE
        + "# TYPE mufleet_engine_info gauge\n"
        + 'mufleet_engine_info{engine="sim",engine_version="7",hardware_profile="sim_test_gpu",'
        + f"{LABELS}}} 1\n"
        + "# TYPE mufleet_engine_config gauge\n"
        + "".join(
            f'mufleet_engine_config{{{LABELS},parameter="{k}"}} {v}\n' for k, v in config.items()
        )
    )


def make_service(
    tmp_path: Path, tiny_model_dir: Path, engine: EngineRecord | None, **sections: Any
) -> RouterService:
    base = PairProfile.load(SHIPPED)
    profile = base.model_copy(update={"engine": engine, "capacity_concurrency": 16})
    path = tmp_path / "pair.json"
    profile.save(path)
    config = RouterConfig.model_validate(
        {
            "admin_token": "admin-token-0123456789",
            "tenants": [{"name": "acme", "api_key": "tenant-key-abcdef", "reserved_mu_s": 1.0}],
            "models": [{"name": "tiny", "tokenizer_dir": str(tiny_model_dir)}],
            "pairs": {"p": str(path)},
            "nodes": [
                {
                    "name": f"n{i}",
                    "grpc_url": f"127.0.0.1:{8001 + 10 * i}",
                    "http_url": f"http://127.0.0.1:{8000 + 10 * i}",
                    "metrics_url": f"http://127.0.0.1:{8002 + 10 * i}/metrics",
                    "pair": "p",
                }
                for i in range(2)
            ],
            "health": {"enabled": False},
            **sections,
        }
    )
    return RouterService(config)


@pytest.fixture()
def service_of(tmp_path: Path, tiny_model_dir: Path) -> Iterator[Any]:
    made: list[RouterService] = []

    def make(engine: EngineRecord | None = PROFILED, **sections: Any) -> RouterService:
        made.append(make_service(tmp_path, tiny_model_dir, engine, **sections))
        return made[-1]

    yield make
    for service in made:
        asyncio.run(service.stop_background())


def scrape(service: RouterService, node: str, text: str) -> None:
    async def fetch(url: str) -> str:
        return text

    assert asyncio.run(service.scraper.scrape(node, fetch))


def gauges(service: RouterService) -> dict[str, float]:
    out = {}
    for line in service.metrics.exposition().decode().splitlines():
        if line.startswith("mufleet_router_node_config_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [
        json.loads(r.getMessage())
        for r in caplog.records
        if r.name == "mufleet.router" and r.getMessage().startswith("{")
    ]


def test_a_mismatching_node_is_derated_counted_logged_and_shown(
    service_of: Any, caplog: pytest.LogCaptureFixture
) -> None:
    service = service_of()
    with caplog.at_level(logging.INFO, logger="mufleet.router"):
        scrape(service, "n0", node_page())  # 4 sequences in flight
        scrape(service, "n1", node_page(max_num_sequences=64))
        scrape(service, "n0", node_page())  # the same again: nothing new
    (event,) = events(caplog)
    assert caplog.records[0].levelno == logging.WARNING
    assert (event["event"], event["node"], event["pair"]) == (
        "node_config_mismatch",
        "n0",
        "llama-3.1-8b_h100-sxm_tp1",
    )
    assert event["mismatches"] == [{"parameter": "max_num_sequences", "node": 4, "profile": 64}]
    assert event["capacity_factor"] == 0.25 and "unix_s" in event

    now = time.monotonic()
    snaps = {s.name: s for s in service.table.snapshot(now)}
    assert snaps["n0"].capacity_mu_s == pytest.approx(250.0)
    assert snaps["n1"].capacity_mu_s == pytest.approx(1000.0)
    assert gauges(service) == {
        'mufleet_router_node_config_mismatch{node="n0",parameter="max_num_sequences"}': 1.0,
        'mufleet_router_node_config_capacity_factor{node="n0"}': 0.25,
        'mufleet_router_node_config_capacity_factor{node="n1"}': 1.0,
    }
    view = {v["name"]: v for v in AdminFront(service).node_views(now)}
    n0 = view["n0"]
    assert n0["engine"]["max_num_sequences"] == 4 and n0["engine"]["engine"] == "sim"
    assert n0["profile_engine"] == PROFILED.model_dump()
    assert n0["config_mismatches"] == ["max_num_sequences 4 (profile: 64)"]
    assert (n0["config_check"], n0["config_capacity_factor"]) == ("mismatch", 0.25)
    assert n0["effective_capacity_mu_s"] == pytest.approx(250.0)
    assert (view["n1"]["config_check"], view["n1"]["config_mismatches"]) == ("match", [])

    # Restarted with the profile's configuration: told once, gauges back to 0 and 1.
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="mufleet.router"):
        scrape(service, "n0", node_page(max_num_sequences=64))
    (event,) = events(caplog)
    assert event["event"] == "node_config_match" and caplog.records[0].levelno == logging.INFO
    assert gauges(service)[
        'mufleet_router_node_config_mismatch{node="n0",parameter="max_num_sequences"}'
    ] == (0.0)
    assert service.table.snapshot_of("n0", time.monotonic()).capacity_mu_s == 1000.0


def test_a_profile_without_a_record_warns_once_per_node(
    service_of: Any, caplog: pytest.LogCaptureFixture
) -> None:
    service = service_of(None)
    with caplog.at_level(logging.INFO, logger="mufleet.router"):
        for _ in range(3):
            scrape(service, "n0", node_page())
        scrape(service, "n0", node_page(max_num_sequences=8))
    (event,) = events(caplog)
    assert event["event"] == "node_config_unrecorded" and event["node"] == "n0"
    assert service.table.entry("n0").config_capacity_factor == 1.0


def test_a_page_without_engine_series_is_not_checked(
    service_of: Any, caplog: pytest.LogCaptureFixture
) -> None:
    service = service_of()
    with caplog.at_level(logging.INFO, logger="mufleet.router"):
        scrape(service, "n0", PLAIN_PAGE)
    assert events(caplog) == []
    assert service.table.entry("n0").config_capacity_factor == 1.0
    (n0, _) = AdminFront(service).node_views(time.monotonic())
    assert (n0["engine"], n0["config_check"]) == (None, "unreported")


def test_the_check_can_be_disabled(service_of: Any, caplog: pytest.LogCaptureFixture) -> None:
    service = service_of(engine_check={"enabled": False})
    with caplog.at_level(logging.INFO, logger="mufleet.router"):
        scrape(service, "n0", node_page())
    assert events(caplog) == []
    assert service.table.entry("n0").config_capacity_factor == 1.0
