"""The fleet as the router sees it: node metrics, the node table and the metrics scraper.

:mod:`router.fleet.metrics` parses a node's Prometheus page (pure), :mod:`router.fleet.table`
holds per-node state, ledgers and snapshots for policies (pure), and
:mod:`router.fleet.scraper` polls every node into the table (asyncio), and
:mod:`router.fleet.engine_check` judges each node's engine configuration against its pair
profile's (pure).
"""

from router.fleet.engine_check import EngineCheck, EngineVerdict
from router.fleet.metrics import (
    ENGINE_MODEL,
    MetricsDelta,
    MetricsParseError,
    NodeMetrics,
    delta,
    parse_node_metrics,
)
from router.fleet.scraper import Fetch, HttpxFetch, MetricsScraper
from router.fleet.table import (
    DEFAULT_MODELS,
    NodeConfig,
    NodeEntry,
    NodeTable,
    Transition,
    UnknownNodeError,
)

__all__ = [
    "DEFAULT_MODELS",
    "ENGINE_MODEL",
    "EngineCheck",
    "EngineVerdict",
    "Fetch",
    "HttpxFetch",
    "MetricsDelta",
    "MetricsParseError",
    "MetricsScraper",
    "NodeConfig",
    "NodeEntry",
    "NodeMetrics",
    "NodeTable",
    "Transition",
    "UnknownNodeError",
    "delta",
    "parse_node_metrics",
]
