"""From GPU samples and XID events to one health verdict per node. Pure: ``now`` is passed in.

Statuses, from best to worst:

- ``healthy``: nothing to report.
- ``degraded``: serving, but slower; ``capacity_factor`` < 1 says how much of its
  calibrated capacity the node still delivers.
- ``warn``: worth an operator's look; capacity unchanged.
- ``drain``: take the node out now; ``capacity_factor`` is 0.

A node's verdict is the worst of its GPUs' and the minimum of their capacity factors.

Latching. A fatal XID does not heal by itself (the GPU needs at least a reset), but it is
an event, seen once. The judge therefore latches it per GPU: the GPU stays ``drain`` until
the judge is recreated (the agent restarts) or the telemetry reports that the GPU was reset
(its ``reset_epoch`` changes, as the simulated state's ``--clear`` does). Warning XIDs are
held for ``xid_warn_hold_s`` after the last one instead. Every other rule reads the
current sample, so it clears when the reading does.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from mufleet.gpu.telemetry import GpuSample, XidEvent

HealthStatus = Literal["healthy", "degraded", "warn", "drain"]
STATUSES: tuple[HealthStatus, ...] = ("healthy", "degraded", "warn", "drain")
_RANK = {status: rank for rank, status in enumerate(STATUSES)}

# The XIDs DCGM's health watch treats as fatal (the GPU must be reset or serviced). Per the
# NVIDIA XID catalog (docs.nvidia.com/deploy/xid-errors): 48 double-bit ECC error, 74 NVLink
# error, 79 GPU has fallen off the bus, 95 uncontained ECC error, 119/120 GSP RPC timeout /
# GSP error, 140 unrecovered ECC error.
DCGM_FATAL_XIDS = frozenset({48, 74, 79, 95, 119, 120, 140})
# 63: a row remap (Ampere+) or page retirement was recorded; 94: a contained ECC error (the
# application was killed, the GPU carries on). Both ask for a reset at the next service
# window, not for an immediate drain (XID catalog; "A100 GPU memory error management").
WARN_XIDS = frozenset({63, 94})
XID_NAMES = {
    48: "double-bit ECC error",
    63: "row remap / page retirement recorded",
    74: "NVLink error",
    79: "fallen off the bus",
    94: "contained ECC error",
    95: "uncontained ECC error",
    119: "GSP RPC timeout",
    120: "GSP error",
    140: "unrecovered ECC error",
}
# Clock event reasons meaning the GPU is being slowed for protection (NVML API reference,
# nvmlClocksEventReasons: HW slowdown and power brake cut clocks "by a factor of 2 or more").
SLOWDOWN_REASONS = frozenset(
    {"sw_thermal_slowdown", "hw_thermal_slowdown", "hw_slowdown", "hw_power_brake"}
)


class GpuHealthConfig(BaseModel):
    """Thresholds of the GPU health rules."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fatal_xids: frozenset[int] = DCGM_FATAL_XIDS
    warn_xids: frozenset[int] = WARN_XIDS
    xid_warn_hold_s: float = Field(300.0, gt=0.0)
    thermal_margin_c: float = Field(
        0.0, ge=0.0, description="degrade this many degrees below the slowdown threshold"
    )
    slowdown_reasons: frozenset[str] = SLOWDOWN_REASONS
    thermal_capacity_cap: float = Field(
        0.9, gt=0.0, le=1.0, description="a hot or slowed GPU's factor is at most this"
    )
    min_capacity_factor: float = Field(0.1, gt=0.0, le=1.0)
    power_cap_capacity_factor: float = Field(0.95, gt=0.0, le=1.0)
    # DCGM's PCIe health watch warns above 8 replays per minute ("the maximum recommended
    # by RM", DCGM_LIMIT_MAX_PCIREPLAY_RATE in dcgm's hardware limits).
    pcie_replays_per_minute: int = Field(8, ge=0)
    pcie_window_s: float = Field(60.0, gt=0.0)
    # DCGM_LIMIT_MAX_RETIRED_PAGES: past this many retired pages the board is due for RMA.
    retired_pages_limit: int = Field(63, ge=1)
    expected_gpus: int | None = Field(None, ge=1, description="warn when fewer are reported")


@dataclass(frozen=True)
class GpuVerdict:
    """A health verdict at unix time ``at``; a node's carries its GPUs' in ``gpus``."""

    status: HealthStatus
    capacity_factor: float
    reasons: tuple[str, ...]
    at: float
    gpus: dict[int, GpuVerdict] = field(default_factory=dict)


@dataclass(frozen=True)
class _Finding:
    status: HealthStatus
    reason: str
    capacity: float = 1.0


