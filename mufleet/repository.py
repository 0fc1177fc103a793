"""Render the template model repository for one engine profile.

Templates live in ``model_repository/``. A model directory that holds ``profiles/`` has
variants (``profiles/<variant>/config.pbtxt`` and its version folders); the renderer copies
the variant of the chosen profile in its place. The ``cpu`` and ``sim`` profiles share the
``python`` variant of ``tensorrt_llm``: one Python model whose ``engine`` parameter picks
the engine. ``${name}`` placeholders in every
``config.pbtxt`` are filled from :class:`RenderParams`; a placeholder with no value is an
error, never an empty string.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mufleet import paths
from python_backends.contract import MODELS, ensemble_steps

Profile = Literal["cpu", "sim", "trtllm"]
PROFILES: tuple[str, ...] = ("cpu", "sim", "trtllm")
VARIANTS: dict[str, str] = {"cpu": "python", "sim": "python", "trtllm": "trtllm"}
"""Which ``profiles/<variant>`` of a model each profile uses."""
_PLACEHOLDER = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class RenderError(ValueError):
    """The templates or the parameters cannot make a valid repository."""


DEFAULT_MAX_BATCH_SIZE = 8
"""The cpu engine's sequences in flight when nothing says otherwise."""


class RenderParams(BaseModel):
    """Everything that differs between two rendered repositories."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    profile: Profile = "cpu"
    tokenizer_dir: Path
    model_dir: Path | None = Field(None, description="HF checkpoint (cpu profile)")
    engine_dir: Path | None = Field(None, description="TensorRT-LLM engine (trtllm profile)")
    max_batch_size: int = Field(
        DEFAULT_MAX_BATCH_SIZE,
        ge=1,
        le=1024,
        description="sequences in flight per engine; unset, a sim node takes its hardware "
        "profile's max_num_sequences (the engine the profile describes)",
    )
    priority_levels: int = Field(
        7, ge=1, le=16, description="the router's levels: canaries, then 3 tiers x 2 price bands"
    )
    default_priority_level: int = Field(5, ge=1, description="standard tier, expensive band")
    max_queue_delay_us: int = Field(500, ge=0)
    kv_cache_free_gpu_mem_fraction: float = Field(0.9, gt=0.0, le=1.0)
    enable_kv_cache_reuse: bool = True
    batching_strategy: Literal["inflight_fused_batching", "V1"] = "inflight_fused_batching"
    prefix_cache_mb: int = Field(256, ge=0, description="cpu engine prefix KV cache budget")
    engine_threads: int = Field(1, ge=1, le=64, description="torch threads per cpu engine")
    max_context: int = Field(
        0, ge=0, description="context window; 0 reads it from the checkpoint's config"
    )
    hardware_profile: Path | None = Field(None, description="sim: emulated (model, GPU) pair")
    time_scale: float = Field(1.0, gt=0.0, description="sim: wall seconds per emulated second")
    max_num_tokens: int = Field(
        0, ge=0, description="sim: prefill token budget per iteration; 0: the hardware profile's"
    )
    kv_cache_blocks: int = Field(
        0, ge=0, description="sim: KV cache blocks; 0: the hardware profile's"
    )
    decoupled_mode: bool = Field(
        True, description="tensorrt_llm and tensorrt_llm_bls stream (unary infer needs false)"
    )
    max_queue_size: int = Field(0, ge=0, description="Triton queue bound per model; 0: none")
    preprocessing_instance_count: int = Field(
        2, ge=1, le=64, description="two: a prompt's tokenizing never waits for another's"
    )
    postprocessing_instance_count: int = Field(
        1,
        ge=1,
        le=64,
        description="one: the ensemble pairs a stream's ids and texts in the order each "
        "arrives, so with several instances a response can carry a neighbour's text "
        "(Triton refuses preserve_ordering with priority levels); one instance costs ~1% of "
        "concurrent streams a ~0.5 s stall on a response",
    )
    bls_instance_count: int = Field(1, ge=1, le=64)
    tensorrt_llm_instance_count: int = Field(
        1, ge=1, le=64, description="trtllm: engine instances (orchestrator mode, gpu_device_ids)"
    )
    bls_max_concurrent_requests: int = Field(
        64, ge=1, le=4096, description="requests one BLS instance serves at once"
    )
    accumulate_tokens: bool = Field(
        False, description="BLS streaming: each response carries the whole text so far"
    )
    exclude_input_in_output: bool = Field(
        True, description="default for requests that do not send exclude_input_in_output"
    )
    add_special_tokens: bool = True
    skip_special_tokens: bool = True
    enable_chunked_context: bool = False
    max_tokens_in_paged_kv_cache: int = Field(0, ge=0, description="trtllm; 0: backend default")
    max_attention_window_size: int = Field(0, ge=0, description="trtllm; 0: backend default")
    gpu_device_ids: str = Field("", pattern=r"^([0-9]+(,[0-9]+)*(;[0-9]+(,[0-9]+)*)*)?$")
    participant_ids: str = Field("", pattern=r"^([0-9]+(,[0-9]+)*(;[0-9]+(,[0-9]+)*)*)?$")
    logits_datatype: Literal["TYPE_FP32", "TYPE_FP16", "TYPE_BF16"] = "TYPE_FP32"
    prompt_embedding_table_data_type: Literal["TYPE_FP16", "TYPE_BF16", "TYPE_FP32"] = "TYPE_FP16"
    encoder_input_features_data_type: Literal["TYPE_FP16", "TYPE_BF16", "TYPE_FP32"] = "TYPE_FP16"

    @model_validator(mode="before")
    @classmethod
    def _engine_batch_size(cls, data: object) -> object:
        """An unset ``max_batch_size`` of a sim node is its hardware profile's limit."""
        if not isinstance(data, dict) or data.get("max_batch_size") is not None:
            return data
        data = {k: v for k, v in data.items() if k != "max_batch_size"}
        if data.get("profile") == "sim" and data.get("hardware_profile"):
            from python_backends.sim_engine.hardware import HardwareProfile, resolve_profile

            try:
                hardware = HardwareProfile.load(resolve_profile(str(data["hardware_profile"])))
            except (OSError, ValueError):  # a file only the serving machine has: the default
                return data
            data["max_batch_size"] = min(hardware.max_num_sequences, 1024)
        return data

    @model_validator(mode="after")
    def _check(self) -> RenderParams:
        if self.default_priority_level > self.priority_levels:
            raise ValueError("default_priority_level must be within priority_levels")
        if self.profile == "trtllm" and self.engine_dir is None:
            raise ValueError("the trtllm profile needs engine_dir")
        if self.profile == "sim" and self.hardware_profile is None:
            raise ValueError("the sim profile needs hardware_profile")
        if self.profile != "trtllm" and self.logits_datatype != "TYPE_FP32":
            raise ValueError("the Python engines return TYPE_FP32 logits")
        if self.profile != "trtllm" and self.tensorrt_llm_instance_count != 1:
            raise ValueError("a Python engine runs one instance per node")
        return self

    def variables(self) -> dict[str, str]:
        """Template variables, as the strings that go into ``config.pbtxt``."""
        values: dict[str, str] = {}
        for key, value in self.model_dump().items():
            if key == "profile":
                continue
            if isinstance(value, bool):
                values[key] = "true" if value else "false"
            elif value is None:
                values[key] = ""
            else:
                values[key] = str(value)
        values["model_dir"] = str(self.model_dir or self.tokenizer_dir)
        values["engine_dir"] = str(self.engine_dir or "")
        values["hardware_profile"] = str(self.hardware_profile or "")
        values["engine"] = self.profile
        values["optional_trtllm_parameters"] = "\n".join(
            f'parameters: {{ key: "{key}" value: {{ string_value: "{value}" }} }}'
            for key, value in (
                ("max_tokens_in_paged_kv_cache", self.max_tokens_in_paged_kv_cache),
                ("max_attention_window_size", self.max_attention_window_size),
                ("gpu_device_ids", self.gpu_device_ids),
                ("participant_ids", self.participant_ids),
            )
            if value
        )
        return values

    def digest(self) -> str:
        """Short stable hash naming a rendered repository."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:12]


def fill(text: str, variables: dict[str, str], where: str = "template") -> str:
    """Replace ``${name}`` placeholders; unknown names raise :class:`RenderError`."""

    def sub(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in variables:
            raise RenderError(f"{where}: no value for ${{{name}}}")
        return variables[name]

    return _PLACEHOLDER.sub(sub, text)


def _model_variables(model: str, variables: dict[str, str]) -> dict[str, str]:
    """``variables`` plus the blocks the contract table renders for ``model``."""
    out = dict(variables)
    if model in MODELS:
        out["io"] = fill(MODELS[model].pbtxt(), variables, f"{model} contract")
    if model == "ensemble":
        out["ensemble_steps"] = ensemble_steps()
    return out


def _copy_model(src: Path, dst: Path, profile: str) -> None:
    variants = src / "profiles"
    if variants.is_dir():
        chosen = variants / VARIANTS[profile]
        if not chosen.is_dir():
            raise RenderError(f"model {src.name} has no variant for profile {profile!r}")
        src = chosen
    shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__", "*.pyc", "profiles"))


def render(params: RenderParams, out: Path, templates: Path | None = None) -> Path:
    """Write a complete repository for ``params`` into ``out`` (replaced atomically)."""
    templates = templates or paths.model_repository_templates()
    if not templates.is_dir():
        raise RenderError(f"template repository not found: {templates}")
    variables = params.variables()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".render-", dir=out.parent))
    try:
        for model in sorted(p for p in templates.iterdir() if p.is_dir()):
            if model.name.startswith((".", "_")):
                continue
            _copy_model(model, staging / model.name, params.profile)
            config = staging / model.name / "config.pbtxt"
            if not config.exists():
                raise RenderError(f"model {model.name} has no config.pbtxt")
            config.write_text(
                fill(config.read_text(), _model_variables(model.name, variables), str(config))
            )
        if out.exists():
            shutil.rmtree(out)
        os.replace(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out


def templates_digest(templates: Path) -> str:
    """Hash of every template file, so an edited template renders anew."""
    digest = hashlib.sha256()
    for file in sorted(templates.rglob("*")):
        if file.is_file() and "__pycache__" not in file.parts:
            digest.update(str(file.relative_to(templates)).encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]


def render_cached(params: RenderParams, templates: Path | None = None) -> Path:
    """Render into the mufleet home once per (parameters, templates) pair.

    A running server keeps reading its repository (model reloads), so an existing
    rendering is never rewritten in place: new content gets a new directory.
    """
    templates = templates or paths.model_repository_templates()
    name = f"{params.profile}-{params.digest()}-{templates_digest(templates)}"
    out = paths.home() / "repos" / name
    if out.is_dir():
        return out
    return render(params, out, templates)
