"""Which nodes a simulated fleet has: ``--pair P --nodes N`` or ``--fleet P1:N1,P2:N2``.

A pair names both the calibrated MU profile the router prices with (``profiles/P.json``) and
the hardware profile the simulated engine runs (``profiles/hardware/P.json``), so a simulated
node is priced and timed as a real sim-engine node of that pair.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mufleet.paths import profiles
from python_backends.sim_engine.hardware import HardwareProfile, resolve_profile
from router.cost_model import PairProfile

__all__ = ["DEFAULT_PAIR", "FleetSpec", "FleetSpecError", "NodeGroup", "parse_fleet"]

DEFAULT_PAIR = "llama-3.1-8b_h100-sxm_tp1"


class FleetSpecError(ValueError):
    """A fleet description that names an unknown pair or a bad count."""


@dataclass(frozen=True)
class NodeGroup:
    pair: str
    count: int
    hardware: HardwareProfile
    profile: PairProfile


@dataclass(frozen=True)
class FleetSpec:
    groups: tuple[NodeGroup, ...]

    @property
    def nodes(self) -> int:
        return sum(g.count for g in self.groups)

    @property
    def capacity_mu_s(self) -> float:
        return sum(g.count * g.profile.capacity_mu_s for g in self.groups)

    def describe(self) -> str:
        return ",".join(f"{g.pair}:{g.count}" for g in self.groups)


def _pair_profile(pair: str) -> PairProfile:
    path = Path(pair)
    if not path.is_file():
        path = profiles() / f"{pair}.json"
    if not path.is_file():
        known = sorted(p.stem for p in profiles().glob("*.json"))
        raise FleetSpecError(f"no calibrated pair profile {pair!r}; calibrated: {', '.join(known)}")
    return PairProfile.load(path)


def _group(pair: str, count: int) -> NodeGroup:
    if count < 1:
        raise FleetSpecError(f"pair {pair!r}: node count must be >= 1, got {count}")
    try:
        hardware = HardwareProfile.load(resolve_profile(pair))
    except FileNotFoundError as exc:
        raise FleetSpecError(str(exc)) from None
    return NodeGroup(pair, count, hardware, _pair_profile(pair))


def parse_fleet(fleet: str | None = None, pair: str | None = None, nodes: int = 16) -> FleetSpec:
    """``fleet`` (``P1:N1,P2:N2``) if given, else ``nodes`` nodes of ``pair``."""
    if not fleet:
        return FleetSpec((_group(pair or DEFAULT_PAIR, nodes),))
    groups = []
    for part in fleet.split(","):
        name, sep, count = part.strip().rpartition(":")
        if not sep or not name or not count.strip().isdigit():
            raise FleetSpecError(f"fleet entries are PAIR:COUNT, got {part.strip()!r}")
        groups.append(_group(name, int(count)))
    return FleetSpec(tuple(groups))