def _combine(findings: Iterable[_Finding], at: float) -> GpuVerdict:
    found = sorted(findings, key=lambda f: -_RANK[f.status])
    if not found:
        return GpuVerdict("healthy", 1.0, (), at)
    status = found[0].status
    capacity = 0.0 if status == "drain" else min(f.capacity for f in found)
    return GpuVerdict(status, round(capacity, 3), tuple(f.reason for f in found), at)


def _label(index: int) -> str:
    return f"gpu{index}" if index >= 0 else "gpu?"


def _xid_text(xid: int) -> str:
    name = XID_NAMES.get(xid)
    return f"XID {xid} ({name})" if name else f"XID {xid}"


def _num(value: float) -> str:
    return f"{value:g}"


class GpuHealthJudge:
    """Turns each poll's samples and XID events into a ``GpuVerdict``; keeps the state the
    rules need across polls (latched XIDs, held warnings, PCIe replay history)."""

    def __init__(self, config: GpuHealthConfig | None = None) -> None:
        self.config = config or GpuHealthConfig()
        self._latched: dict[int, dict[int, float]] = {}  # gpu -> fatal xid -> first seen
        self._held: dict[int, dict[int, float]] = {}  # gpu -> warning xid -> last seen
        self._epochs: dict[int, int | None] = {}
        self._replays: dict[int, deque[tuple[float, int]]] = {}

    def latched(self) -> dict[int, tuple[int, ...]]:
        """The fatal XIDs latched per GPU."""
        return {gpu: tuple(sorted(xids)) for gpu, xids in self._latched.items() if xids}

    def judge(
        self,
        samples: Sequence[GpuSample],
        xid_events: Sequence[XidEvent],
        now: float,
        telemetry_errors: Sequence[str] = (),
    ) -> GpuVerdict:
        """The node's verdict now. ``telemetry_errors`` (the source failed) each add a
        warning; GPUs with latched or held XIDs keep them even without a sample."""
        for sample in samples:
            self._observe_epoch(sample)
        for event in xid_events:
            self._record_xid(event)
        per_gpu = {s.index: self._judge_gpu(s, now) for s in samples}
        for index in sorted(set(self._latched) | set(self._held)):
            if index not in per_gpu:
                findings = self._xid_findings(index, now)
                if findings:
                    per_gpu[index] = _combine(findings, now)
        node = [_Finding("warn", f"telemetry: {error}") for error in telemetry_errors]
        expected = self.config.expected_gpus
        if not samples and not telemetry_errors:
            node.append(_Finding("warn", "no GPUs reported"))
        elif samples and expected is not None and len(samples) < expected:
            node.append(_Finding("warn", f"{len(samples)} of {expected} GPUs reported"))
        findings = node + [
            _Finding(v.status, reason, v.capacity_factor)
            for _, v in sorted(per_gpu.items())
            for reason in v.reasons
        ]
        verdict = _combine(findings, now)
        return GpuVerdict(verdict.status, verdict.capacity_factor, verdict.reasons, now, per_gpu)

    def _observe_epoch(self, sample: GpuSample) -> None:
        """A changed reset epoch means the GPU was reset: release what was latched on it."""
        index = sample.index
        previous = self._epochs.get(index)
        if (
            sample.reset_epoch is not None
            and previous is not None
            and sample.reset_epoch != previous
        ):
            self._latched.pop(index, None)
            self._held.pop(index, None)
            self._replays.pop(index, None)
        self._epochs[index] = sample.reset_epoch

    def _record_xid(self, event: XidEvent) -> None:
        if event.xid in self.config.fatal_xids:
            self._latched.setdefault(event.gpu_index, {}).setdefault(event.xid, event.at)
        elif event.xid in self.config.warn_xids:
            held = self._held.setdefault(event.gpu_index, {})
            held[event.xid] = max(event.at, held.get(event.xid, event.at))

    def _xid_findings(self, index: int, now: float) -> list[_Finding]:
        gpu = _label(index)
        findings = [
            _Finding("drain", f"{gpu}: {_xid_text(xid)}, fatal; latched until reset")
            for xid in sorted(self._latched.get(index, {}))
        ]
        held = self._held.get(index, {})
        for xid, at in sorted(held.items()):
            if now - at < self.config.xid_warn_hold_s:
                findings.append(_Finding("warn", f"{gpu}: {_xid_text(xid)} {now - at:.0f} s ago"))
            else:
                del held[xid]
        return findings

    def _judge_gpu(self, s: GpuSample, now: float) -> GpuVerdict:
        gpu = _label(s.index)
        findings = self._xid_findings(s.index, now)
        if s.fatal_error:
            findings.append(_Finding("drain", f"{gpu}: {s.fatal_error}"))
        findings += [_Finding("warn", f"{gpu}: query failed: {e}") for e in s.query_errors]
        findings += self._memory_findings(s, gpu)
        replay = self._replay_finding(s, gpu, now)
        if replay:
            findings.append(replay)
        speed = self._speed_finding(s, gpu)
        if speed:
            findings.append(speed)
        return _combine(findings, now)

    def _memory_findings(self, s: GpuSample, gpu: str) -> list[_Finding]:
        found = []
        # Volatile counters restart at 0 when the driver loads, so any uncorrectable error
        # counted is one since the GPU was last reset; it stays until a reset clears it.
        if s.ecc_volatile_uncorrected:
            found.append(
                _Finding(
                    "drain",
                    f"{gpu}: {s.ecc_volatile_uncorrected} uncorrectable ECC error(s) since reset",
                )
            )
        # nvmlDeviceGetRemappedRows: failureOccurred is set if a remapping ever failed (the
        # memory can no longer be repaired in place); isPending asks for a reset.
        if s.remapped_rows_failure:
            found.append(_Finding("drain", f"{gpu}: row remapping failed"))
        if s.remapped_rows_pending:
            found.append(_Finding("warn", f"{gpu}: row remapping pending a reset"))
        if s.retired_pages_pending:
            found.append(_Finding("warn", f"{gpu}: page retirement pending a reset"))
        retired = (s.retired_pages_sbe or 0) + (s.retired_pages_dbe or 0)
        if retired >= self.config.retired_pages_limit:
            found.append(
                _Finding(
                    "warn",
                    f"{gpu}: {retired} retired pages (limit {self.config.retired_pages_limit})",
                )
            )
        return found

    def _replay_finding(self, s: GpuSample, gpu: str, now: float) -> _Finding | None:
        """Replays counted within the last ``pcie_window_s`` (what DCGM compares per minute)."""
        if s.pcie_replay_count is None:
            return None
        history = self._replays.setdefault(s.index, deque())
        if history and s.pcie_replay_count < history[-1][1]:
            history.clear()  # the counter restarted
        history.append((now, s.pcie_replay_count))
        start = now - self.config.pcie_window_s
        while len(history) > 1 and history[1][0] <= start:
            history.popleft()  # keep the newest point at or before the window as its base
        replays = s.pcie_replay_count - history[0][1]
        limit = self.config.pcie_replays_per_minute * self.config.pcie_window_s / 60.0
        if replays > limit:
            window = _num(self.config.pcie_window_s)
            return _Finding(
                "warn", f"{gpu}: {replays} PCIe replays in {window} s (limit {limit:g})"
            )
        return None

    def _speed_finding(self, s: GpuSample, gpu: str) -> _Finding | None:
        """Thermal/protective slowdown, or power capping: degraded, by the clock ratio."""
        cfg = self.config
        reasons = s.clock_event_reasons or frozenset()
        slowing = sorted(reasons & cfg.slowdown_reasons)
        hot = (
            s.temperature_c is not None
            and s.slowdown_temp_c is not None
            and s.temperature_c >= s.slowdown_temp_c - cfg.thermal_margin_c
        )
        ratio = None
        if s.sm_clock_mhz is not None and s.max_sm_clock_mhz:
            ratio = max(cfg.min_capacity_factor, min(1.0, s.sm_clock_mhz / s.max_sm_clock_mhz))
        clock = (
            f"SM {_num(s.sm_clock_mhz)}/{_num(s.max_sm_clock_mhz)} MHz"
            if s.sm_clock_mhz is not None and s.max_sm_clock_mhz is not None
            else "SM clock unknown"
        )
        if hot or slowing:
            parts = []
            if hot:
                assert s.temperature_c is not None and s.slowdown_temp_c is not None
                parts.append(f"{_num(s.temperature_c)}°C (slowdown {_num(s.slowdown_temp_c)}°C)")
            parts += slowing
            capacity = min(ratio if ratio is not None else 1.0, cfg.thermal_capacity_cap)
            return _Finding("degraded", f"{gpu}: {', '.join(parts)}; {clock}", capacity)
        if "sw_power_cap" in reasons:
            power = (
                f"{_num(s.power_w)}/{_num(s.power_limit_w)} W"
                if s.power_w is not None and s.power_limit_w is not None
                else "power"
            )
            return _Finding(
                "degraded",
                f"{gpu}: sw_power_cap at {power}; {clock}",
                cfg.power_cap_capacity_factor,
            )
        return None
