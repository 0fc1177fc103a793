"""What a calibration needs to know about the server it measures, read from the server."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import tritonclient.grpc as grpcclient


@dataclass(frozen=True)
class ServerFacts:
    block_tokens: int = 1
    hardware: str = "unknown"
    model: str = "unknown"


def server_facts(url: str, engine_model: str = "tensorrt_llm") -> ServerFacts:
    """KV block size, hardware and model from the engine model's config (sim engines say
    more; the time scale and limits come from the node's metrics, see ``pacing``)."""
    client = grpcclient.InferenceServerClient(url)
    try:
        config = client.get_model_config(engine_model, as_json=True)["config"]
    finally:
        client.close()
    params = {k: v.get("string_value", "") for k, v in config.get("parameters", {}).items()}
    facts = ServerFacts()
    if params.get("engine") == "sim" and params.get("hardware_profile"):
        from python_backends.sim_engine.hardware import HardwareProfile

        try:
            hw = HardwareProfile.load(Path(params["hardware_profile"]))
        except OSError:  # a remote server's file: the caller names the pair itself
            return facts
        return ServerFacts(hw.kv_cache.block_tokens, hw.hardware, hw.model)
    if params.get("engine") == "cpu":
        model_dir = params.get("model_dir", "")
        return ServerFacts(1, "cpu", Path(model_dir).name or "unknown")
    return facts
