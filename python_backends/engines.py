"""Engines by name: the ``engine`` parameter of the ``tensorrt_llm`` Python model."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path

from python_backends.engine_types import Engine


def _cpu(params: Mapping[str, str], max_batch_size: int) -> Engine:
    from python_backends.cpu_engine.engine import CpuEngine, EngineConfig

    reuse = params.get("enable_kv_cache_reuse", "true") == "true"
    return CpuEngine(
        EngineConfig(
            model_dir=Path(params["model_dir"]),
            max_num_sequences=max_batch_size,
            prefix_cache_bytes=(int(params.get("prefix_cache_mb", "256")) << 20) if reuse else 0,
            threads=int(params.get("engine_threads", "1")),
        )
    )


def _sim(params: Mapping[str, str], max_batch_size: int) -> Engine:
    from python_backends.sim_engine.engine import SimConfig, SimEngine
    from python_backends.sim_engine.faults import FaultFile
    from python_backends.sim_engine.hardware import HardwareProfile, resolve_profile
    from python_backends.text_codec import tokenizer_vocab_size

    profile = HardwareProfile.load(resolve_profile(params["hardware_profile"]))
    return SimEngine(
        SimConfig(
            profile=profile,
            vocab_size=tokenizer_vocab_size(Path(params["tokenizer_dir"])),
            max_num_sequences=max_batch_size,
            time_scale=float(params.get("time_scale", "1.0")),
            max_context=int(params.get("max_context", "0")) or None,
            max_num_tokens=int(params.get("max_num_tokens", "0")) or None,
            kv_cache_blocks=int(params.get("kv_cache_blocks", "0")) or None,
        ),
        faults=FaultFile.from_environment(),
    )


ENGINES: dict[str, Callable[[Mapping[str, str], int], Engine]] = {"cpu": _cpu, "sim": _sim}


def build_engine(kind: str, params: Mapping[str, str], max_batch_size: int) -> Engine:
    """The engine named ``kind`` configured from the model's parameters."""
    try:
        factory = ENGINES[kind]
    except KeyError:
        raise ValueError(f"unknown engine {kind!r}; known: {', '.join(sorted(ENGINES))}") from None
    return factory(params, max(max_batch_size, 1))
