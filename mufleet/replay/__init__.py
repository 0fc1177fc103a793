"""One trace slice replayed on a real local sim fleet and on the fleet simulator.

The same requests go two ways:

* **real**: ``nodes`` sim-engine ``tritonserver`` nodes (one hardware profile, one
  ``time_scale``) behind the router (``mu_cost``, health probes off), fed by an asyncio
  client that sends each request at its arrival time over KServe gRPC streaming to the
  router and times every response;
* **simulated**: :func:`mufleet.simulator.run.simulate` over a fleet of the same pair, with
  the nodes' batch size and time scale, so its TTFT and TPOT are in wall seconds too.

Prompts are real text (:class:`mufleet.trace_prompts.PromptBuilder`): a Mooncake hash id
becomes a block of ``block_tokens`` tokens, so the trace's prefix sharing is token-prefix
sharing on the nodes, and the simulator gets the same blocks as prefix ids. The token
counts the simulator sees are those the nodes' preprocessing makes (BOS included).

KV hits on the real side come from each request's own ``kv_cache_reused_blocks`` (the
TensorRT-LLM ``return_perf_metrics`` outputs, which the router passes through), capped one
token short of the prompt as the engines count them.
"""

from __future__ import annotations

from mufleet.replay.client import figures, replay, send_one, timings_json
from mufleet.replay.fleet import (
    RouterProcess,
    SimFleet,
    engine_settings,
    local_sim_fleet,
    router_process,
)
from mufleet.replay.probes import check_settings, probe_overheads, warm_up
from mufleet.replay.spec import (
    DEFAULT_TRACE,
    PAIR,
    FleetShape,
    PinnedPolicy,
    ReplayItem,
    SliceSpec,
    Timing,
    build_items,
    sim_trace,
    simulate_items,
)

__all__ = [
    "DEFAULT_TRACE",
    "PAIR",
    "FleetShape",
    "PinnedPolicy",
    "ReplayItem",
    "RouterProcess",
    "SimFleet",
    "SliceSpec",
    "Timing",
    "build_items",
    "check_settings",
    "engine_settings",
    "figures",
    "local_sim_fleet",
    "probe_overheads",
    "replay",
    "router_process",
    "send_one",
    "sim_trace",
    "simulate_items",
    "timings_json",
    "warm_up",
]
