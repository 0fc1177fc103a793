"""Node faults for a simulation: ``KIND:NODE@START[+DURATION]``, comma-separated.

* ``hang`` — the engine stops between iterations; readiness still answers (the silent
  failure). It lasts ``DURATION`` seconds or until the node is restarted.
* ``kill`` — the server process dies: readiness is refused and the work on it is gone
  until the router notices; a restart brings it back.
* ``slowF`` (e.g. ``slow5``, F ≥ 1) — every iteration takes F times as long, for ``DURATION``
  seconds (default: the rest of the run). No probe fails; only routing can react.

``NODE`` is a node index (0-based, in fleet order).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

__all__ = ["Fault", "FaultPlan", "FaultSpecError", "parse_faults"]

_NUMBER = r"[0-9]+(?:\.[0-9]+)?"
_ITEM = re.compile(
    rf"^(hang|kill|slow(?P<factor>{_NUMBER})):(?P<node>[0-9]+)@(?P<start>{_NUMBER})"
    rf"(?:\+(?P<dur>{_NUMBER}))?$"
)


class FaultSpecError(ValueError):
    """A ``--faults`` string that cannot be read."""


@dataclass(frozen=True)
class Fault:
    kind: str
    """``hang``, ``kill`` or ``slow``."""
    node: int
    start_s: float
    duration_s: float = math.inf
    factor: float = 1.0
    """The slowdown of a ``slow`` fault."""

    @property
    def end_s(self) -> float:
        return self.start_s + self.duration_s


@dataclass(frozen=True)
class FaultPlan:
    faults: tuple[Fault, ...]


def parse_faults(spec: str, nodes: int) -> FaultPlan:
    faults = []
    for part in spec.split(","):
        item = part.strip()
        match = _ITEM.match(item)
        if match is None:
            raise FaultSpecError(
                f"faults are KIND:NODE@START[+DURATION] with KIND hang, kill or slowF, got {item!r}"
            )
        node = int(match["node"])
        if node >= nodes:
            raise FaultSpecError(f"fault {item!r}: the fleet has nodes 0..{nodes - 1}")
        kind = match.group(1)
        factor = 1.0
        if kind.startswith("slow"):
            factor = float(match["factor"])
            if factor < 1:
                raise FaultSpecError(f"fault {item!r}: the slowdown factor must be >= 1")
            kind = "slow"
        duration = float(match["dur"]) if match["dur"] else math.inf
        faults.append(Fault(kind, node, float(match["start"]), duration, factor))
    return FaultPlan(tuple(sorted(faults, key=lambda f: f.start_s)))
