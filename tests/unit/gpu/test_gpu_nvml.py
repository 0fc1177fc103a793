"""Unit tests for mufleet.gpu.nvml's decoding, with a fake ``pynvml`` module (no GPU).

The fake takes its constants and error classes from the real binding, so error codes and
bit masks are NVML's own; only the functions are replaced.
"""

from __future__ import annotations

import types
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import pynvml
import pytest

from mufleet.gpu.nvml import NvmlTelemetry
from mufleet.gpu.telemetry import (
    CLOCK_EVENT_REASON_BITS,
    TelemetryError,
    decode_clock_event_reasons,
)
from mufleet.gpu.verdict import GpuHealthJudge


def err(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


NOT_SUPPORTED = pynvml.NVML_ERROR_NOT_SUPPORTED


@dataclass
class FakeGpu:
    """What one fake GPU answers; an exception value is raised instead of returned."""

    uuid: Any = b"GPU-1111"
    name: Any = b"NVIDIA H100 80GB HBM3"
    temperature: Any = 61
    slowdown: Any = 87
    shutdown: Any = 92
    power_mw: Any = 412_345
    limit_mw: Any = 700_000
    sm: Any = 1755
    sm_max: Any = 1980
    event_reasons: Any = 0x20 | 0x4
    throttle_reasons: Any = 0x1
    ecc: dict[int, Any] = field(default_factory=lambda: {0: 17, 1: 0})
    retired: dict[int, Any] = field(default_factory=lambda: {0: [0x1000, 0x2000], 1: [0x3000]})
    retired_pending: Any = 0
    remapped: Any = (2, 1, 1, 0)
    replays: Any = 3
    util: Any = field(default_factory=lambda: types.SimpleNamespace(gpu=88, memory=40))
    memory: Any = field(
        default_factory=lambda: types.SimpleNamespace(used=10 * 2**30, total=80 * 2**30)
    )
    events: Any = pynvml.nvmlEventTypeXidCriticalError


def _answer(value: Any) -> Any:
    if isinstance(value, BaseException):
        raise value
    return value


class FakeNvml(types.ModuleType):
    """A stand-in for the ``pynvml`` module over a list of ``FakeGpu``."""

    def __init__(self, gpus: list[FakeGpu], init_error: BaseException | None = None) -> None:
        super().__init__("pynvml")
        for name in dir(pynvml):
            if name.startswith(("NVML_", "nvmlEventType", "NVMLError")):
                setattr(self, name, getattr(pynvml, name))
        self.gpus = gpus
        self.init_error = init_error
        self.calls: list[str] = []
        self.pending_events: deque[Any] = deque()
        self.wait_error: BaseException = err(pynvml.NVML_ERROR_TIMEOUT)
        self.registered: list[int] = []

    def _gpu(self, handle: Any) -> FakeGpu:
        return self.gpus[handle]

    def nvmlInit(self) -> None:
        self.calls.append("init")
        _answer(self.init_error)

    def nvmlShutdown(self) -> None:
        self.calls.append("shutdown")

    def nvmlDeviceGetCount(self) -> int:
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, i: int) -> int:
        return i

    def nvmlDeviceGetIndex(self, handle: int) -> int:
        return handle

    def nvmlDeviceGetUUID(self, h: int) -> Any:
        return _answer(self._gpu(h).uuid)

    def nvmlDeviceGetName(self, h: int) -> Any:
        return _answer(self._gpu(h).name)

    def nvmlDeviceGetTemperature(self, h: int, sensor: int) -> Any:
        assert sensor == pynvml.NVML_TEMPERATURE_GPU
        return _answer(self._gpu(h).temperature)

    def nvmlDeviceGetTemperatureThreshold(self, h: int, which: int) -> Any:
        gpu = self._gpu(h)
        return _answer(
            gpu.slowdown if which == pynvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN else gpu.shutdown
        )

    def nvmlDeviceGetPowerUsage(self, h: int) -> Any:
        return _answer(self._gpu(h).power_mw)

    def nvmlDeviceGetEnforcedPowerLimit(self, h: int) -> Any:
        return _answer(self._gpu(h).limit_mw)

    def nvmlDeviceGetClockInfo(self, h: int, clock: int) -> Any:
        assert clock == pynvml.NVML_CLOCK_SM
        return _answer(self._gpu(h).sm)

    def nvmlDeviceGetMaxClockInfo(self, h: int, clock: int) -> Any:
        assert clock == pynvml.NVML_CLOCK_SM
        return _answer(self._gpu(h).sm_max)

    def nvmlDeviceGetCurrentClocksEventReasons(self, h: int) -> Any:
        return _answer(self._gpu(h).event_reasons)

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, h: int) -> Any:
        return _answer(self._gpu(h).throttle_reasons)

    def nvmlDeviceGetTotalEccErrors(self, h: int, kind: int, counter: int) -> Any:
        assert counter == pynvml.NVML_VOLATILE_ECC
        return _answer(self._gpu(h).ecc[kind])

    def nvmlDeviceGetRetiredPages(self, h: int, cause: int) -> Any:
        return _answer(self._gpu(h).retired[cause])

    def nvmlDeviceGetRetiredPagesPendingStatus(self, h: int) -> Any:
        return _answer(self._gpu(h).retired_pending)

    def nvmlDeviceGetRemappedRows(self, h: int) -> Any:
        return _answer(self._gpu(h).remapped)

    def nvmlDeviceGetPcieReplayCounter(self, h: int) -> Any:
        return _answer(self._gpu(h).replays)

    def nvmlDeviceGetUtilizationRates(self, h: int) -> Any:
        return _answer(self._gpu(h).util)

    def nvmlDeviceGetMemoryInfo(self, h: int) -> Any:
        return _answer(self._gpu(h).memory)

    def nvmlEventSetCreate(self) -> str:
        return "event-set"

    def nvmlDeviceGetSupportedEventTypes(self, h: int) -> Any:
        return _answer(self._gpu(h).events)

    def nvmlDeviceRegisterEvents(self, h: int, types_: int, event_set: str) -> None:
        assert types_ == pynvml.nvmlEventTypeXidCriticalError and event_set == "event-set"
        self.registered.append(h)

    def nvmlEventSetWait(self, event_set: str, timeout_ms: int) -> Any:
        assert timeout_ms == 0  # polling must never block
        if self.pending_events:
            return self.pending_events.popleft()
        raise self.wait_error

    def nvmlEventSetFree(self, event_set: str) -> None:
        self.calls.append("free")

    def raise_xid(self, gpu: int, xid: int) -> None:
        self.pending_events.append(
            types.SimpleNamespace(
                device=gpu, eventType=pynvml.nvmlEventTypeXidCriticalError, eventData=xid
            )
        )


