"""The embedded default router configuration for a local fleet (``mufleet up``).

On first use it writes ``$MUFLEET_HOME/router.yaml`` (mode 0600) with a reserved tenant
``demo``, a best-effort tenant ``batch``, random API keys and an admin token. Later runs
keep the tenants and keys and rewrite only the fleet's part (models, nodes, pairs), so a
key handed out once keeps working.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml

from mufleet.node import TritonNode
from router.config import RouterConfig
from router.cost_model import PairProfile

DEMO_SHARE = 0.5
"""The ``demo`` tenant reserves this share of the fleet's calibrated capacity."""


def _tenants(capacity_mu_s: float) -> list[dict[str, Any]]:
    return [
        {
            "name": "demo",
            "api_key": f"mf-demo-{secrets.token_urlsafe(24)}",
            "tier": "interactive",
            "reserved_mu_s": round(capacity_mu_s * DEMO_SHARE, 3),
            "best_effort": True,
        },
        {
            "name": "batch",
            "api_key": f"mf-batch-{secrets.token_urlsafe(24)}",
            "tier": "batch",
            "reserved_mu_s": 0.0,
            "best_effort": True,
            "max_priority": 4,
        },
    ]


def write_router_config(
    path: Path,
    nodes: Sequence[TritonNode],
    *,
    model_name: str,
    tokenizer_dir: Path,
    pair_profile: Path,
    http_port: int = 9000,
    grpc_port: int = 9001,
    host: str = "127.0.0.1",
    restarters: Sequence[Mapping[str, Any]] | None = None,
) -> RouterConfig:
    """Write (or refresh) the router configuration for ``nodes`` and return it validated.

    ``restarters`` (``health.restarters`` entries) belong to the fleet's part: when given
    they replace the file's, and the other ``health`` keys of the file are kept; when not
    given no ``health`` section is written.
    """
    profile = PairProfile.load(pair_profile)
    existing: dict[str, Any] = {}
    if path.exists():
        loaded = yaml.safe_load(path.read_text())
        existing = loaded if isinstance(loaded, dict) else {}
    data: dict[str, Any] = {
        "listen": {"host": host, "http_port": http_port, "grpc_port": grpc_port},
        "admin_token": existing.get("admin_token") or f"mf-admin-{secrets.token_urlsafe(32)}",
        "tenants": existing.get("tenants") or _tenants(profile.capacity_mu_s * max(len(nodes), 1)),
        "models": [{"name": model_name, "tokenizer_dir": str(tokenizer_dir)}],
        "pairs": {profile.pair: str(pair_profile)},
        "nodes": [
            {
                "name": node.name,
                "grpc_url": node.grpc_url,
                "http_url": f"http://{node.http_url}",
                "metrics_url": node.metrics_url,
                "pair": profile.pair,
                "models": [model_name],
            }
            for node in nodes
        ],
    }
    for key in ("policy", "admission", "priority", "sessions", "scrape", "limits"):
        if key in existing:
            data[key] = existing[key]
    if restarters is not None:
        health = existing.get("health")
        data["health"] = {
            **(health if isinstance(health, dict) else {}),
            "restarters": [dict(r) for r in restarters],
        }
    config = RouterConfig.model_validate(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump(data, out, sort_keys=False)
    os.chmod(path, 0o600)
    return config


def demo_key(config: RouterConfig) -> str:
    for tenant in config.tenants:
        if tenant.name == "demo":
            return tenant.api_key.get_secret_value()
    return config.tenants[0].api_key.get_secret_value()
