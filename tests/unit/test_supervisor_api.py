"""Unit tests for the supervisor's control API (a real server on an ephemeral loopback port
in front of a fake fleet) and for the router configuration that points at it."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from mufleet import paths
from mufleet.fleet import NodeStatus, UnknownNodeError
from mufleet.node import NodePorts, TritonNode
from mufleet.router_setup import write_router_config
from mufleet.supervisor_api import SupervisorServer, token_path, write_token
from mufleet.triton_dist import TritonDistribution
from router.config import RouterConfig

TOKEN = "test-token-0123456789"


@dataclass
class FakeFleet:
    """Two nodes; ``restart`` records its calls and gives the node a new pid."""

    nodes: dict[str, NodeStatus] = field(
        default_factory=lambda: {
            n: NodeStatus(name=n, pid=100 + i, alive=True, restarts=0)
            for i, n in enumerate(("node0", "node1"))
        }
    )
    calls: list[tuple[str, str]] = field(default_factory=list)
    error: Exception | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def status(self) -> list[NodeStatus]:
        with self.lock:
            return list(self.nodes.values())

    def restart(self, name: str, reason: str = "") -> None:
        with self.lock:
            if name not in self.nodes:
                raise UnknownNodeError(f"no node {name!r}")
            if self.error is not None:
                raise self.error
            self.calls.append((name, reason))
            old = self.nodes[name]
            self.nodes[name] = NodeStatus(name, (old.pid or 0) + 1000, True, old.restarts + 1)


@pytest.fixture
def fleet() -> FakeFleet:
    return FakeFleet()


@pytest.fixture
def server(fleet: FakeFleet) -> Iterator[SupervisorServer]:
    server = SupervisorServer(fleet, TOKEN, port=0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def client(server: SupervisorServer) -> Iterator[httpx.Client]:
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with httpx.Client(base_url=server.url, headers=auth, timeout=10) as client:
        yield client


def test_lists_the_nodes(client: httpx.Client) -> None:
    response = client.get("/nodes")

    assert response.status_code == 200
    assert response.json() == [
        {"name": "node0", "pid": 100, "alive": True, "restarts": 0},
        {"name": "node1", "pid": 101, "alive": True, "restarts": 0},
    ]


def test_restart_calls_the_fleet_and_answers_the_new_process(
    client: httpx.Client, fleet: FakeFleet
) -> None:
    response = client.post("/nodes/node1/restart", json={"reason": "canary failed"})

    assert response.status_code == 200, response.text
    assert fleet.calls == [("node1", "canary failed")]
    assert response.json() == {
        "name": "node1",
        "pid": 1101,
        "alive": True,
        "restarts": 1,
        "reason": "canary failed",
    }


def test_restart_without_a_body(client: httpx.Client, fleet: FakeFleet) -> None:
    assert client.post("/nodes/node0/restart").status_code == 200
    assert fleet.calls == [("node0", "")]


@pytest.mark.parametrize(
    "headers",
    [{}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}, {"Authorization": "Basic x"}],
)
def test_no_or_a_wrong_token_is_401(
    server: SupervisorServer, fleet: FakeFleet, headers: dict[str, str]
) -> None:
    for method, path in (("GET", "/nodes"), ("POST", "/nodes/node0/restart"), ("GET", "/x")):
        response = httpx.request(method, f"{server.url}{path}", headers=headers, timeout=10)
        assert response.status_code == 401, (method, path)
        assert response.headers["www-authenticate"] == "Bearer"
    assert fleet.calls == []


def test_an_unknown_node_is_404(client: httpx.Client, fleet: FakeFleet) -> None:
    response = client.post("/nodes/node9/restart")

    assert response.status_code == 404
    assert "node9" in response.json()["error"]
    assert fleet.calls == []


@pytest.mark.parametrize("path", ["/", "/nodes/node0", "/nodes/node0/stop", "/healthz"])
def test_an_unknown_endpoint_is_404(client: httpx.Client, path: str) -> None:
    assert client.get(path).status_code == 404


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("POST", "/nodes", "GET"),
        ("DELETE", "/nodes", "GET"),
        ("GET", "/nodes/node0/restart", "POST"),
        ("PUT", "/nodes/node0/restart", "POST"),
    ],
)
def test_a_wrong_method_is_405(
    client: httpx.Client, fleet: FakeFleet, method: str, path: str, allow: str
) -> None:
    response = client.request(method, path)

    assert response.status_code == 405
    assert response.headers["allow"] == allow
    assert fleet.calls == []


@pytest.mark.parametrize(
    ("body", "needle"),
    [(b"{not json", "not JSON"), (b"[1]", "JSON object"), (b'{"reason": 3}', "string")],
)
def test_a_bad_body_is_400(
    client: httpx.Client, fleet: FakeFleet, body: bytes, needle: str
) -> None:
    response = client.post("/nodes/node0/restart", content=body)

    assert response.status_code == 400
    assert needle in response.json()["error"]
    assert fleet.calls == []


def test_a_failing_restart_is_500_with_the_reason(client: httpx.Client, fleet: FakeFleet) -> None:
    fleet.error = RuntimeError("could not spawn")

    response = client.post("/nodes/node0/restart")

    assert response.status_code == 500
    assert "could not spawn" in response.json()["error"]


def test_the_server_listens_on_loopback_only(server: SupervisorServer) -> None:
    assert server.url.startswith("http://127.0.0.1:")
    assert server.port > 0


def test_a_port_in_use_fails_at_construction(server: SupervisorServer, fleet: FakeFleet) -> None:
    with pytest.raises(OSError):
        SupervisorServer(fleet, TOKEN, port=server.port)


def test_an_empty_token_is_refused(fleet: FakeFleet) -> None:
    with pytest.raises(ValueError):
        SupervisorServer(fleet, "", port=0)


def test_the_token_file_is_private_and_new_each_time(mufleet_home: Path) -> None:
    first = write_token()
    path = token_path()
    path.chmod(0o644)
    second = write_token()

    assert path == mufleet_home / "supervisor.token"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_text().strip() == second != first
    assert len(second) >= 32


def test_concurrent_restarts_all_reach_the_fleet(client: httpx.Client, fleet: FakeFleet) -> None:
    results: list[Any] = []

    def restart(name: str) -> None:
        with httpx.Client(base_url=str(client.base_url), headers=client.headers) as own:
            results.append(own.post(f"/nodes/{name}/restart", timeout=10).status_code)

    threads = [threading.Thread(target=restart, args=(n,)) for n in ("node0", "node1") * 3]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)

    assert results == [200] * 6
    assert sorted(fleet.calls) == sorted([("node0", ""), ("node1", "")] * 3)
    assert json.loads(client.get("/nodes").text)[0]["restarts"] == 3


# --- the router configuration written by ``mufleet up`` ------------------------------------


def _write_config(path: Path, tokenizer_dir: Path, **kw: Any) -> RouterConfig:
    dist = TritonDistribution(
        binary=path.parent / "tritonserver",
        backend_dir=path.parent,
        library_dirs=(),
        python_bin_dir=path.parent,
    )
    nodes = [
        TritonNode(name="node0", repository=path.parent, triton=dist, ports=NodePorts(8500, 1, 2))
    ]
    return write_router_config(
        path,
        nodes,
        model_name="tiny-llama",
        tokenizer_dir=tokenizer_dir,
        pair_profile=paths.profiles() / "tiny-llama_cpu-2core.json",
        **kw,
    )


def test_router_config_has_no_health_section_without_restarters(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    path = tmp_path / "router.yaml"

    _write_config(path, tiny_model_dir)

    assert "health" not in yaml.safe_load(path.read_text())


def test_router_config_lists_the_restarters_and_keeps_other_health_keys(
    tmp_path: Path, tiny_model_dir: Path
) -> None:
    path = tmp_path / "router.yaml"
    chain = [
        {"kind": "model_reload"},
        {"kind": "supervisor", "url": "http://127.0.0.1:9010", "token_file": str(tmp_path / "t")},
    ]
    _write_config(path, tiny_model_dir, restarters=[{"kind": "model_reload"}])
    data = yaml.safe_load(path.read_text())
    data["health"]["tick_s"] = 0.2  # an operator's setting
    path.write_text(yaml.safe_dump(data))

    config = _write_config(path, tiny_model_dir, restarters=chain)

    assert yaml.safe_load(path.read_text())["health"] == {"tick_s": 0.2, "restarters": chain}
    assert [r.kind for r in config.health.restarters] == ["model_reload", "supervisor"]
    assert config.health.tick_s == 0.2
