"""Simulated GPU telemetry, described by a JSON state file per node.

The file is the whole truth about a node's simulated GPUs: what each reports (temperature,
clocks, clock event reasons, ECC counts, retired pages, remapped rows, PCIe replays), the
XID events raised so far and a reset epoch. ``SimulatedTelemetry`` re-reads it when it
changes (inode, modification time or size); ``edit_state`` applies a ``GpuFault`` with a
locked read-modify-write and replaces the file atomically, so a reader never sees half a
file and two concurrent edits do not lose one another.

XID events carry a sequence number. A ``SimulatedTelemetry`` reports each event written
after it was created exactly once, as an NVML event set only delivers events raised after
it was registered. ``--clear`` empties the events, restores healthy readings and bumps the
reset epoch, which is how the simulation says "the GPU was reset".
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from mufleet import paths
from mufleet.gpu.telemetry import CLOCK_EVENT_REASONS, GpuSample, TelemetryError, XidEvent

ThrottleKind = Literal["thermal", "power", "hw_slowdown"]
MAX_KEPT_XIDS = 256
_GIB = 1024**3
_UUID_NAMESPACE = uuid.UUID("6d756665-6c65-6574-2d67-70752d73696d")


class SimulatedGpu(BaseModel):
    """One simulated GPU; the defaults are a healthy, lightly loaded H100 SXM 80 GB."""

    model_config = ConfigDict(extra="forbid")

    index: int = Field(ge=0)
    uuid: str
    name: str = "NVIDIA H100 80GB HBM3"
    temperature_c: float = 42.0
    slowdown_temp_c: float | None = 87.0
    shutdown_temp_c: float | None = 92.0
    power_w: float = Field(310.0, ge=0.0)
    power_limit_w: float = Field(700.0, gt=0.0)
    sm_clock_mhz: float = Field(1980.0, ge=0.0)
    max_sm_clock_mhz: float = Field(1980.0, gt=0.0)
    clock_event_reasons: list[str] = Field(default_factory=list)
    ecc_volatile_corrected: int = Field(0, ge=0)
    ecc_volatile_uncorrected: int = Field(0, ge=0)
    retired_pages_sbe: int = Field(0, ge=0)
    retired_pages_dbe: int = Field(0, ge=0)
    retired_pages_pending: bool = False
    remapped_rows_pending: bool = False
    remapped_rows_failure: bool = False
    pcie_replay_count: int = Field(0, ge=0)
    utilization_pct: float = Field(35.0, ge=0.0, le=100.0)
    memory_used_bytes: int = Field(52 * _GIB, ge=0)
    memory_total_bytes: int = Field(80 * _GIB, gt=0)

    @field_validator("clock_event_reasons")
    @classmethod
    def _known_reasons(cls, value: list[str]) -> list[str]:
        unknown = sorted(set(value) - set(CLOCK_EVENT_REASONS))
        if unknown:
            raise ValueError(f"unknown clock event reasons {unknown}; known: {CLOCK_EVENT_REASONS}")
        return sorted(set(value))

    def to_sample(self, reset_epoch: int) -> GpuSample:
        return GpuSample(
            index=self.index,
            uuid=self.uuid,
            name=self.name,
            temperature_c=self.temperature_c,
            slowdown_temp_c=self.slowdown_temp_c,
            shutdown_temp_c=self.shutdown_temp_c,
            power_w=self.power_w,
            power_limit_w=self.power_limit_w,
            sm_clock_mhz=self.sm_clock_mhz,
            max_sm_clock_mhz=self.max_sm_clock_mhz,
            clock_event_reasons=frozenset(self.clock_event_reasons),
            ecc_volatile_corrected=self.ecc_volatile_corrected,
            ecc_volatile_uncorrected=self.ecc_volatile_uncorrected,
            retired_pages_sbe=self.retired_pages_sbe,
            retired_pages_dbe=self.retired_pages_dbe,
            retired_pages_pending=self.retired_pages_pending,
            remapped_rows_pending=self.remapped_rows_pending,
            remapped_rows_failure=self.remapped_rows_failure,
            pcie_replay_count=self.pcie_replay_count,
            utilization_pct=self.utilization_pct,
            memory_used_bytes=self.memory_used_bytes,
            memory_total_bytes=self.memory_total_bytes,
            reset_epoch=reset_epoch,
        )

    def healthy(self) -> SimulatedGpu:
        """The same board (identity, thresholds, limits) with healthy readings."""
        return SimulatedGpu(
            index=self.index,
            uuid=self.uuid,
            name=self.name,
            slowdown_temp_c=self.slowdown_temp_c,
            shutdown_temp_c=self.shutdown_temp_c,
            power_limit_w=self.power_limit_w,
            max_sm_clock_mhz=self.max_sm_clock_mhz,
            sm_clock_mhz=self.max_sm_clock_mhz,
            memory_total_bytes=self.memory_total_bytes,
            memory_used_bytes=min(52 * _GIB, self.memory_total_bytes),
        )


class SimulatedXid(BaseModel):
    model_config = ConfigDict(extra="forbid")

    seq: int = Field(ge=1)
    gpu: int
    xid: int = Field(ge=1)
    at: float


class SimulatedState(BaseModel):
    """A node's simulated GPUs, the XID events raised on them and the reset epoch."""

    model_config = ConfigDict(extra="forbid")

    gpus: list[SimulatedGpu]
    # Identifies this file's history: a file recreated from scratch restarts the
    # sequence numbers, and readers must not mistake its events for ones already seen.
    state_id: str = Field(default_factory=lambda: uuid.uuid4().hex)
    xids: list[SimulatedXid] = Field(default_factory=list)
    next_seq: int = Field(1, ge=1)
    reset_epoch: int = Field(0, ge=0)

    @field_validator("gpus")
    @classmethod
    def _unique_indices(cls, value: list[SimulatedGpu]) -> list[SimulatedGpu]:
        indices = [g.index for g in value]
        if len(set(indices)) != len(indices):
            raise ValueError(f"GPU indices must be unique, got {indices}")
        return value

    @classmethod
    def default(cls, gpus: int = 1, label: str = "sim") -> SimulatedState:
        """``gpus`` healthy GPUs whose UUIDs are stable for a given ``label`` (node name)."""
        return cls(
            gpus=[
                SimulatedGpu(index=i, uuid=f"GPU-{uuid.uuid5(_UUID_NAMESPACE, f'{label}/{i}')}")
                for i in range(gpus)
            ]
        )