def test_decode_clock_event_reasons() -> None:
    assert decode_clock_event_reasons(0) == frozenset()
    assert decode_clock_event_reasons(0x24) == {"sw_thermal_slowdown", "sw_power_cap"}
    assert decode_clock_event_reasons(0x80 | 0x400) == {"hw_power_brake", "other_0x400"}
    everything = sum(CLOCK_EVENT_REASON_BITS)
    assert decode_clock_event_reasons(everything) == set(CLOCK_EVENT_REASON_BITS.values())


def test_bits_match_the_binding() -> None:
    assert CLOCK_EVENT_REASON_BITS[pynvml.nvmlClocksEventReasonSwThermalSlowdown] == (
        "sw_thermal_slowdown"
    )
    assert CLOCK_EVENT_REASON_BITS[pynvml.nvmlClocksEventReasonHwSlowdown] == "hw_slowdown"
    assert CLOCK_EVENT_REASON_BITS[pynvml.nvmlClocksThrottleReasonHwPowerBrakeSlowdown] == (
        "hw_power_brake"
    )
    assert CLOCK_EVENT_REASON_BITS[pynvml.nvmlClocksEventReasonSwPowerCap] == "sw_power_cap"


def test_sample_decodes_every_field() -> None:
    [s] = NvmlTelemetry(FakeNvml([FakeGpu()])).sample()

    assert (s.index, s.uuid, s.name) == (0, "GPU-1111", "NVIDIA H100 80GB HBM3")
    assert (s.temperature_c, s.slowdown_temp_c, s.shutdown_temp_c) == (61.0, 87.0, 92.0)
    assert s.power_w == pytest.approx(412.345)
    assert s.power_limit_w == 700.0
    assert (s.sm_clock_mhz, s.max_sm_clock_mhz) == (1755.0, 1980.0)
    assert s.clock_event_reasons == {"sw_thermal_slowdown", "sw_power_cap"}
    assert (s.ecc_volatile_corrected, s.ecc_volatile_uncorrected) == (17, 0)
    assert (s.retired_pages_sbe, s.retired_pages_dbe, s.retired_pages_pending) == (2, 1, False)
    assert (s.remapped_rows_pending, s.remapped_rows_failure) == (True, False)
    assert s.pcie_replay_count == 3
    assert s.utilization_pct == 88.0
    assert (s.memory_used_bytes, s.memory_total_bytes) == (10 * 2**30, 80 * 2**30)
    assert s.reset_epoch is None and s.fatal_error is None and s.query_errors == ()


