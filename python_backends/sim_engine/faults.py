"""Fault switches of the sim engine, read from a small JSON control file.

The control surface is a file because it must keep working when the engine is wedged:
a hung engine admits no requests, so a control tensor could never reach it, and a model
reload would restart the very stub whose hang is under test. The file is re-read when it
changes (inode, modification time or size; checked at most every ``poll_s``), so an
operator or a test flips a switch with one write; ``mufleet fault`` writes it atomically.

Its path comes from the ``MUFLEET_FAULT_FILE`` environment variable, which the launcher
sets per node. A missing file means no faults.

A file with ``until_restart`` set wedges only the engine that was running when it was
written: an engine started later (a model reload, a process restart) ignores it, as a
restart would clear a real wedge, while the file stays where it is.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

FAULT_FILE_ENV = "MUFLEET_FAULT_FILE"


class FaultSwitches(BaseModel):
    """What is wrong with a node right now."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    hang: bool = Field(False, description="stop producing tokens; stay live and ready")
    slowdown: float = Field(1.0, ge=1.0, le=1000.0, description="multiply iteration time")
    error_rate: float = Field(0.0, ge=0.0, le=1.0, description="fraction of requests failed")
    garbage: bool = Field(False, description="emit invalid token ids and wrong lengths")
    crash: bool = Field(False, description="the engine's process exits")
    iteration_errors: int = Field(
        0,
        ge=0,
        le=1000,
        description="the next N engine iterations raise (an engine bug), counted from when "
        "the switch is written",
    )
    until_restart: bool = Field(
        False,
        description="the switches apply only to an engine started before the file was "
        "written: a model reload or a process restart clears them",
    )


def write_faults(path: Path, switches: FaultSwitches) -> None:
    """Replace the control file atomically (a reader never sees half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    tmp.write_text(switches.model_dump_json(indent=2))
    os.replace(tmp, path)


class FaultFile:
    """Cached reader of one control file, for the engine built with it."""

    def __init__(
        self, path: Path | None, poll_s: float = 0.05, started_ns: int | None = None
    ) -> None:
        self.path = path
        self.poll_s = poll_s
        self.started_ns = time.time_ns() if started_ns is None else started_ns
        """When the reading engine started (wall clock, as file times are): an
        ``until_restart`` file written before it does not apply."""
        self._checked_at = float("-inf")
        self._stamp: tuple[int, int, int] | None = None
        self._current = FaultSwitches()
        self.last_error: str | None = None

    def current(self) -> FaultSwitches:
        """The switches in force; a malformed file keeps the previous ones."""
        if self.path is None:
            return self._current
        now = time.monotonic()
        if now - self._checked_at < self.poll_s:
            return self._current
        self._checked_at = now
        try:
            st = self.path.stat()
        except FileNotFoundError:
            self._stamp, self._current = None, FaultSwitches()
            return self._current
        # write_faults replaces the file, so a new inode marks a rewrite even when two
        # writes land within one timestamp tick.
        stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp != self._stamp:
            try:
                switches = FaultSwitches.model_validate_json(self.path.read_text())
                self.last_error = None
            except (ValidationError, OSError) as exc:
                self.last_error = str(exc)
            else:
                stale = switches.until_restart and st.st_mtime_ns < self.started_ns
                self._current = FaultSwitches() if stale else switches
            self._stamp = stamp
        return self._current

    @classmethod
    def from_environment(cls) -> FaultFile:
        value = os.environ.get(FAULT_FILE_ENV)
        return cls(Path(value) if value else None)
