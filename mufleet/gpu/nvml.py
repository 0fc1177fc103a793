"""GPU telemetry read from NVML through ``pynvml`` (the ``nvidia-ml-py`` package).

Every query is guarded: a field the GPU does not support (``NVML_ERROR_NOT_SUPPORTED`` and
its kin) is ``None``; an answer meaning the GPU is gone (``GPU_IS_LOST``,
``RESET_REQUIRED``) sets ``fatal_error``; any other failure is kept in ``query_errors``. So
``sample()`` never raises, and a GPU that stops answering is reported, not hidden.

XID errors arrive through an NVML event set registered for
``nvmlEventTypeXidCriticalError``; ``xid_events()`` drains it with a 0 ms wait, so polling
never blocks (``NVML_ERROR_TIMEOUT`` means "no more events"; any other failure of the wait
raises ``TelemetryError``). Events raised before the set was created are not delivered
(NVML semantics).
"""

from __future__ import annotations

import contextlib
import importlib
import time
from collections.abc import Callable
from types import ModuleType
from typing import Any, TypeVar

from mufleet.gpu.telemetry import (
    GpuSample,
    TelemetryError,
    XidEvent,
    decode_clock_event_reasons,
)

T = TypeVar("T")

# Error names (pynvml's NVML_ERROR_* constants) meaning "this GPU cannot tell you that":
# the field is absent, not broken.
_UNAVAILABLE = (
    "NVML_ERROR_NOT_SUPPORTED",
    "NVML_ERROR_FUNCTION_NOT_FOUND",
    "NVML_ERROR_NO_PERMISSION",
    "NVML_ERROR_NO_DATA",
    "NVML_ERROR_NOT_FOUND",
)
# Answers meaning the GPU is unusable until reset (NVML API reference, nvmlReturn_t).
_FATAL = ("NVML_ERROR_GPU_IS_LOST", "NVML_ERROR_RESET_REQUIRED")
_MAX_EVENTS_PER_DRAIN = 1024


def _text(value: object) -> str:
    return value.decode(errors="replace") if isinstance(value, bytes) else str(value)


def _codes(nvml: ModuleType, names: tuple[str, ...]) -> frozenset[int]:
    return frozenset(getattr(nvml, name) for name in names if hasattr(nvml, name))


class _Reader:
    """The guarded queries of one sample of one GPU."""

    def __init__(self, nvml: ModuleType, unavailable: frozenset[int], fatal: frozenset[int]):
        self.nvml = nvml
        self.unavailable = unavailable
        self.fatal = fatal
        self.fatal_error: str | None = None
        self.errors: list[str] = []

    def get(self, what: str, fn: Callable[..., T], *args: object) -> T | None:
        try:
            return fn(*args)
        except Exception as exc:  # a binding bug must not stop the sampler either
            self.failed(what, exc)
        return None

    def failed(self, what: str, exc: Exception) -> None:
        """Record why ``what`` could not be read, unless the GPU simply does not have it."""
        if not isinstance(exc, self.nvml.NVMLError):
            self.errors.append(f"{what}: {type(exc).__name__}: {exc}")
            return
        code = getattr(exc, "value", None)
        if code in self.unavailable:
            return
        if code in self.fatal and self.fatal_error is None:
            self.fatal_error = f"{what}: {exc}"
        self.errors.append(f"{what}: {exc}")


