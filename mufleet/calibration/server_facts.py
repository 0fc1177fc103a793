"""What a calibration needs to know about the server it measures, read from the server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tritonclient.grpc as grpcclient


@dataclass(frozen=True)
class ServerFacts:
    time_scale: float = 1.0
    block_tokens: int = 1
    hardware: str = "unknown"
    model: str = "unknown"


def server_facts(url: str, engine_model: str = "tensorrt_llm") -> ServerFacts:
    """Time scale and KV block size from the engine model's config (sim engines say more)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        config = client.get_model_config(engine_model, as_json=True)["config"]
    finally:
        client.close()
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    facts = ServerFacts(time_scale=float(params.get("time_scale") or 1.0))
    if params.get("engine") == "sim" and params.get("hardware_profile"):
        from python_backends.sim_engine.hardware import HardwareProfile

        try:
            hw = HardwareProfile.load(Path(params["hardware_profile"]))
        except OSError:  # a remote server's file: the caller names the pair itself
            return facts
        return ServerFacts(facts.time_scale, hw.kv_cache.block_tokens, hw.hardware, hw.model)
    if params.get("engine") == "cpu":
        model_dir = params.get("model_dir", "")
        return ServerFacts(facts.time_scale, 1, "cpu", Path(model_dir).name or "unknown")
    return facts
