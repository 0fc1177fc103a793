"""Unit tests for rendering the template model repository (mufleet.repository)."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
from google.protobuf import text_format
from pydantic import ValidationError
from tritonclient.grpc import model_config_pb2

from mufleet import paths
from mufleet.repository import (
    RenderError,
    RenderParams,
    fill,
    render,
    render_cached,
    templates_digest,
)

MODELS = ("ensemble", "postprocessing", "preprocessing", "tensorrt_llm", "tensorrt_llm_bls")
PRIORITY_LEVELS = 5
PROFILES = ("cpu", "sim", "trtllm")


def _params(profile: str = "cpu", **overrides: object) -> RenderParams:
    base: dict[str, object] = {
        "profile": profile,
        "tokenizer_dir": Path("/models/tok"),
        "model_dir": Path("/models/hf"),
        "priority_levels": PRIORITY_LEVELS,
        "default_priority_level": 4,
        "max_batch_size": 16,
    }
    if profile == "trtllm":
        base["engine_dir"] = Path("/engines/llama")
    if profile == "sim":
        base["hardware_profile"] = Path("/profiles/h100.json")
    base.update(overrides)
    return RenderParams.model_validate(base)


def _load(repo: Path, model: str) -> Any:
    """The rendered ``config.pbtxt`` of ``model`` as a ``ModelConfig`` message."""
    text = (repo / model / "config.pbtxt").read_text()
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _configs(repo: Path) -> dict[str, Any]:
    return {model: _load(repo, model) for model in MODELS}


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("rendered")
    return {profile: render(_params(profile), root / profile) for profile in PROFILES}


@pytest.fixture
def templates(tmp_path: Path) -> Path:
    """A private copy of the project's templates that a test may edit."""
    copy = tmp_path / "templates"
    shutil.copytree(
        paths.model_repository_templates(),
        copy,
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    return copy


def test_render_writes_every_model(rendered: dict[str, Path]) -> None:
    for repo in rendered.values():
        assert sorted(p.name for p in repo.iterdir() if p.is_dir()) == sorted(MODELS)
        assert not list(repo.parent.glob(".render-*"))


@pytest.mark.parametrize("profile", PROFILES)
def test_every_placeholder_is_filled(rendered: dict[str, Path], profile: str) -> None:
    for config in rendered[profile].glob("*/config.pbtxt"):
        assert "${" not in config.read_text(), config


def test_cpu_profile_variant(rendered: dict[str, Path]) -> None:
    repo = rendered["cpu"]
    config = _load(repo, "tensorrt_llm")

    assert config.backend == "python"
    assert config.parameters["engine"].string_value == "cpu"
    assert config.parameters["model_dir"].string_value == "/models/hf"
    assert config.max_batch_size == 16
    assert (repo / "tensorrt_llm" / "1" / "model.py").is_file()
    assert not (repo / "tensorrt_llm" / "profiles").exists()


def test_sim_profile_variant(rendered: dict[str, Path]) -> None:
    repo = rendered["sim"]
    config = _load(repo, "tensorrt_llm")

    assert config.backend == "python"
    assert config.parameters["engine"].string_value == "sim"
    assert config.parameters["hardware_profile"].string_value == "/profiles/h100.json"
    assert (repo / "tensorrt_llm" / "1" / "model.py").is_file()


def test_trtllm_profile_variant(rendered: dict[str, Path]) -> None:
    repo = rendered["trtllm"]
    config = _load(repo, "tensorrt_llm")

    assert config.backend == "tensorrtllm"
    assert config.parameters["gpt_model_path"].string_value == "/engines/llama"
    assert config.parameters["tokenizer_dir"].string_value == "/models/tok"
    assert config.parameters["gpt_model_type"].string_value == "inflight_fused_batching"
    assert config.parameters["enable_kv_cache_reuse"].string_value == "true"
    assert not (repo / "tensorrt_llm" / "1" / "model.py").exists()
    assert not (repo / "tensorrt_llm" / "profiles").exists()


def test_cpu_model_dir_defaults_to_tokenizer_dir(tmp_path: Path) -> None:
    repo = render(_params(model_dir=None), tmp_path / "repo")

    assert _load(repo, "tensorrt_llm").parameters["model_dir"].string_value == "/models/tok"


@pytest.mark.parametrize("profile", PROFILES)
def test_every_config_parses_as_model_config(rendered: dict[str, Path], profile: str) -> None:
    configs = _configs(rendered[profile])

    for name, config in configs.items():
        assert config.name == name
        assert config.max_batch_size == 16
    assert configs["ensemble"].platform == "ensemble"


@pytest.mark.parametrize("profile", PROFILES)
def test_composing_models_declare_priority_levels(rendered: dict[str, Path], profile: str) -> None:
    configs = _configs(rendered[profile])
    steps = configs["ensemble"].ensemble_scheduling.step

    assert [s.model_name for s in steps] == ["preprocessing", "tensorrt_llm", "postprocessing"]
    for step in steps:
        config = configs[step.model_name]
        assert config.HasField("dynamic_batching"), step.model_name
        assert config.dynamic_batching.priority_levels == PRIORITY_LEVELS
        assert config.dynamic_batching.default_priority_level == 4


@pytest.mark.parametrize("profile", PROFILES)
def test_ensemble_maps_reference_existing_tensors(rendered: dict[str, Path], profile: str) -> None:
    configs = _configs(rendered[profile])
    ensemble = configs["ensemble"]
    available = {t.name: t.data_type for t in ensemble.input}

    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        inputs = {t.name: t for t in model.input}
        outputs = {t.name: t for t in model.output}
        for key, source in step.input_map.items():
            assert key in inputs, f"{step.model_name} has no input {key}"
            assert source in available, f"{step.model_name}.{key} reads unknown {source}"
            assert available[source] == inputs[key].data_type, f"{step.model_name}.{key}"
        required = {name for name, t in inputs.items() if not t.optional}
        assert required <= set(step.input_map), f"{step.model_name} misses required inputs"
        for key, target in step.output_map.items():
            assert key in outputs, f"{step.model_name} has no output {key}"
            assert target not in available, f"{target} written twice"
            available[target] = outputs[key].data_type

    for out in ensemble.output:
        assert available.get(out.name) == out.data_type, out.name


def test_variables_are_strings() -> None:
    variables = _params(enable_kv_cache_reuse=False).variables()

    assert variables["enable_kv_cache_reuse"] == "false"
    assert variables["priority_levels"] == str(PRIORITY_LEVELS)
    assert variables["engine_dir"] == ""
    assert "profile" not in variables


def test_params_reject_unknown_fields() -> None:
    with pytest.raises(ValidationError, match="extra"):
        _params(max_batch=4)


def test_params_reject_default_priority_above_levels() -> None:
    with pytest.raises(ValidationError, match="default_priority_level"):
        _params(priority_levels=2, default_priority_level=3)


def test_default_priority_equal_to_levels_is_allowed() -> None:
    assert _params(priority_levels=2, default_priority_level=2).default_priority_level == 2


def test_trtllm_requires_engine_dir() -> None:
    with pytest.raises(ValidationError, match="engine_dir"):
        _params("trtllm", engine_dir=None)


def test_sim_requires_hardware_profile() -> None:
    with pytest.raises(ValidationError, match="hardware_profile"):
        _params("sim", hardware_profile=None)


def test_params_are_frozen() -> None:
    params = _params()

    with pytest.raises(ValidationError):
        params.max_batch_size = 2  # type: ignore[misc]


def test_digest_depends_on_params() -> None:
    assert _params().digest() == _params().digest()
    assert _params().digest() != _params(max_batch_size=4).digest()


def test_fill_replaces_placeholders() -> None:
    assert fill("a: ${x} b: ${y_1}", {"x": "1", "y_1": "two"}) == "a: 1 b: two"
    assert fill("no placeholders $x {y}", {}) == "no placeholders $x {y}"


def test_fill_raises_on_missing_variable() -> None:
    with pytest.raises(RenderError, match=r"here\.pbtxt: no value for \$\{missing\}"):
        fill("a: ${x} b: ${missing}", {"x": "1"}, where="here.pbtxt")


def test_render_fails_on_unknown_placeholder(templates: Path, tmp_path: Path) -> None:
    config = templates / "postprocessing" / "config.pbtxt"
    config.write_text(
        config.read_text() + '\nparameters { key: "k" value: { string_value: "${nope}" } }\n'
    )
    out = tmp_path / "out" / "repo"

    with pytest.raises(RenderError, match="nope"):
        render(_params(), out, templates)

    assert not out.exists()
    assert list(out.parent.iterdir()) == []


def test_render_fails_on_missing_profile_variant(templates: Path, tmp_path: Path) -> None:
    shutil.rmtree(templates / "tensorrt_llm" / "profiles" / "trtllm")

    with pytest.raises(RenderError, match="trtllm"):
        render(_params("trtllm"), tmp_path / "repo", templates)


def test_render_replaces_existing_output(tmp_path: Path) -> None:
    out = tmp_path / "repo"
    (out / "stale").mkdir(parents=True)

    render(_params(), out)

    assert not (out / "stale").exists()
    assert (out / "ensemble" / "config.pbtxt").is_file()


def test_render_cached_reuses_then_renders_anew(templates: Path) -> None:
    params = _params()

    first = render_cached(params, templates)
    marker = first / "marker"
    marker.write_text("kept")
    again = render_cached(params, templates)

    assert again == first
    assert marker.read_text() == "kept"
    assert first.is_relative_to(paths.home())

    config = templates / "preprocessing" / "config.pbtxt"
    config.write_text(config.read_text() + "\n# edited\n")
    changed = render_cached(params, templates)

    assert changed != first
    assert first.is_dir()
    assert "# edited" in (changed / "preprocessing" / "config.pbtxt").read_text()
    assert "# edited" not in (first / "preprocessing" / "config.pbtxt").read_text()


def test_render_cached_differs_per_params(templates: Path) -> None:
    assert render_cached(_params(), templates) != render_cached(
        _params(max_batch_size=2), templates
    )


def test_templates_digest_ignores_pycache(templates: Path) -> None:
    before = templates_digest(templates)
    (templates / "preprocessing" / "1" / "__pycache__").mkdir(exist_ok=True)
    (templates / "preprocessing" / "1" / "__pycache__" / "x.pyc").write_bytes(b"junk")

    assert templates_digest(templates) == before


def test_a_sim_node_batches_what_its_hardware_profile_says_unless_told_otherwise() -> None:
    from python_backends.sim_engine.hardware import HardwareProfile, resolve_profile

    name = "llama-3.1-8b_a100-sxm-80gb_tp1"
    built = HardwareProfile.load(resolve_profile(name)).max_num_sequences
    base = {"profile": "sim", "tokenizer_dir": Path("/t"), "hardware_profile": name}
    assert RenderParams.model_validate(base).max_batch_size == built
    assert RenderParams.model_validate({**base, "max_batch_size": None}).max_batch_size == built
    assert RenderParams.model_validate({**base, "max_batch_size": 8}).max_batch_size == 8
    cpu = RenderParams.model_validate({"profile": "cpu", "tokenizer_dir": Path("/t")})
    assert cpu.max_batch_size == 8
    limits = RenderParams.model_validate({**base, "max_num_tokens": 512, "kv_cache_blocks": 100})
    assert limits.variables()["max_num_tokens"] == "512"
    assert limits.variables()["kv_cache_blocks"] == "100"