class NvmlTelemetry:
    """NVML-backed ``GpuTelemetry`` for every GPU visible when it is created.

    ``nvml`` is the ``pynvml`` module (tests pass a fake one). The constructor raises the
    NVML error when NVML cannot be initialised (no driver, no library): the caller decides
    what to fall back to.
    """

    def __init__(self, nvml: ModuleType | None = None, clock: Callable[[], float] = time.time):
        self._nvml = nvml if nvml is not None else importlib.import_module("pynvml")
        self._clock = clock
        self._unavailable = _codes(self._nvml, _UNAVAILABLE)
        self._fatal = _codes(self._nvml, _FATAL)
        self._nvml.nvmlInit()
        self._closed = False
        try:
            count = self._nvml.nvmlDeviceGetCount()
            self._handles: list[Any] = [
                self._nvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)
            ]
        except Exception:
            self._nvml.nvmlShutdown()
            raise
        # Why XID events are not (fully) available, or None: registration is per GPU and
        # optional, so this is reported by the caller rather than raised.
        self.xid_unavailable: str | None = None
        self._event_set: Any = None
        self._open_event_set()

    @property
    def gpu_count(self) -> int:
        return len(self._handles)

    def _open_event_set(self) -> None:
        """Register every GPU that supports it for XID events; failures are kept, not raised."""
        nvml = self._nvml
        xid_type = nvml.nvmlEventTypeXidCriticalError
        try:
            self._event_set = nvml.nvmlEventSetCreate()
        except nvml.NVMLError as exc:
            self.xid_unavailable = f"event set: {exc}"
            return
        problems = []
        for index, handle in enumerate(self._handles):
            try:
                if nvml.nvmlDeviceGetSupportedEventTypes(handle) & xid_type:
                    nvml.nvmlDeviceRegisterEvents(handle, xid_type, self._event_set)
                else:
                    problems.append(f"gpu{index}: XID events not supported")
            except nvml.NVMLError as exc:
                problems.append(f"gpu{index}: XID event registration: {exc}")
        self.xid_unavailable = "; ".join(problems) or None

    def sample(self) -> list[GpuSample]:
        return [self._sample_one(i, h) for i, h in enumerate(self._handles)]

    def _sample_one(self, index: int, handle: Any) -> GpuSample:
        nvml = self._nvml
        r = _Reader(nvml, self._unavailable, self._fatal)
        uuid = r.get("uuid", nvml.nvmlDeviceGetUUID, handle)
        name = r.get("name", nvml.nvmlDeviceGetName, handle)
        temp = r.get(
            "temperature", nvml.nvmlDeviceGetTemperature, handle, nvml.NVML_TEMPERATURE_GPU
        )
        slowdown = r.get(
            "slowdown threshold",
            nvml.nvmlDeviceGetTemperatureThreshold,
            handle,
            nvml.NVML_TEMPERATURE_THRESHOLD_SLOWDOWN,
        )
        shutdown = r.get(
            "shutdown threshold",
            nvml.nvmlDeviceGetTemperatureThreshold,
            handle,
            nvml.NVML_TEMPERATURE_THRESHOLD_SHUTDOWN,
        )
        power_mw = r.get("power", nvml.nvmlDeviceGetPowerUsage, handle)
        limit_mw = r.get("power limit", nvml.nvmlDeviceGetEnforcedPowerLimit, handle)
        sm = r.get("SM clock", nvml.nvmlDeviceGetClockInfo, handle, nvml.NVML_CLOCK_SM)
        sm_max = r.get("max SM clock", nvml.nvmlDeviceGetMaxClockInfo, handle, nvml.NVML_CLOCK_SM)
        mask = self._clock_reasons(r, handle)
        corrected = r.get(
            "corrected ECC",
            nvml.nvmlDeviceGetTotalEccErrors,
            handle,
            nvml.NVML_MEMORY_ERROR_TYPE_CORRECTED,
            nvml.NVML_VOLATILE_ECC,
        )
        uncorrected = r.get(
            "uncorrected ECC",
            nvml.nvmlDeviceGetTotalEccErrors,
            handle,
            nvml.NVML_MEMORY_ERROR_TYPE_UNCORRECTED,
            nvml.NVML_VOLATILE_ECC,
        )
        sbe = r.get(
            "retired pages (SBE)",
            nvml.nvmlDeviceGetRetiredPages,
            handle,
            nvml.NVML_PAGE_RETIREMENT_CAUSE_MULTIPLE_SINGLE_BIT_ECC_ERRORS,
        )
        dbe = r.get(
            "retired pages (DBE)",
            nvml.nvmlDeviceGetRetiredPages,
            handle,
            nvml.NVML_PAGE_RETIREMENT_CAUSE_DOUBLE_BIT_ECC_ERROR,
        )
        pending = r.get(
            "retired pages pending", nvml.nvmlDeviceGetRetiredPagesPendingStatus, handle
        )
        remap = r.get("remapped rows", nvml.nvmlDeviceGetRemappedRows, handle)
        replays = r.get("PCIe replays", nvml.nvmlDeviceGetPcieReplayCounter, handle)
        util = r.get("utilization", nvml.nvmlDeviceGetUtilizationRates, handle)
        memory = r.get("memory", nvml.nvmlDeviceGetMemoryInfo, handle)
        return GpuSample(
            index=index,
            uuid=_text(uuid) if uuid is not None else None,
            name=_text(name) if name is not None else None,
            temperature_c=_float(temp),
            slowdown_temp_c=_float(slowdown),
            shutdown_temp_c=_float(shutdown),
            power_w=power_mw / 1000.0 if power_mw is not None else None,
            power_limit_w=limit_mw / 1000.0 if limit_mw is not None else None,
            sm_clock_mhz=_float(sm),
            max_sm_clock_mhz=_float(sm_max),
            clock_event_reasons=decode_clock_event_reasons(int(mask)) if mask is not None else None,
            ecc_volatile_corrected=_int(corrected),
            ecc_volatile_uncorrected=_int(uncorrected),
            retired_pages_sbe=len(sbe) if sbe is not None else None,
            retired_pages_dbe=len(dbe) if dbe is not None else None,
            retired_pages_pending=bool(pending) if pending is not None else None,
            remapped_rows_pending=bool(remap[2]) if remap is not None else None,
            remapped_rows_failure=bool(remap[3]) if remap is not None else None,
            pcie_replay_count=_int(replays),
            utilization_pct=_float(getattr(util, "gpu", None)),
            memory_used_bytes=_int(getattr(memory, "used", None)),
            memory_total_bytes=_int(getattr(memory, "total", None)),
            fatal_error=r.fatal_error,
            query_errors=tuple(r.errors),
        )

    def _clock_reasons(self, r: _Reader, handle: Any) -> int | None:
        """The current clock event mask. Drivers before R535 lack the "event reasons" entry
        point (FUNCTION_NOT_FOUND); they answer the older "throttle reasons" one."""
        nvml = self._nvml
        not_found = getattr(nvml, "NVML_ERROR_FUNCTION_NOT_FOUND", None)
        for name in (
            "nvmlDeviceGetCurrentClocksEventReasons",
            "nvmlDeviceGetCurrentClocksThrottleReasons",
        ):
            fn = getattr(nvml, name, None)
            if fn is None:
                continue
            try:
                return int(fn(handle))
            except Exception as exc:
                if getattr(exc, "value", None) == not_found:
                    continue
                r.failed("clock event reasons", exc)
                return None
        return None

    def xid_events(self) -> list[XidEvent]:
        if self._event_set is None or self._closed:
            return []
        nvml = self._nvml
        events: list[XidEvent] = []
        for _ in range(_MAX_EVENTS_PER_DRAIN):
            try:
                data = nvml.nvmlEventSetWait(self._event_set, 0)
            except nvml.NVMLError as exc:
                if getattr(exc, "value", None) == getattr(nvml, "NVML_ERROR_TIMEOUT", None):
                    break  # drained
                raise TelemetryError(f"XID event wait: {exc}") from exc
            if data.eventType & nvml.nvmlEventTypeXidCriticalError:
                events.append(
                    XidEvent(self._index_of(data.device), int(data.eventData), self._clock())
                )
        return events

    def _index_of(self, device: Any) -> int:
        try:
            return int(self._nvml.nvmlDeviceGetIndex(device))
        except Exception:
            return -1

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        nvml = self._nvml
        if self._event_set is not None:
            with contextlib.suppress(nvml.NVMLError):
                nvml.nvmlEventSetFree(self._event_set)
        with contextlib.suppress(nvml.NVMLError):
            nvml.nvmlShutdown()


def _float(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) else None


def _int(value: object) -> int | None:
    return int(value) if isinstance(value, int) else None