def test_unsupported_fields_are_none_without_errors() -> None:
    unsupported = err(NOT_SUPPORTED)
    gpu = FakeGpu(
        temperature=unsupported,
        ecc={0: unsupported, 1: unsupported},
        retired={0: unsupported, 1: unsupported},
        retired_pending=err(pynvml.NVML_ERROR_NO_PERMISSION),
        remapped=unsupported,
        replays=unsupported,
        event_reasons=unsupported,
    )
    [s] = NvmlTelemetry(FakeNvml([gpu])).sample()

    assert s.temperature_c is None and s.ecc_volatile_uncorrected is None
    assert s.retired_pages_sbe is None and s.retired_pages_pending is None
    assert s.remapped_rows_pending is None and s.pcie_replay_count is None
    assert s.clock_event_reasons is None
    assert s.query_errors == () and s.fatal_error is None
    assert GpuHealthJudge().judge([s], [], 0.0).status == "healthy"


def test_clock_reasons_fall_back_to_the_throttle_call_on_old_drivers() -> None:
    gpu = FakeGpu(event_reasons=err(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND), throttle_reasons=0x8)

    [s] = NvmlTelemetry(FakeNvml([gpu])).sample()

    assert s.clock_event_reasons == {"hw_slowdown"}
    assert s.query_errors == ()


def test_clock_reasons_fall_back_when_the_binding_is_old() -> None:
    fake = FakeNvml([FakeGpu(throttle_reasons=0x40)])
    fake.nvmlDeviceGetCurrentClocksEventReasons = None  # type: ignore[method-assign,assignment]

    assert NvmlTelemetry(fake).sample()[0].clock_event_reasons == {"hw_thermal_slowdown"}


def test_lost_gpu_is_fatal_and_never_raises() -> None:
    lost = err(pynvml.NVML_ERROR_GPU_IS_LOST)
    gpu = FakeGpu(temperature=lost, power_mw=lost, sm=lost)
    [s] = NvmlTelemetry(FakeNvml([gpu])).sample()

    assert s.fatal_error is not None and "GPU is lost" in s.fatal_error
    assert s.temperature_c is None
    assert len(s.query_errors) == 3
    assert GpuHealthJudge().judge([s], [], 0.0).status == "drain"


def test_other_failures_are_kept_as_query_errors() -> None:
    gpu = FakeGpu(replays=err(pynvml.NVML_ERROR_UNKNOWN), util=TypeError("bad struct"))
    [s] = NvmlTelemetry(FakeNvml([gpu])).sample()

    assert s.pcie_replay_count is None and s.utilization_pct is None
    assert any(e.startswith("PCIe replays:") for e in s.query_errors)
    assert any("TypeError: bad struct" in e for e in s.query_errors)
    assert s.fatal_error is None
    assert GpuHealthJudge().judge([s], [], 0.0).status == "warn"


def test_str_results_are_accepted() -> None:
    [s] = NvmlTelemetry(FakeNvml([FakeGpu(uuid="GPU-str", name="NVIDIA L4")])).sample()

    assert (s.uuid, s.name) == ("GPU-str", "NVIDIA L4")


def test_xid_events_are_drained_without_blocking() -> None:
    fake = FakeNvml([FakeGpu(), FakeGpu(uuid=b"GPU-2222")])
    telemetry = NvmlTelemetry(fake, clock=lambda: 123.0)
    fake.raise_xid(1, 79)
    fake.raise_xid(0, 94)

    events = telemetry.xid_events()

    assert [(e.gpu_index, e.xid, e.at) for e in events] == [(1, 79, 123.0), (0, 94, 123.0)]
    assert telemetry.xid_events() == []
    assert fake.registered == [0, 1]
    assert telemetry.xid_unavailable is None


def test_gpus_without_xid_events_are_reported_not_registered() -> None:
    fake = FakeNvml([FakeGpu(), FakeGpu(events=0)])
    telemetry = NvmlTelemetry(fake)

    assert fake.registered == [0]
    assert telemetry.xid_unavailable is not None and "gpu1" in telemetry.xid_unavailable


def test_a_failing_event_wait_raises_telemetry_error() -> None:
    fake = FakeNvml([FakeGpu()])
    telemetry = NvmlTelemetry(fake)
    fake.wait_error = err(pynvml.NVML_ERROR_GPU_IS_LOST)

    with pytest.raises(TelemetryError, match="XID event wait"):
        telemetry.xid_events()


def test_init_failure_propagates_and_close_is_idempotent() -> None:
    with pytest.raises(pynvml.NVMLError):
        NvmlTelemetry(FakeNvml([], init_error=err(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND)))

    fake = FakeNvml([FakeGpu()])
    telemetry = NvmlTelemetry(fake)
    telemetry.close()
    telemetry.close()

    assert fake.calls == ["init", "free", "shutdown"]
    assert telemetry.xid_events() == []