class GpuFault(BaseModel):
    """One edit of a simulated state: the ``mufleet gpu-fault`` flags as data.

    Counters (ECC, PCIe replays) are added to, as errors accumulate on a real GPU;
    ``clear`` is applied first, so ``clear`` plus a fault gives exactly that fault.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    gpu: int = Field(0, ge=0)
    clear: bool = False
    xid: int | None = Field(None, ge=1)
    temperature_c: float | None = None
    ecc_uncorrected: int = Field(0, ge=0)
    ecc_corrected: int = Field(0, ge=0)
    throttle: ThrottleKind | None = None
    retired_pending: bool = False
    remap_pending: bool = False
    remap_failure: bool = False
    pcie_replays: int = Field(0, ge=0)


# SM clock as a fraction of the maximum under each simulated throttle. NVML documents HW
# slowdown and power brake as "reducing the core clocks by a factor of 2 or more".
_THROTTLE: dict[str, tuple[str, float]] = {
    "thermal": ("sw_thermal_slowdown", 0.7),
    "power": ("sw_power_cap", 0.85),
    "hw_slowdown": ("hw_slowdown", 0.5),
}


def apply_fault(state: SimulatedState, fault: GpuFault, now: float) -> SimulatedState:
    """``state`` with ``fault`` applied (``state`` itself is not changed)."""
    new = state.model_copy(deep=True)
    if fault.clear:
        new.gpus = [g.healthy() for g in new.gpus]
        new.xids = []
        new.reset_epoch += 1
    by_index = {g.index: g for g in new.gpus}
    gpu = by_index.get(fault.gpu)
    if gpu is None:
        raise ValueError(f"no GPU {fault.gpu} in the state (GPUs: {sorted(by_index)})")
    if fault.xid is not None:
        new.xids.append(SimulatedXid(seq=new.next_seq, gpu=gpu.index, xid=fault.xid, at=now))
        new.xids = new.xids[-MAX_KEPT_XIDS:]
        new.next_seq += 1
    if fault.temperature_c is not None:
        gpu.temperature_c = fault.temperature_c
    gpu.ecc_volatile_uncorrected += fault.ecc_uncorrected
    gpu.ecc_volatile_corrected += fault.ecc_corrected
    gpu.pcie_replay_count += fault.pcie_replays
    if fault.throttle is not None:
        reason, fraction = _THROTTLE[fault.throttle]
        gpu.clock_event_reasons = sorted({*gpu.clock_event_reasons, reason})
        gpu.sm_clock_mhz = min(gpu.sm_clock_mhz, round(gpu.max_sm_clock_mhz * fraction))
        if fault.throttle == "thermal" and gpu.slowdown_temp_c is not None:
            gpu.temperature_c = max(gpu.temperature_c, gpu.slowdown_temp_c)
        if fault.throttle == "power":
            gpu.power_w = gpu.power_limit_w
    gpu.retired_pages_pending = gpu.retired_pages_pending or fault.retired_pending
    gpu.remapped_rows_pending = gpu.remapped_rows_pending or fault.remap_pending
    gpu.remapped_rows_failure = gpu.remapped_rows_failure or fault.remap_failure
    return SimulatedState.model_validate(new.model_dump())


def default_state_path(node: str) -> Path:
    """``$MUFLEET_HOME/gpu/<node>.json``."""
    return paths.home() / "gpu" / f"{node}.json"


def read_state(path: Path, default_gpus: int = 1) -> SimulatedState:
    """The state in ``path``; a missing file is ``default_gpus`` healthy GPUs."""
    try:
        text = path.read_text()
    except FileNotFoundError:
        return SimulatedState.default(default_gpus, label=path.stem)
    return SimulatedState.model_validate_json(text)


def write_state(path: Path, state: SimulatedState) -> None:
    """Replace the state file atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(state.model_dump_json(indent=2))
    os.replace(tmp, path)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Serialise writers of one state file (readers need no lock: writes are atomic)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_name(path.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def edit_state(
    path: Path, fault: GpuFault, now: float | None = None, default_gpus: int = 1
) -> SimulatedState:
    """Apply ``fault`` to the state file (created with ``default_gpus`` GPUs if missing)."""
    with _locked(path):
        state = apply_fault(
            read_state(path, default_gpus), fault, time.time() if now is None else now
        )
        write_state(path, state)
    return state


def ensure_state(path: Path, default_gpus: int = 1) -> None:
    """Write the default state unless the file exists, so editors see the same GPUs."""
    with _locked(path):
        if not path.exists():
            write_state(path, SimulatedState.default(default_gpus, label=path.stem))


class SimulatedTelemetry:
    """``GpuTelemetry`` read from a state file (created with ``default_gpus`` if missing).

    A state file that cannot be read or parsed raises ``TelemetryError`` from ``sample()``
    and ``xid_events()`` (the agent reports that as a warning) until it is fixed.
    """

    def __init__(self, state_file: Path, default_gpus: int = 1) -> None:
        self.path = state_file
        self.default_gpus = default_gpus
        self._stamp: tuple[int, int, int] | None = None
        self._state: SimulatedState | None = None
        ensure_state(state_file, default_gpus)
        # Events already in the file were raised before this source existed.
        state = self._current()
        self._state_id = state.state_id
        self._reported_seq = state.next_seq - 1

    def _current(self) -> SimulatedState:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp = None
            self._state = SimulatedState.default(self.default_gpus, label=self.path.stem)
            return self._state
        # write_state replaces the file, so a new inode marks a rewrite even when two
        # writes land within one timestamp tick.
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp or self._state is None:
            try:
                self._state = SimulatedState.model_validate_json(self.path.read_bytes())
            except (OSError, ValidationError) as exc:
                raise TelemetryError(f"simulated state {self.path}: {exc}") from exc
            self._stamp = stamp
        return self._state

    def sample(self) -> list[GpuSample]:
        state = self._current()
        return [g.to_sample(state.reset_epoch) for g in state.gpus]

    def xid_events(self) -> list[XidEvent]:
        state = self._current()
        if state.state_id != self._state_id:
            self._state_id, self._reported_seq = state.state_id, 0  # recreated from scratch
        fresh = [x for x in state.xids if x.seq > self._reported_seq]
        if fresh:
            self._reported_seq = max(x.seq for x in fresh)
        return [XidEvent(gpu_index=x.gpu, xid=x.xid, at=x.at) for x in fresh]

    def close(self) -> None:
        """Nothing to release; present for the ``GpuTelemetry`` protocol."""
