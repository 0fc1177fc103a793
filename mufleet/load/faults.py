"""The failover scenario's fault timeline: hang a node half-way, clear it later.

The hang goes through the node's sim-engine fault switch, as ``mufleet fault NODE --hang``
sets it (and ``mufleet fault NODE`` clears it). The times are taken from the test's start
as the locustfile records it (``llm_meta.json``), not from when Locust was launched, so
the fault lands where the report says it did.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

from python_backends.sim_engine.faults import FaultSwitches, write_faults


class FaultTimer(threading.Thread):
    """Sets ``hang`` on ``node``'s ``fault_file`` at ``at_s`` test seconds and clears it at
    ``clear_s``; :attr:`applied` holds the test seconds at which each actually happened."""

    def __init__(
        self, node: str, fault_file: Path, meta_file: Path, at_s: float, clear_s: float
    ) -> None:
        super().__init__(name="fault-timer", daemon=True)
        if not 0 <= at_s < clear_s:
            raise ValueError(f"the fault must start before it clears, got {at_s} and {clear_s}")
        self.node = node
        self.fault_file = fault_file
        self.meta_file = meta_file
        self.at_s = at_s
        self.clear_s = clear_s
        self.applied: dict[str, float] = {}
        self.t0: float | None = None
        self._stop_event = threading.Event()

    def _test_start(self) -> float | None:
        while not self._stop_event.is_set():
            try:
                return float(json.loads(self.meta_file.read_text())["start_s"])
            except (OSError, ValueError, KeyError):
                self._stop_event.wait(0.1)
        return None

    def _at(self, t0: float, offset: float) -> bool:
        """Wait until ``t0 + offset``; False if stopped first."""
        return not self._stop_event.wait(max(t0 + offset - time.time(), 0.0))

    def run(self) -> None:
        self.t0 = t0 = self._test_start()
        if t0 is None or not self._at(t0, self.at_s):
            return
        write_faults(self.fault_file, FaultSwitches(hang=True))
        self.applied["hang"] = time.time() - t0
        if self._at(t0, self.clear_s):
            self._clear()

    def _clear(self) -> None:
        write_faults(self.fault_file, FaultSwitches())
        if self.t0 is not None:
            self.applied["clear"] = time.time() - self.t0

    def stop(self) -> None:
        """End the timeline; a fault still set is cleared (never leave a node hung)."""
        self._stop_event.set()
        self.join(timeout=5)
        if "hang" in self.applied and "clear" not in self.applied:
            self._clear()
