"""A node's configuration: its endpoints, the pair that prices it and the models it serves."""

from __future__ import annotations

from typing import Any
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from router.fleet.metrics import ENGINE_MODEL

__all__ = ["DEFAULT_MODELS", "NodeConfig"]

DEFAULT_MODELS: tuple[str, ...] = ("ensemble", "tensorrt_llm_bls")
"""The text front doors every node serves."""


def _check_port(port: int | None, what: str, required: bool) -> None:
    if port is None:
        if required:
            raise ValueError(f"{what} needs a port")
        return
    if not 0 < port < 65536:
        raise ValueError(f"{what} has port {port} outside 1..65535")


def _check_http(value: str, what: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https"):
        raise ValueError(f"{what} must start with http:// or https://, got {value!r}")
    if not parts.hostname:
        raise ValueError(f"{what} has no host: {value!r}")
    try:
        port = parts.port
    except ValueError as exc:
        raise ValueError(f"{what} has a bad port: {value!r}") from exc
    _check_port(port, what, required=False)
    return value


class NodeConfig(BaseModel):
    """How to reach one Triton node and what it serves."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    grpc_url: str
    """``host:port`` of the KServe v2 gRPC endpoint (what ``tritonclient.grpc.aio`` takes)."""
    http_url: str
    """``http://host:port`` of the HTTP endpoint (health, repository API)."""
    metrics_url: str
    """``http://host:port/metrics``."""
    pair: str = Field(min_length=1)
    """The pair profile that prices work here: its name, or the path of its JSON file."""
    models: list[str] = Field(default_factory=lambda: list(DEFAULT_MODELS), min_length=1)
    """Triton models the router may send to this node."""
    engine_model: str = Field(default=ENGINE_MODEL, min_length=1)
    """The engine model whose queue and counters the metrics describe."""
    capacity_mu_s: float | None = Field(default=None, gt=0)
    """Overrides the pair profile's capacity (MU/s) for this node."""
    gpu_url: str | None = Field(default=None, min_length=1)
    """The node's ``mufleet gpu-agent`` (``http://host:port``), whose verdict the router reads."""
    pod: str | None = Field(default=None, min_length=1)
    """The node's Kubernetes pod, for the ``kubernetes`` restarter (default: ``name``)."""
    namespace: str | None = Field(default=None, min_length=1)
    """The pod's namespace (default: the ``kubernetes`` restarter's own)."""

    @field_validator("grpc_url")
    @classmethod
    def _grpc(cls, value: str) -> str:
        if "://" in value or "/" in value:
            raise ValueError(f"grpc_url is host:port without a scheme or path, got {value!r}")
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(f"grpc_url must be host:port, got {value!r}")
        _check_port(int(port), "grpc_url", required=True)
        return value

    @field_validator("http_url")
    @classmethod
    def _http(cls, value: str) -> str:
        value = _check_http(value, "http_url").rstrip("/")
        if urlsplit(value).path:
            raise ValueError(f"http_url is http://host:port without a path, got {value!r}")
        return value

    @field_validator("metrics_url")
    @classmethod
    def _metrics(cls, value: str) -> str:
        return _check_http(value, "metrics_url")

    @field_validator("models")
    @classmethod
    def _models(cls, value: list[str]) -> list[str]:
        if any(not m for m in value) or len(set(value)) != len(value):
            raise ValueError(f"models must be distinct non-empty names, got {value}")
        return value

    @classmethod
    def local(
        cls, index: int, pair: str, *, host: str = "127.0.0.1", base_port: int = 8000, **kw: Any
    ) -> NodeConfig:
        """Node ``index`` of a local fleet (HTTP ``base+10i``, gRPC ``+1``, metrics ``+2``)."""
        first = base_port + 10 * index
        kw.setdefault("name", f"node{index}")
        return cls(
            grpc_url=f"{host}:{first + 1}",
            http_url=f"http://{host}:{first}",
            metrics_url=f"http://{host}:{first + 2}/metrics",
            pair=pair,
            **kw,
        )
