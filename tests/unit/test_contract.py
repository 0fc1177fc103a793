"""The rendered repository against upstream's inflight_batcher_llm configs.

``tests/data/upstream_contract.json`` holds upstream's tensors (TensorRT-LLM 1.2, the
release the GPU image's base carries). Every rendered profile, decoupled or not, must
declare every upstream input and output with upstream's data type, dims, optional flag,
reshape and ragged flag; anything it adds must be optional (inputs) or a documented
extra output.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from mufleet.repository import RenderParams, render
from python_backends.contract import MODELS, MUFLEET_FRONT_OUTPUTS, TRTLLM_FROM_FRONT
from python_backends.engine_limits import LIMITS, refusal

UPSTREAM = json.loads((Path(__file__).parents[1] / "data" / "upstream_contract.json").read_text())[
    "models"
]
TEMPLATE_TYPES = {
    "${logits_datatype}": "TYPE_FP32",
    "${prompt_embedding_table_data_type}": "TYPE_FP16",
    "${encoder_input_features_data_type}": "TYPE_FP16",
}
VARIANTS = [
    ("cpu", True),
    ("cpu", False),
    ("sim", True),
    ("trtllm", True),
    ("trtllm", False),
]


def _dtype(name: str) -> int:
    return int(model_config_pb2.DataType.Value(TEMPLATE_TYPES.get(name, name)))


@pytest.fixture(scope="module", params=VARIANTS, ids=[f"{p}-decoupled-{d}" for p, d in VARIANTS])
def rendered(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Any:
    profile, decoupled = request.param
    values: dict[str, object] = {
        "profile": profile,
        "tokenizer_dir": Path("/tok"),
        "decoupled_mode": decoupled,
    }
    if profile == "sim":
        values["hardware_profile"] = Path("/gpu.json")
    if profile == "trtllm":
        values["engine_dir"] = Path("/engines")
    out = render(RenderParams.model_validate(values), tmp_path_factory.mktemp(profile) / "r")
    configs = {
        model: text_format.Parse(
            (out / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig()
        )
        for model in UPSTREAM
    }
    return decoupled, configs


@pytest.mark.parametrize("model", sorted(UPSTREAM))
def test_every_upstream_input_is_declared_as_upstream_declares_it(
    rendered: Any, model: str
) -> None:
    ours = {t.name: t for t in rendered[1][model].input}
    for spec in UPSTREAM[model]["inputs"]:
        name = spec["name"]
        assert name in ours, f"{model} lacks upstream input {name}"
        tensor = ours[name]
        assert tensor.data_type == _dtype(spec["data_type"]), f"{model}.{name} data type"
        assert list(tensor.dims) == spec["dims"], f"{model}.{name} dims"
        assert tensor.optional == spec["optional"], f"{model}.{name} optional flag"
        assert tensor.HasField("reshape") == (spec["reshape"] is not None), f"{model}.{name}"
        if spec["reshape"] is not None:
            assert list(tensor.reshape.shape) == spec["reshape"], f"{model}.{name} reshape"
        assert tensor.allow_ragged_batch == spec["allow_ragged_batch"], f"{model}.{name} ragged"
    extra = set(ours) - {s["name"] for s in UPSTREAM[model]["inputs"]}
    assert all(ours[name].optional for name in extra), f"{model}: required extras {extra}"


@pytest.mark.parametrize("model", sorted(UPSTREAM))
def test_every_upstream_output_is_declared_as_upstream_declares_it(
    rendered: Any, model: str
) -> None:
    ours = {t.name: t for t in rendered[1][model].output}
    for spec in UPSTREAM[model]["outputs"]:
        name = spec["name"]
        assert name in ours, f"{model} lacks upstream output {name}"
        assert ours[name].data_type == _dtype(spec["data_type"]), f"{model}.{name} data type"
        assert list(ours[name].dims) == spec["dims"], f"{model}.{name} dims"
    extra = set(ours) - {s["name"] for s in UPSTREAM[model]["outputs"]}
    assert extra <= {t.name for t in MUFLEET_FRONT_OUTPUTS}, f"{model}: undeclared extras"


def test_decoupled_mode_reaches_the_streaming_models(rendered: Any) -> None:
    decoupled, configs = rendered
    for model in ("tensorrt_llm", "tensorrt_llm_bls"):
        assert configs[model].model_transaction_policy.decoupled is decoupled, model
    for model in ("preprocessing", "postprocessing"):
        assert not configs[model].model_transaction_policy.decoupled, model


def test_ensemble_steps_connect_declared_tensors(rendered: Any) -> None:
    configs = rendered[1]
    ensemble = configs["ensemble"]
    available = {t.name for t in ensemble.input}
    for step in ensemble.ensemble_scheduling.step:
        model = configs[step.model_name]
        inputs = {t.name for t in model.input}
        outputs = {t.name for t in model.output}
        for key, value in step.input_map.items():
            assert key in inputs, f"{step.model_name} has no input {key}"
            assert value in available, f"{step.model_name}.{key} <- {value}: not produced"
        for key, value in step.output_map.items():
            assert key in outputs, f"{step.model_name} has no output {key}"
            available.add(value)
    for tensor in ensemble.output:
        assert tensor.name in available, f"ensemble output {tensor.name} is never produced"


def test_every_front_input_is_used_by_some_step(rendered: Any) -> None:
    ensemble = rendered[1]["ensemble"]
    mapped = {v for step in ensemble.ensemble_scheduling.step for v in step.input_map.values()}
    unused = {t.name for t in ensemble.input} - mapped
    assert not unused, f"ensemble inputs that reach no model: {sorted(unused)}"


def test_table_names_are_unique() -> None:
    for name, model in MODELS.items():
        assert len(set(model.input_names)) == len(model.input_names), name
        assert len(set(model.output_names)) == len(model.output_names), name


def test_limits_name_real_engine_inputs() -> None:
    names = set(MODELS["tensorrt_llm"].input_names)
    assert set(LIMITS) <= names
    assert set(TRTLLM_FROM_FRONT) <= names


@pytest.mark.parametrize(
    ("name", "value", "cpu_refuses", "sim_refuses"),
    [
        ("beam_width", np.array([[1]]), False, False),
        ("beam_width", np.array([[4]]), True, True),
        ("lora_task_id", np.array([[7]], dtype=np.uint64), True, True),
        ("guided_decoding_guide_type", np.array([[b"json"]], dtype=object), True, True),
        ("guided_decoding_guide_type", np.array([[b""]], dtype=object), False, False),
        ("return_context_logits", np.array([[True]]), False, True),
        ("return_generation_logits", np.array([[False]]), False, False),
        ("stop", np.array([[True]]), True, True),
        ("temperature", np.array([[0.5]], dtype=np.float32), False, False),
    ],
)
def test_refusals_name_the_input_and_what_is_supported(
    name: str, value: np.ndarray, cpu_refuses: bool, sim_refuses: bool
) -> None:
    for engine, refuses in (("cpu", cpu_refuses), ("sim", sim_refuses)):
        reason = refusal(engine, name, value)
        assert (reason is not None) is refuses, (engine, name)
        if reason is not None:
            assert f"'{name}'" in reason and "supports" in reason and engine in reason
