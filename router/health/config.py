"""The ``health:`` section of the router's configuration: every probe and the machine.

Each probe has its own interval, timeout and thresholds; the defaults find a zombie node in
seconds on a loopback fleet (see ``router/health/README.md`` for the arithmetic) and are
meant to be tuned per fleet, not per trace.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from router.health.restarters.model_reload import ModelReloadConfig
from router.health.restarters.registry import RestarterConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ReadinessConfig(_Strict):
    """Triton's ``/v2/health/ready`` and the engine model's ready endpoint."""

    enabled: bool = True
    interval_s: float = Field(0.5, gt=0)
    timeout_s: float = Field(0.5, gt=0)
    fail_after: int = Field(2, ge=1, description="unanswered or not-ready probes in a row")


class CanaryConfig(_Strict):
    """A real short streaming request through the ensemble at the top Triton priority."""

    enabled: bool = True
    model: str = "ensemble"
    interval_s: float = Field(1.0, gt=0, description="cadence, whatever the traffic")
    jitter: float = Field(0.2, ge=0, lt=1, description="± fraction of the interval")
    probation_interval_s: float = Field(0.5, gt=0)
    first_token_deadline_s: float = Field(0.75, gt=0, description="the floor of the deadline")
    adaptive_factor: float = Field(
        4.0,
        ge=1,
        description="the deadline is at least this times the fleet's median canary "
        "first-token time, so a fleet-wide slowdown fails no canary",
    )
    total_deadline_s: float = Field(3.0, gt=0, description="for the whole answer")
    max_tokens: int = Field(4, ge=1, le=64)
    prompt: str = "mufleet canary: reply with a few words"
    fail_after: int = Field(2, ge=1, description="failed canaries in a row before FAIL")
    priority: int = Field(1, ge=1, description="Triton level (1 is the top)")


class MetricsProbeConfig(_Strict):
    """Judgements on the scraped ``/metrics`` (the scraper's interval is ``scrape:``)."""

    enabled: bool = True
    no_progress_s: float = Field(
        2.0, gt=0, description="work waiting and nothing finishing for this long: suspect"
    )
    scrape_failures_suspect: int = Field(2, ge=1)
    failure_rate_suspect: float = Field(
        0.5, gt=0, le=1, description="failures / (failures + successes) over a scrape interval"
    )


class PassiveConfig(_Strict):
    """Outlier detection on real traffic (a client's 4xx never counts)."""

    enabled: bool = True
    stall_s: float = Field(
        1.0, gt=0, description="requests in flight and no token from the node for this long"
    )
    consecutive_faults_suspect: int = Field(3, ge=1)
    window_s: float = Field(10.0, gt=0)
    min_samples: int = Field(8, ge=1)
    error_rate_suspect: float = Field(0.2, gt=0, le=1)
    error_rate_fail: float = Field(0.5, gt=0, le=1)
    garbage_fail: int = Field(2, ge=1, description="garbage answers in the window: FAIL")
    ttft_decay_factor: float = Field(
        3.0, gt=1, description="median TTFT over the node's own baseline that makes it suspect"
    )
    ttft_fleet_factor: float = Field(
        2.0,
        gt=1,
        description="… and over the fleet's median ratio (a fleet-wide slowdown "
        "makes no node an outlier)",
    )
    baseline_alpha: float = Field(0.02, gt=0, le=1, description="EWMA weight of the baseline")


class GpuProbeConfig(_Strict):
    """The per-node ``mufleet gpu-agent`` verdict (nodes with ``gpu_url`` only)."""

    enabled: bool = True
    interval_s: float = Field(1.0, gt=0)
    timeout_s: float = Field(0.5, gt=0)


class MachineConfig(_Strict):
    """The state machine: cordon cap, panic mode, restarts, probation and the trust ramp."""

    max_out_fraction: float = Field(
        0.5,
        gt=0,
        le=1,
        description="at most this share of the fleet cordoned, restarting or on probation "
        "at once (at least one node may always be taken out)",
    )
    panic_healthy_fraction: float = Field(
        0.5, ge=0, le=1, description="below this share of healthy nodes: panic mode"
    )
    suspect_weight: float = Field(
        0.5, gt=0, le=1, description="a suspect node's share of its capacity (not in panic)"
    )
    verdict_ttl_s: float = Field(
        10.0, gt=0, description="a suspect verdict not renewed for this long lapses"
    )
    corroborated_fail: bool = Field(
        True,
        description="one failed canary is a fail while another source (silent traffic, "
        "metrics without progress) already suspects the node",
    )
    probation_canaries: int = Field(3, ge=1, description="passing canaries in a row")
    ramp_start: float = Field(0.25, gt=0, le=1, description="trust right after probation")
    ramp_s: float = Field(30.0, ge=0, description="seconds from ramp_start to full trust")
    restart_timeout_s: float = Field(120.0, gt=0, description="a restart until ready again")
    restart_backoff_s: float = Field(2.0, ge=0)
    restart_backoff_max_s: float = Field(60.0, ge=0)
    max_restarts: int = Field(
        5, ge=0, description="in a row, before the node waits for an operator"
    )


class HealthConfig(_Strict):
    """``health:`` — probes, the machine, and the restarter chain (tried in order)."""

    enabled: bool = True
    tick_s: float = Field(0.1, gt=0, description="the judges' and the machine's clock tick")
    readiness: ReadinessConfig = ReadinessConfig()
    canary: CanaryConfig = CanaryConfig()
    metrics: MetricsProbeConfig = MetricsProbeConfig()
    passive: PassiveConfig = PassiveConfig()
    gpu: GpuProbeConfig = GpuProbeConfig()
    machine: MachineConfig = MachineConfig()
    restarters: list[RestarterConfig] = Field(
        default_factory=lambda: list[RestarterConfig]([ModelReloadConfig()]),
        description="empty: cordoned nodes come back by themselves once their probes pass",
    )


class FailoverConfig(_Strict):
    """``failover:`` — re-sending and migrating requests whose node failed them."""

    max_attempts: int = Field(3, ge=1, le=10, description="nodes tried per request")
    first_token_timeout_s: float = Field(
        30.0, gt=0, description="a node that sends no first token by then has failed it"
    )
    stall_timeout_s: float = Field(
        10.0, gt=0, description="a stream silent this long after its first token has failed"
    )
    migrate_streams: bool = Field(
        True, description="continue a stream whose node failed mid-way on another node"
    )
    max_migrations: int = Field(2, ge=0, le=10)
    retry_budget_ratio: float = Field(
        0.2, ge=0, le=1, description="retries (failovers and migrations) per request, at most"
    )
    retry_budget_min_per_s: float = Field(
        5.0, ge=0, description="retries always allowed per second, whatever the traffic"
    )
    retry_budget_window_s: float = Field(10.0, gt=0)
    queue_timeout_s: float = Field(
        30.0, ge=0, description="how long a request waits for a routable node (0: fail now)"
    )
    max_queued: int = Field(256, ge=0, description="requests waiting for a node, at most")
