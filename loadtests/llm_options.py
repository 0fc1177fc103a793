"""The locustfile's own command-line options (``--llm-…``) and the settings read from them.

Locust parses them next to its own (``events.init_command_line_parser``), on the master and
on every worker; ``mufleet load`` passes the same ones to each process. Secrets never go on
the command line: tenant keys come from the router configuration file named by
``--llm-router-config`` (``mufleet up`` writes one), or from ``MUFLEET_API_KEY`` for all
tenants of a remote fleet.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from mufleet.load.metrics import Slo
from mufleet.load.shapes import SHAPES

TARGETS = ("openai", "kserve", "direct")
"""How HTTP users call: the router's OpenAI API, the router's KServe v2 API, or Triton
nodes' KServe v2 API directly (no router, no tenants, no sessions)."""

DEFAULT_TENANTS = {
    "AgentUser": "demo",
    "ReasoningUser": "demo",
    "TraceReplayUser": "demo",
    "SummaryUser": "batch",
    "TritonGrpcUser": "batch",
}
"""Which tenant each user class speaks for: interactive work on the reserved tenant, bulk
work on the best-effort one."""


def add_arguments(parser: Any) -> None:
    """Register the options on Locust's parser (a ``configargparse`` parser)."""
    group = parser.add_argument_group("mufleet LLM load")
    add = group.add_argument
    add("--llm-target", choices=TARGETS, default="openai", help="front door of HTTP users")
    add("--llm-model", default="tiny-llama", help="OpenAI model name")
    add("--llm-triton-model", default="ensemble", help="KServe model (router or node)")
    add("--llm-nodes", default="", help="direct target: comma-separated node HTTP URLs")
    add("--llm-grpc-url", default="", help="TritonGrpcUser: HOST:PORT (router or node)")
    add("--llm-router-config", default="", help="router YAML holding the tenant keys")
    add("--llm-tenants", default="", help="CLASS=TENANT,… overriding the default tenants")
    add("--llm-slo-ttft-ms", type=float, default=1000.0, help="SLO: TTFT threshold")
    add("--llm-slo-tpot-ms", type=float, default=50.0, help="SLO: TPOT threshold")
    add("--llm-slo-e2e-ms", type=float, default=0.0, help="SLO: E2E threshold (0: none)")
    add("--llm-request-timeout", type=float, default=60.0, help="seconds per request")
    add("--llm-session-budget-mu", type=float, default=5000.0, help="agent session budget")
    add("--llm-session-ttl", type=float, default=120.0, help="agent session idle TTL (s)")
    add("--llm-max-context", type=int, default=1536, help="agent: tokens before a new task")
    add("--llm-shape", choices=SHAPES, default="steady", help="load schedule")
    add("--llm-steps", type=int, default=6, help="step shape: number of steps")
    add("--llm-drain", type=float, default=15.0, help="trace shape: seconds of drain")
    add(
        "--llm-duration",
        type=float,
        default=0.0,
        help="test length in seconds for workers, which do not get --run-time (0: --run-time)",
    )
    add("--llm-trace", default="", help="trace file (Mooncake JSONL or Azure CSV)")
    add("--llm-trace-start", type=float, default=0.0, help="trace seconds to start at")
    add("--llm-rate-scale", type=float, default=1.0, help="trace: arrival-rate multiplier")
    add("--llm-block-tokens", type=int, default=32, help="trace: tokens per hash-id block")
    add("--llm-max-input", type=int, default=1536, help="trace: prompt token cap")
    add("--llm-max-output", type=int, default=128, help="trace: output token cap")
    add("--llm-tokenizer", default="", help="trace: tokenizer directory (default: router's)")
    add("--llm-workers", type=int, default=1, help="worker processes sharing a trace")
    add("--llm-out", default="", help="folder for llm_requests.csv and llm_summary.csv")
    add("--llm-seed", type=int, default=0, help="seed of prompts and think times")


def duration_s(options: Any, default: float = 60.0) -> float:
    """The test's length: ``--run-time`` on a master or standalone run, ``--llm-duration``
    on workers (Locust does not forward the run time to them)."""
    return float(options.llm_duration or options.run_time or default)


