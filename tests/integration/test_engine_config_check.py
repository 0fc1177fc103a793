"""The router checks a real node's engine configuration against its pair profile.

A sim node runs 4 sequences in flight (``max_batch_size=4``) while the pair profile the
router is given was measured with the hardware profile's own limit, at a concurrency of 16:
the router reports the ``max_num_sequences`` mismatch with both values (``/admin/nodes``,
``/metrics``, one warning in its log) and grants the node 4/16 of the profile's capacity.
"""

from __future__ import annotations

import json
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from nodes import TEST_GPU, serving, sim_params
from routed import ADMIN, PAIR, Router, routing

from mufleet.node import TritonNode
from router.cost_model import PairProfile
from router.engine_record import EngineRecord

pytestmark = pytest.mark.triton

SLOTS = 4
CONCURRENCY = 16
PROFILED_SEQUENCES = json.loads(TEST_GPU.read_text())["max_num_sequences"]
PAIR_NAME = "llama-3.1-8b_h100-sxm_tp1"
MISMATCH_SERIES = 'mufleet_router_node_config_mismatch{node="%s",parameter="max_num_sequences"}'


@pytest.fixture(scope="module")
def small_node(tiny_model_dir: Path, mufleet_home: Path) -> Iterator[TritonNode]:
    with serving("cfgcheck", sim_params(tiny_model_dir, max_batch_size=SLOTS), mufleet_home) as n:
        yield n


@pytest.fixture(scope="module")
def router(small_node: TritonNode, tiny_model_dir: Path, mufleet_home: Path) -> Iterator[Router]:
    profile = PairProfile.load(PAIR).model_copy(
        update={
            "capacity_concurrency": CONCURRENCY,
            "engine": EngineRecord(
                engine="sim",
                hardware_profile="sim_test_gpu",
                max_num_sequences=PROFILED_SEQUENCES,
            ),
        }
    )
    path = mufleet_home / "pair-cfgcheck.json"
    profile.save(path)
    with routing(
        [small_node],
        tiny_model_dir,
        mufleet_home,
        "cfgcheck",
        pairs={PAIR_NAME: str(path)},
        engine_check={"enabled": True, "untrusted_capacity_factor": 0.5},
    ) as r:
        yield r


def _get(router: Router, path: str, auth: bool = False) -> str:
    request = urllib.request.Request(router.url(path))
    if auth:
        request.add_header("Authorization", f"Bearer {ADMIN}")
    with urllib.request.urlopen(request, timeout=10) as response:
        return str(response.read().decode())


def _until(what: str, probe: Any, timeout_s: float = 15.0) -> Any:
    deadline = time.monotonic() + timeout_s
    while True:
        got = probe()
        if got:
            return got
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.1)


def test_a_node_with_fewer_sequences_than_its_profile_is_derated(
    router: Router, small_node: TritonNode, mufleet_home: Path
) -> None:
    def checked_view() -> dict[str, Any] | None:
        (view,) = json.loads(_get(router, "/admin/nodes", auth=True))["nodes"]
        return view if view["config_check"] == "mismatch" else None

    view = _until("the engine check in /admin/nodes", checked_view)
    assert view["name"] == small_node.name
    assert view["engine"]["engine"] == "sim"
    assert view["engine"]["hardware_profile"] == "sim_test_gpu"
    assert view["engine"]["max_num_sequences"] == SLOTS
    assert view["profile_engine"]["max_num_sequences"] == PROFILED_SEQUENCES
    assert view["config_mismatches"] == [
        f"max_num_sequences {SLOTS} (profile: {PROFILED_SEQUENCES})"
    ]
    assert view["config_capacity_factor"] == pytest.approx(SLOTS / CONCURRENCY)
    assert view["effective_capacity_mu_s"] == pytest.approx(
        view["capacity_mu_s"] * view["capacity_factor"] * SLOTS / CONCURRENCY
    )

    metrics = _get(router, "/metrics")
    assert f"{MISMATCH_SERIES % small_node.name} 1.0" in metrics
    factor = f'mufleet_router_node_config_capacity_factor{{node="{small_node.name}"}} 0.25'
    assert factor in metrics

    log_path = mufleet_home / "logs" / "router-cfgcheck.log"

    def warning() -> dict[str, Any] | None:
        for line in log_path.read_text(errors="replace").splitlines():
            start = line.find('{"event": "node_config_mismatch"')
            if start >= 0 and " mufleet.router " in line[:start]:
                return dict(json.loads(line[start:]))
        return None

    event = _until("the mismatch warning in the router's log", warning, timeout_s=5.0)
    assert (event["node"], event["pair"]) == (small_node.name, PAIR_NAME)
    assert event["mismatches"] == [
        {"parameter": "max_num_sequences", "node": SLOTS, "profile": PROFILED_SEQUENCES}
    ]
    assert event["capacity_factor"] == pytest.approx(SLOTS / CONCURRENCY)
