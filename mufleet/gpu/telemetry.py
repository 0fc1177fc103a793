"""What a node's GPUs report, independent of where it comes from (NVML or a simulation).

A ``GpuSample`` is one GPU at one instant; every field a GPU (or its driver) does not
support is ``None``, so "not reported" is never confused with zero. XID errors are events,
not state: ``GpuTelemetry.xid_events()`` returns those that arrived since the previous call.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# NVML's clock event reason bits (nvmlClocksEventReason*, formerly nvmlClocksThrottleReason*;
# NVML API reference, "NvmlClocksEventReasons"), by the names this package uses.
CLOCK_EVENT_REASON_BITS: dict[int, str] = {
    0x001: "gpu_idle",
    0x002: "applications_clocks_setting",
    0x004: "sw_power_cap",
    0x008: "hw_slowdown",
    0x010: "sync_boost",
    0x020: "sw_thermal_slowdown",
    0x040: "hw_thermal_slowdown",
    0x080: "hw_power_brake",
    0x100: "display_clock_setting",
}
CLOCK_EVENT_REASONS: tuple[str, ...] = tuple(CLOCK_EVENT_REASON_BITS.values())


def decode_clock_event_reasons(mask: int) -> frozenset[str]:
    """The names of the bits set in an NVML clock event reason mask.

    Bits this table does not know (NVML adds reasons over time) come out as
    ``other_0x…`` rather than being dropped, so they still show up in metrics.
    """
    names = {name for bit, name in CLOCK_EVENT_REASON_BITS.items() if mask & bit}
    unknown = mask & ~sum(CLOCK_EVENT_REASON_BITS)
    bit = 1
    while unknown:
        if unknown & bit:
            names.add(f"other_{bit:#x}")
            unknown &= ~bit
        bit <<= 1
    return frozenset(names)


@dataclass(frozen=True)
class GpuSample:
    """One GPU at one instant. ``None``: not supported or not readable on this GPU."""

    index: int
    uuid: str | None = None
    name: str | None = None
    temperature_c: float | None = None
    slowdown_temp_c: float | None = None
    shutdown_temp_c: float | None = None
    power_w: float | None = None
    power_limit_w: float | None = None
    sm_clock_mhz: float | None = None
    max_sm_clock_mhz: float | None = None
    clock_event_reasons: frozenset[str] | None = None
    ecc_volatile_corrected: int | None = None
    ecc_volatile_uncorrected: int | None = None
    retired_pages_sbe: int | None = None
    retired_pages_dbe: int | None = None
    retired_pages_pending: bool | None = None
    remapped_rows_pending: bool | None = None
    remapped_rows_failure: bool | None = None
    pcie_replay_count: int | None = None
    utilization_pct: float | None = None
    memory_used_bytes: int | None = None
    memory_total_bytes: int | None = None
    # Changes when the GPU was reset or its faults were cleared; latched verdicts are
    # released when it does. None where the source cannot tell (NVML).
    reset_epoch: int | None = None
    # An answer meaning the GPU cannot serve until it is reset ("GPU is lost").
    fatal_error: str | None = None
    # Queries that failed for another reason than "not supported" (what, and why).
    query_errors: tuple[str, ...] = ()


@dataclass(frozen=True)
class XidEvent:
    """An XID error reported by the driver for one GPU, at unix time ``at``.

    ``gpu_index`` is -1 when the source could not tell which GPU it came from.
    """

    gpu_index: int
    xid: int
    at: float


class TelemetryError(RuntimeError):
    """The telemetry source as a whole could not be read (not one field of one GPU)."""


class GpuTelemetry(Protocol):
    """A source of GPU samples and XID events for one node."""

    def sample(self) -> list[GpuSample]:
        """One sample per GPU, now."""
        ...

    def xid_events(self) -> list[XidEvent]:
        """The XID events that arrived since the previous call (each reported once)."""
        ...

    def close(self) -> None:
        """Release the source; idempotent."""
        ...