def _tenant_map(text: str) -> dict[str, str]:
    tenants = dict(DEFAULT_TENANTS)
    for item in filter(None, (part.strip() for part in text.split(","))):
        cls, sep, tenant = item.partition("=")
        if not sep or not cls or not tenant:
            raise ValueError(f"--llm-tenants wants CLASS=TENANT pairs, got {item!r}")
        tenants[cls] = tenant
    return tenants


@dataclass(frozen=True)
class RouterFacts:
    """What the locustfile reads from a router configuration file."""

    keys: dict[str, str] = field(default_factory=dict)
    grpc_url: str = ""
    node_urls: tuple[str, ...] = ()
    node_grpc_urls: tuple[str, ...] = ()
    tokenizer_dir: str = ""


def read_router_config(path: str) -> RouterFacts:
    if not path:
        return RouterFacts()
    data = yaml.safe_load(Path(path).read_text()) or {}
    listen = data.get("listen") or {}
    grpc = (
        f"{listen.get('host', '127.0.0.1')}:{listen['grpc_port']}" if "grpc_port" in listen else ""
    )
    models = data.get("models") or [{}]
    return RouterFacts(
        keys={t["name"]: str(t["api_key"]) for t in data.get("tenants") or []},
        grpc_url=grpc,
        node_urls=tuple(n["http_url"] for n in data.get("nodes") or [] if n.get("http_url")),
        node_grpc_urls=tuple(n["grpc_url"] for n in data.get("nodes") or [] if n.get("grpc_url")),
        tokenizer_dir=str(models[0].get("tokenizer_dir", "")),
    )


@dataclass(frozen=True)
class LlmSettings:
    target: str
    model: str
    triton_model: str
    node_urls: tuple[str, ...]
    node_grpc_urls: tuple[str, ...]
    grpc_url: str
    tenants: dict[str, str]
    keys: dict[str, str]
    shared_key: str | None
    slo: Slo
    request_timeout_s: float
    session_budget_mu: float
    session_ttl_s: float
    max_context_tokens: int
    tokenizer_dir: str
    out_dir: str
    seed: int

    def tenant_for(self, user_class: str) -> str:
        return self.tenants.get(user_class, "demo")

    def key_for(self, tenant: str) -> str | None:
        """The API key to send for ``tenant`` (``None``: send none, as to a bare node)."""
        if self.target == "direct":
            return None
        return self.shared_key or self.keys.get(tenant)

    @property
    def routed(self) -> bool:
        return self.target != "direct"


def settings_from(options: Any) -> LlmSettings:
    facts = read_router_config(options.llm_router_config)
    nodes = tuple(u for u in options.llm_nodes.split(",") if u) or facts.node_urls
    slo = Slo(
        ttft_s=options.llm_slo_ttft_ms / 1e3 if options.llm_slo_ttft_ms > 0 else None,
        tpot_s=options.llm_slo_tpot_ms / 1e3 if options.llm_slo_tpot_ms > 0 else None,
        e2e_s=options.llm_slo_e2e_ms / 1e3 if options.llm_slo_e2e_ms > 0 else None,
    )
    return LlmSettings(
        target=options.llm_target,
        model=options.llm_model,
        triton_model=options.llm_triton_model,
        node_urls=nodes,
        node_grpc_urls=facts.node_grpc_urls,
        grpc_url=options.llm_grpc_url or facts.grpc_url,
        tenants=_tenant_map(options.llm_tenants),
        keys=facts.keys,
        shared_key=os.environ.get("MUFLEET_API_KEY") or None,
        slo=slo,
        request_timeout_s=options.llm_request_timeout,
        session_budget_mu=options.llm_session_budget_mu,
        session_ttl_s=options.llm_session_ttl,
        max_context_tokens=options.llm_max_context,
        tokenizer_dir=options.llm_tokenizer or facts.tokenizer_dir,
        out_dir=options.llm_out,
        seed=options.llm_seed,
    )


_cache: dict[int, LlmSettings] = {}


def settings(environment: Any) -> LlmSettings:
    """The settings of this Locust process (read once from its parsed options)."""
    options = environment.parsed_options
    key = id(options)
    if key not in _cache:
        _cache[key] = settings_from(options)
    return _cache[key]
