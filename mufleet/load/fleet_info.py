"""What a load run needs to know about the fleet, read from the router's configuration.

Against the local fleet that is ``$MUFLEET_HOME/router.yaml`` as ``mufleet up`` wrote it:
where the router listens, its nodes, and each node's calibrated capacity in MU/s (the pair
profile). The time scale of sim nodes is read from the nodes themselves: a sim running N
times slower than the GPU it emulates delivers its calibrated MU/s divided by N.
"""

from __future__ import annotations

import urllib.request
from dataclasses import dataclass
from pathlib import Path

from mufleet import paths
from router.config import load_config
from router.cost_model import PairProfile


@dataclass(frozen=True)
class NodeInfo:
    name: str
    http_url: str
    grpc_url: str
    metrics_url: str
    pair: str
    capacity_mu_s: float
    """The pair profile's calibrated capacity (MU/s of emulated or real time)."""


@dataclass(frozen=True)
class FleetInfo:
    config_path: Path
    router_http: str
    """``http://host:port`` of the router."""
    router_grpc: str
    """``host:port`` of the router's gRPC service."""
    model: str
    nodes: tuple[NodeInfo, ...]

    @property
    def capacity_mu_s(self) -> float:
        return sum(n.capacity_mu_s for n in self.nodes)

    @classmethod
    def load(cls, path: Path) -> FleetInfo:
        """Raises :class:`router.config.ConfigError` for a file that is not a router
        configuration."""
        config = load_config(path)
        host = config.listen.host
        nodes = tuple(
            NodeInfo(
                name=n.name,
                http_url=n.http_url,
                grpc_url=n.grpc_url,
                metrics_url=n.metrics_url,
                pair=n.pair,
                capacity_mu_s=PairProfile.load(config.pair_profile_path(n.pair)).capacity_mu_s,
            )
            for n in config.nodes
        )
        return cls(
            config_path=path,
            router_http=f"http://{host}:{config.listen.http_port}",
            router_grpc=f"{host}:{config.listen.grpc_port}",
            model=config.models[0].name,
            nodes=nodes,
        )

    def node(self, name: str) -> NodeInfo:
        for node in self.nodes:
            if node.name == name:
                return node
        raise KeyError(f"no node {name!r}; nodes: {', '.join(n.name for n in self.nodes)}")


def default_config_path() -> Path:
    return paths.home() / "router.yaml"


def time_scale(node: NodeInfo) -> float | None:
    """The node's time scale as its engine model reports it (``None``: unreachable)."""
    from mufleet.calibration.pacing import TimeScale

    try:
        return TimeScale(node.grpc_url).current()
    except Exception:  # any failure to reach or read the node: unknown
        return None


def kv_reused_tokens(nodes: tuple[NodeInfo, ...]) -> int | None:
    """Prompt tokens the nodes have served from their prefix caches so far (reused KV
    blocks × tokens per block, as the engines export them); ``None`` if a node cannot be
    read."""
    from prometheus_client.parser import text_string_to_metric_families

    total = 0
    for node in nodes:
        try:
            with urllib.request.urlopen(node.metrics_url, timeout=2) as response:
                text = response.read().decode("utf-8", "replace")
        except OSError:
            return None
        values: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            if family.name == "nv_trt_llm_kv_cache_block_metrics":
                for sample in family.samples:
                    kind = sample.labels.get("kv_cache_block_type", "")
                    values[kind] = values.get(kind, 0.0) + sample.value
        total += int(values.get("reused", 0.0) * values.get("tokens_per", 0.0))
    return total


def fault_file(node: str) -> Path:
    """The control file ``mufleet fault NODE`` writes for a local sim node."""
    return paths.home() / "faults" / f"{node}.json"
