"""Unit tests for mufleet.tiny_model: a deterministic, offline-built tiny Llama checkpoint."""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path
from typing import Any

import pytest
import torch

from mufleet import tiny_model
from mufleet.tiny_model import (
    TINY_MODEL_VERSION,
    TinyModelSpec,
    build_tiny_model,
    default_model_dir,
)

SENTENCE = (
    "The scheduler admitted 64 requests at 10:42 (p99 TTFT = 41.3 ms); "
    "naïve café prices rose 12% — still cheaper than a GPU-hour!\n\tdef f(x): return x ** 2"
)


@dataclasses.dataclass(frozen=True)
class Builds:
    """Directories built once for the whole module."""

    first: Path
    second: Path
    other_seed: Path


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    root = tmp_path_factory.mktemp("tiny_model")
    return Builds(
        first=build_tiny_model(root / "first"),
        second=build_tiny_model(root / "second"),
        other_seed=build_tiny_model(root / "seed1", TinyModelSpec(seed=1)),
    )


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "1")


def _load(model_dir: Path) -> tuple[Any, Any]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    model.eval()
    return tokenizer, model


def test_spec_defaults() -> None:
    spec = TinyModelSpec()
    assert dataclasses.astuple(spec) == (2048, 256, 688, 4, 4, 2, 2048, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.seed = 1  # type: ignore[misc]
    assert TINY_MODEL_VERSION


def test_build_layout(builds: Builds) -> None:
    names = {path.name for path in builds.first.iterdir()}
    assert {
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= names
    # Nothing left behind next to the target by the atomic build.
    assert sorted(path.name for path in builds.first.parent.iterdir()) == [
        "first",
        "second",
        "seed1",
    ]


def test_builds_are_byte_identical(builds: Builds) -> None:
    for name in ("model.safetensors", "tokenizer.json"):
        assert (builds.first / name).read_bytes() == (builds.second / name).read_bytes(), name
    # In fact every file is identical.
    for path in builds.first.iterdir():
        assert path.read_bytes() == (builds.second / path.name).read_bytes(), path.name


def test_seed_changes_weights_only(builds: Builds) -> None:
    from safetensors.torch import load_file

    weights = load_file(builds.first / "model.safetensors")
    other = load_file(builds.other_seed / "model.safetensors")
    assert weights.keys() == other.keys()
    assert not torch.equal(weights["model.embed_tokens.weight"], other["model.embed_tokens.weight"])
    assert not torch.equal(weights["lm_head.weight"], other["lm_head.weight"])
    tokenizer_bytes = (builds.first / "tokenizer.json").read_bytes()
    assert tokenizer_bytes == (builds.other_seed / "tokenizer.json").read_bytes()


def test_config_matches_tokenizer(builds: Builds) -> None:
    config = json.loads((builds.first / "config.json").read_text())
    generation = json.loads((builds.first / "generation_config.json").read_text())
    vocab = json.loads((builds.first / "tokenizer.json").read_text())["model"]["vocab"]
    ids = {
        "bos_token_id": vocab["<|begin_of_text|>"],
        "eos_token_id": vocab["<|end_of_text|>"],
        "pad_token_id": vocab["<|pad|>"],
    }
    for key, value in ids.items():
        assert config[key] == value, key
        assert generation[key] == value, key
    assert config["model_type"] == "llama"
    assert config["tie_word_embeddings"] is False
    assert config["dtype"] == "float32"
    assert config["vocab_size"] == 2048
    assert len(set(ids.values())) == 3


def test_existing_build_is_reused(builds: Builds, capfd: pytest.CaptureFixture[str]) -> None:
    before = {path.name: path.stat().st_mtime_ns for path in builds.first.iterdir()}
    assert build_tiny_model(builds.first) == builds.first
    after = {path.name: path.stat().st_mtime_ns for path in builds.first.iterdir()}
    assert before == after
    assert "training" not in capfd.readouterr().err


def test_stale_build_is_replaced(builds: Builds, tmp_path: Path) -> None:
    target = tmp_path / "model"
    shutil.copytree(builds.first, target)
    marker = target / "mufleet_tiny_model.json"
    stale = json.loads(marker.read_text())
    stale["version"] = "0"
    marker.write_text(json.dumps(stale))
    (target / "model.safetensors").write_bytes(b"stale")

    assert build_tiny_model(target) == target
    assert json.loads(marker.read_text())["version"] == TINY_MODEL_VERSION
    for name in ("model.safetensors", "tokenizer.json"):
        assert (target / name).read_bytes() == (builds.first / name).read_bytes(), name
    assert [path.name for path in tmp_path.iterdir()] == ["model"]


def test_refuses_to_overwrite_foreign_directory(tmp_path: Path) -> None:
    target = tmp_path / "not-a-model"
    target.mkdir()
    (target / "notes.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        build_tiny_model(target)
    assert (target / "notes.txt").read_text() == "keep me"


def test_default_model_dir_uses_mufleet_home(
    builds: Builds, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MUFLEET_HOME", str(tmp_path))
    expected = tmp_path / "models" / f"tiny-llama-v{TINY_MODEL_VERSION}"
    # Pre-seed it with the module's build so that this test does not build again.
    shutil.copytree(builds.first, expected)
    called: list[Path] = []
    monkeypatch.setattr(tiny_model, "_build_into", lambda tmp, spec: called.append(tmp))
    assert default_model_dir() == expected
    assert called == []


def test_loads_offline_and_round_trips(builds: Builds, offline: None) -> None:
    tokenizer, model = _load(builds.first)
    assert tokenizer.bos_token == "<|begin_of_text|>"
    assert tokenizer.eos_token == "<|end_of_text|>"
    assert tokenizer.pad_token == "<|pad|>"
    assert tokenizer.model_max_length == 2048
    assert model.config.bos_token_id == tokenizer.bos_token_id
    assert model.config.eos_token_id == tokenizer.eos_token_id
    assert model.config.pad_token_id == tokenizer.pad_token_id
    assert model.dtype == torch.float32

    ids = tokenizer.encode(SENTENCE)
    assert ids[0] == tokenizer.bos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == SENTENCE
    plain = tokenizer.encode(SENTENCE, add_special_tokens=False)
    assert tokenizer.decode(plain) == SENTENCE
    # The BPE is really trained: plain English takes well under a token per three characters.
    english = "The server keeps a queue of waiting requests and schedules them as slots free up."
    assert len(tokenizer.encode(english, add_special_tokens=False)) < len(english) / 3

    n_params = sum(p.numel() for p in model.parameters())
    assert 2_000_000 <= n_params <= 10_000_000


def test_chat_template(builds: Builds, offline: None) -> None:
    from transformers import AutoTokenizer

    tokenizer: Any = AutoTokenizer.from_pretrained(builds.first, local_files_only=True)
    messages = [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "What is a GPU?"},
    ]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nYou are terse.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nWhat is a GPU?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\n"
    )
    no_prompt = tokenizer.apply_chat_template(messages, tokenize=False)
    assert not no_prompt.endswith("<|end_header_id|>\n\n")
    assert text.startswith(no_prompt)

    # transformers 5 returns a BatchEncoding here (return_dict defaults to True).
    encoded = tokenizer.apply_chat_template(messages, add_generation_prompt=True)
    ids = encoded["input_ids"] if hasattr(encoded, "keys") else encoded
    special = {token: tokenizer.convert_tokens_to_ids(token) for token in tiny_model.SPECIAL_TOKENS}
    assert ids.count(special["<|begin_of_text|>"]) == 1
    assert ids.count(special["<|start_header_id|>"]) == 3
    assert ids.count(special["<|end_header_id|>"]) == 3
    assert ids.count(special["<|eot_id|>"]) == 2
    assert ids == tokenizer.encode(text, add_special_tokens=False)


def test_greedy_generate_is_deterministic(builds: Builds, offline: None) -> None:
    tokenizer, model = _load(builds.first)
    inputs = tokenizer(["Hello, how are you today?"], return_tensors="pt")
    assert set(inputs.keys()) == {"input_ids", "attention_mask"}  # no token_type_ids
    kwargs: dict[str, Any] = {"max_new_tokens": 8, "min_new_tokens": 8, "do_sample": False}
    with torch.no_grad():
        first = model.generate(**inputs, **kwargs)
        second = model.generate(**inputs, **kwargs)
        _, reloaded = _load(builds.second)
        third = reloaded.generate(**inputs, **kwargs)
    assert first.shape == (1, inputs["input_ids"].shape[1] + 8)
    assert torch.equal(first, second)
    assert torch.equal(first, third)
    assert isinstance(tokenizer.decode(first[0], skip_special_tokens=True), str)
