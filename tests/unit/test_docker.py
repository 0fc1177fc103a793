"""Static and dry-run checks for the GPU container: Dockerfile, entrypoint, trtllm config.

Nothing here needs Docker, a GPU or tritonserver. The entrypoint is run outside a
container with ``MUFLEET_DRY_RUN=1``, which renders and then prints the tritonserver
command line instead of exec'ing it.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import string
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
ENTRYPOINT = REPO / "docker" / "entrypoint.sh"
TRTLLM_PROFILE = REPO / "model_repository" / "tensorrt_llm" / "profiles" / "trtllm"
TRTLLM_CONFIG = TRTLLM_PROFILE / "config.pbtxt"

IMAGE_PROJECT_DIR = "/opt/mufleet"
FROM_RE = re.compile(r"nvcr\.io/nvidia/tritonserver:\d\d\.\d\d-trtllm-python-py3")

# The renderer's variables: the only placeholders a template may use.
SAMPLE_VARS: dict[str, object] = {
    "tokenizer_dir": "/tokenizer",
    "model_dir": "/hf-model",
    "engine_dir": "/engines",
    "max_batch_size": 16,
    "priority_levels": 3,
    "default_priority_level": 2,
    "max_queue_delay_us": 100,
    "kv_cache_free_gpu_mem_fraction": 0.85,
    "enable_kv_cache_reuse": "true",
    "batching_strategy": "inflight_fused_batching",
}


def _find_mufleet() -> str | None:
    found = shutil.which("mufleet")
    if found is None:
        # The venv's bin dir is often not on PATH when pytest runs as .venv/bin/python.
        found = shutil.which("mufleet", path=str(Path(sys.executable).parent))
    return found


MUFLEET = _find_mufleet()


# --------------------------------------------------------------------------- Dockerfile


def parse_dockerfile(text: str) -> list[tuple[str, str]]:
    """Split a Dockerfile into (INSTRUCTION, arguments) pairs.

    Handles ``\\`` line continuations and comment lines (also those inside a
    continued instruction, which Docker drops). Parser directives such as
    ``# syntax=`` are comments here.
    """
    instructions: list[tuple[str, str]] = []
    pending: list[str] = []
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#"):
            continue
        continued = stripped.endswith("\\")
        pending.append(stripped[:-1].strip() if continued else stripped)
        if continued:
            continue
        line = " ".join(part for part in pending if part)
        pending = []
        keyword, _, args = line.partition(" ")
        instructions.append((keyword.upper(), args.strip()))
    assert not pending, "Dockerfile ends inside a line continuation"
    return instructions


@pytest.fixture(scope="module")
def dockerfile() -> list[tuple[str, str]]:
    assert DOCKERFILE.is_file(), f"missing {DOCKERFILE}"
    return parse_dockerfile(DOCKERFILE.read_text())


def _args(instructions: list[tuple[str, str]], keyword: str) -> list[str]:
    return [args for kw, args in instructions if kw == keyword]


def test_parser_handles_continuations_and_comments() -> None:
    text = (
        "# syntax=docker/dockerfile:1\nFROM a:b\nRUN one \\\n    # dropped\n    two\nexpose 1 2\n"
    )
    assert parse_dockerfile(text) == [("FROM", "a:b"), ("RUN", "one two"), ("EXPOSE", "1 2")]


def test_from_is_a_trtllm_triton_image(dockerfile: list[tuple[str, str]]) -> None:
    froms = _args(dockerfile, "FROM")
    assert froms, "no FROM instruction"
    assert dockerfile[0][0] in {"FROM", "ARG"}, "FROM must come first (after ARGs)"
    # The final stage is the image that ships.
    image = next(tok for tok in froms[-1].split() if not tok.startswith("--"))
    assert FROM_RE.fullmatch(image), f"unexpected base image {image!r}"


def test_entrypoint_is_an_existing_executable(dockerfile: list[tuple[str, str]]) -> None:
    entrypoints = _args(dockerfile, "ENTRYPOINT")
    assert len(entrypoints) == 1, entrypoints
    argv = json.loads(entrypoints[0])  # exec (JSON) form, so signals reach tritonserver
    assert argv == [f"{IMAGE_PROJECT_DIR}/docker/entrypoint.sh"]
    local = REPO / Path(argv[0]).relative_to(IMAGE_PROJECT_DIR)
    assert local == ENTRYPOINT
    assert local.is_file()
    assert os.access(local, os.X_OK), f"{local} is not executable (chmod +x)"
    assert local.read_text().startswith("#!/usr/bin/env bash")


def test_project_is_copied_and_installed_without_deps(dockerfile: list[tuple[str, str]]) -> None:
    copies = " ".join(_args(dockerfile, "COPY"))
    for needed in ("pyproject.toml", "mufleet/", "model_repository/", "docker/"):
        assert needed in copies, f"{needed} is not copied into the image"
    workdirs = _args(dockerfile, "WORKDIR")
    assert IMAGE_PROJECT_DIR in workdirs
    runs = " ".join(_args(dockerfile, "RUN"))
    assert f"pip install --no-deps {IMAGE_PROJECT_DIR}" in runs
    assert "torch==" not in runs and "nvidia-pytriton" not in runs


def test_exposes_triton_ports(dockerfile: list[tuple[str, str]]) -> None:
    ports = {tok.split("/")[0] for args in _args(dockerfile, "EXPOSE") for tok in args.split()}
    assert {"8000", "8001", "8002"} <= ports


def test_healthcheck_probes_readiness(dockerfile: list[tuple[str, str]]) -> None:
    checks = _args(dockerfile, "HEALTHCHECK")
    assert len(checks) == 1
    assert not checks[0].upper().startswith("NONE")
    assert " CMD " in f" {checks[0]} "
    assert "/v2/health/ready" in checks[0]


def test_runs_as_non_root(dockerfile: list[tuple[str, str]]) -> None:
    users = _args(dockerfile, "USER")
    assert users, "no USER instruction"
    assert users[-1].split(":")[0] not in {"root", "0"}


def _env(instructions: list[tuple[str, str]]) -> dict[str, str]:
    env: dict[str, str] = {}
    for args in _args(instructions, "ENV"):
        for token in shlex.split(args):
            key, sep, value = token.partition("=")
            assert sep, f"use ENV key=value, got {token!r}"
            env[key] = value
    return env


def test_env_defaults_match_mounts(dockerfile: list[tuple[str, str]]) -> None:
    env = _env(dockerfile)
    assert env["ENGINE_DIR"] == "/engines"
    assert env["TOKENIZER_DIR"] == "/tokenizer"
    assert env["MODEL_REPOSITORY"] == "/models"
    assert env["MUFLEET_PROFILE"] == "trtllm"
    # The installed (non-editable) package must find the copied templates.
    templates = env["MUFLEET_MODEL_REPOSITORY"]
    assert templates.startswith(f"{IMAGE_PROJECT_DIR}/")
    assert (REPO / Path(templates).relative_to(IMAGE_PROJECT_DIR)).is_dir()


# --------------------------------------------------------------------------- entrypoint


# Variables the entrypoint reads: cleared from the inherited environment.
_ENTRYPOINT_VARS = {
    "MUFLEET_PROFILE",
    "ENGINE_DIR",
    "TOKENIZER_DIR",
    "MODEL_DIR",
    "MODEL_REPOSITORY",
    "MAX_BATCH_SIZE",
    "HTTP_PORT",
    "GRPC_PORT",
    "METRICS_PORT",
    "TRITONSERVER",
    "MUFLEET_BIN",
    "MUFLEET_DRY_RUN",
}


def _run_entrypoint(
    env_overrides: dict[str, str], *args: str, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENTRYPOINT_VARS}
    env.update(env_overrides)
    return subprocess.run(
        ["bash", str(ENTRYPOINT), *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    engines = tmp_path / "engines"
    tokenizer = tmp_path / "tokenizer"
    engines.mkdir()
    tokenizer.mkdir()
    (engines / "config.json").write_text("{}")
    return {"engines": engines, "tokenizer": tokenizer, "models": tmp_path / "models"}


def test_entrypoint_syntax() -> None:
    result = subprocess.run(
        ["bash", "-n", str(ENTRYPOINT)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stderr


def test_entrypoint_is_strict() -> None:
    assert "set -euo pipefail" in ENTRYPOINT.read_text()


SHELLCHECK = shutil.which("shellcheck", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


@pytest.mark.skipif(SHELLCHECK is None, reason="shellcheck not installed")
def test_entrypoint_shellcheck_clean() -> None:
    assert SHELLCHECK is not None
    result = subprocess.run(
        [SHELLCHECK, "--severity=style", str(ENTRYPOINT)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


@pytest.mark.parametrize("missing", ["engines", "tokenizer"])
def test_missing_directory_exits_2_before_mufleet(
    dirs: dict[str, Path], tmp_path: Path, missing: str
) -> None:
    absent = tmp_path / f"no-such-{missing}"
    env = {
        "ENGINE_DIR": str(absent if missing == "engines" else dirs["engines"]),
        "TOKENIZER_DIR": str(absent if missing == "tokenizer" else dirs["tokenizer"]),
        "MODEL_REPOSITORY": str(dirs["models"]),
        # If the script reached mufleet or tritonserver it would fail differently.
        "MUFLEET_BIN": str(tmp_path / "mufleet-must-not-run"),
        "TRITONSERVER": str(tmp_path / "tritonserver-must-not-run"),
        "MUFLEET_DRY_RUN": "1",
    }
    result = _run_entrypoint(env)
    assert result.returncode == 2, result.stderr
    var = "ENGINE_DIR" if missing == "engines" else "TOKENIZER_DIR"
    assert f"{var}='{absent}' does not exist" in result.stderr
    assert result.stdout == ""
    assert not dirs["models"].exists(), "validation must happen before anything is written"


@pytest.mark.parametrize(
    ("var", "value"), [("MAX_BATCH_SIZE", "0"), ("MAX_BATCH_SIZE", "lots"), ("HTTP_PORT", "99999")]
)
def test_bad_numbers_exit_2(dirs: dict[str, Path], tmp_path: Path, var: str, value: str) -> None:
    env = {
        "ENGINE_DIR": str(dirs["engines"]),
        "TOKENIZER_DIR": str(dirs["tokenizer"]),
        "MODEL_REPOSITORY": str(dirs["models"]),
        "MUFLEET_BIN": str(tmp_path / "mufleet-must-not-run"),
        var: value,
    }
    result = _run_entrypoint(env)
    assert result.returncode == 2
    assert var in result.stderr


def _fake_mufleet(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in CLI that records its argv and creates --out."""
    log = tmp_path / "mufleet-argv.json"
    script = tmp_path / "fake-mufleet"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, pathlib, sys\n"
        "argv = sys.argv[1:]\n"
        f"pathlib.Path({str(log)!r}).write_text(json.dumps(argv))\n"
        "out = pathlib.Path(argv[argv.index('--out') + 1])\n"
        "(out / 'tensorrt_llm').mkdir(parents=True, exist_ok=True)\n"
        "(out / 'tensorrt_llm' / 'config.pbtxt').write_text('name: \"tensorrt_llm\"')\n"
    )
    script.chmod(0o755)
    return script, log


def _stub_env(dirs: dict[str, Path], tmp_path: Path, fake: Path) -> dict[str, str]:
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir(exist_ok=True)
    return {
        "ENGINE_DIR": str(dirs["engines"]),
        "TOKENIZER_DIR": str(dirs["tokenizer"]),
        "MODEL_REPOSITORY": str(dirs["models"]),
        "MUFLEET_BIN": str(fake),
        "TRITONSERVER": "/opt/tritonserver/bin/tritonserver",
        "MUFLEET_DRY_RUN": "1",
        "TMPDIR": str(tmpdir),
    }


def test_dry_run_with_stub_cli(dirs: dict[str, Path], tmp_path: Path) -> None:
    fake, argv_log = _fake_mufleet(tmp_path)
    env = _stub_env(dirs, tmp_path, fake) | {"MAX_BATCH_SIZE": "4", "GRPC_PORT": "9001"}
    result = _run_entrypoint(env, "--log-verbose=1", "--exit-on-error=true")
    assert result.returncode == 0, result.stderr

    argv = json.loads(argv_log.read_text())
    out = Path(argv[argv.index("--out") + 1])
    assert argv == [
        "render",
        "--profile",
        "trtllm",
        "--tokenizer-dir",
        str(dirs["tokenizer"]),
        "--out",
        str(out),
        "--engine-dir",
        str(dirs["engines"]),
        "--max-batch-size",
        "4",
    ]
    # Rendered in a private staging dir, copied into MODEL_REPOSITORY, staging removed.
    assert out.parent.parent == Path(env["TMPDIR"])
    assert not out.parent.exists()
    assert (dirs["models"] / "tensorrt_llm" / "config.pbtxt").is_file()
    assert (dirs["models"] / ".mufleet-rendered").is_file()

    assert shlex.split(result.stdout) == [
        "/opt/tritonserver/bin/tritonserver",
        "--model-repository",
        str(dirs["models"]),
        "--http-port",
        "8000",
        "--grpc-port",
        "9001",
        "--metrics-port",
        "8002",
        "--log-verbose=1",
        "--exit-on-error=true",
    ]


def test_rerender_replaces_previous_render(dirs: dict[str, Path], tmp_path: Path) -> None:
    fake, _ = _fake_mufleet(tmp_path)
    env = _stub_env(dirs, tmp_path, fake)
    assert _run_entrypoint(env).returncode == 0
    stale = dirs["models"] / "stale_model"
    stale.mkdir()
    result = _run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    assert not stale.exists()
    assert (dirs["models"] / "tensorrt_llm" / "config.pbtxt").is_file()


def test_refuses_foreign_non_empty_repository(dirs: dict[str, Path], tmp_path: Path) -> None:
    dirs["models"].mkdir()
    precious = dirs["models"] / "precious.txt"
    precious.write_text("keep me")
    env = _stub_env(dirs, tmp_path, tmp_path / "mufleet-must-not-run")
    result = _run_entrypoint(env)
    assert result.returncode == 2
    assert "not empty" in result.stderr
    assert precious.read_text() == "keep me"


def test_engine_dir_without_config_exits_2(dirs: dict[str, Path], tmp_path: Path) -> None:
    (dirs["engines"] / "config.json").unlink()
    env = _stub_env(dirs, tmp_path, tmp_path / "mufleet-must-not-run")
    result = _run_entrypoint(env)
    assert result.returncode == 2
    assert "config.json" in result.stderr


def test_dry_run_propagates_render_failure(dirs: dict[str, Path], tmp_path: Path) -> None:
    failing = tmp_path / "failing-mufleet"
    failing.write_text("#!/bin/sh\necho 'render exploded' >&2\nexit 3\n")
    failing.chmod(0o755)
    env = _stub_env(dirs, tmp_path, failing)
    result = _run_entrypoint(env)
    assert result.returncode == 3
    assert "render exploded" in result.stderr
    assert result.stdout == ""
    assert list(Path(env["TMPDIR"]).iterdir()) == [], "staging dir left behind"


@pytest.mark.skipif(MUFLEET is None, reason="mufleet CLI not installed yet")
def test_dry_run_with_real_cli(dirs: dict[str, Path], tmp_path: Path) -> None:
    assert MUFLEET is not None
    env = {
        "TMPDIR": str(tmp_path),
        "ENGINE_DIR": str(dirs["engines"]),
        "TOKENIZER_DIR": str(dirs["tokenizer"]),
        "MODEL_REPOSITORY": str(dirs["models"]),
        "MAX_BATCH_SIZE": "8",
        "MUFLEET_BIN": MUFLEET,
        "TRITONSERVER": "tritonserver",
        "MUFLEET_DRY_RUN": "1",
    }
    result = _run_entrypoint(env, "--log-verbose=1")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[0] == "tritonserver"
    assert argv[argv.index("--model-repository") + 1] == str(dirs["models"])
    assert argv[-1] == "--log-verbose=1"

    rendered = dirs["models"] / "tensorrt_llm" / "config.pbtxt"
    assert rendered.is_file(), sorted(p.name for p in dirs["models"].iterdir())
    config = _parse_model_config(rendered.read_text())
    assert config.backend == "tensorrtllm"
    assert config.max_batch_size == 8
    assert config.parameters["gpt_model_path"].string_value == str(dirs["engines"])
    assert "${" not in rendered.read_text()


# --------------------------------------------------------------------------- trtllm config


def _parse_model_config(text: str):  # -> model_config_pb2.ModelConfig
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return text_format.Parse(text, model_config_pb2.ModelConfig())


def _render_template(path: Path) -> str:
    template = path.read_text()
    used = set(re.findall(r"\$\{(\w+)\}", template))
    assert used <= SAMPLE_VARS.keys(), f"unknown placeholders: {sorted(used - SAMPLE_VARS.keys())}"
    return string.Template(template).substitute(SAMPLE_VARS)


@pytest.fixture(scope="module")
def trtllm_config():
    assert TRTLLM_CONFIG.is_file()
    return _parse_model_config(_render_template(TRTLLM_CONFIG))


def test_trtllm_profile_layout() -> None:
    assert (TRTLLM_PROFILE / "1").is_dir()
    assert (TRTLLM_PROFILE / "1" / ".gitkeep").is_file()


def test_trtllm_header_names_upstream_release() -> None:
    header = TRTLLM_CONFIG.read_text().split("\nname:", 1)[0]
    assert re.search(r"TensorRT-LLM (release )?\d+\.\d+", header)
    assert FROM_RE.search(header), "header should name the Triton image it targets"


def test_trtllm_model_settings(trtllm_config) -> None:
    cfg = trtllm_config
    assert cfg.name == "tensorrt_llm"
    assert cfg.backend == "tensorrtllm"
    assert cfg.max_batch_size == SAMPLE_VARS["max_batch_size"]
    assert cfg.model_transaction_policy.decoupled is True
    db = cfg.dynamic_batching
    assert db.priority_levels == 3
    assert db.default_priority_level == 2
    assert db.max_queue_delay_microseconds == SAMPLE_VARS["max_queue_delay_us"]


# Upstream marks input_ids optional too (encoder-only models send encoder_input_features).
REQUIRED_INPUTS = {"input_lengths", "request_output_len"}
ROUTED_INPUTS = {
    "input_ids",
    "input_lengths",
    "request_output_len",
    "end_id",
    "pad_id",
    "runtime_top_k",
    "runtime_top_p",
    "temperature",
    "seed",
    "streaming",
    "stop_words_list",
    "bad_words_list",
    "min_tokens",
    "return_log_probs",
}
ROUTED_OUTPUTS = {"output_ids", "sequence_length", "cum_log_probs", "output_log_probs"}


def test_trtllm_tensor_names(trtllm_config) -> None:
    inputs = [t.name for t in trtllm_config.input]
    outputs = [t.name for t in trtllm_config.output]
    assert len(inputs) == len(set(inputs)), "duplicate input names"
    assert len(outputs) == len(set(outputs)), "duplicate output names"
    assert set(inputs) >= ROUTED_INPUTS, sorted(ROUTED_INPUTS - set(inputs))
    assert set(outputs) >= ROUTED_OUTPUTS, sorted(ROUTED_OUTPUTS - set(outputs))


def test_trtllm_tensor_shapes_match_upstream(trtllm_config) -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    dt = mc.DataType
    inputs = {t.name: t for t in trtllm_config.input}
    outputs = {t.name: t for t in trtllm_config.output}
    # name: (data type, dims, reshaped to a scalar)
    expected_inputs = {
        "input_ids": (dt.TYPE_INT32, [-1], False),
        "input_lengths": (dt.TYPE_INT32, [1], True),
        "request_output_len": (dt.TYPE_INT32, [1], True),
        "end_id": (dt.TYPE_INT32, [1], True),
        "pad_id": (dt.TYPE_INT32, [1], True),
        "runtime_top_k": (dt.TYPE_INT32, [1], True),
        "runtime_top_p": (dt.TYPE_FP32, [1], True),
        "temperature": (dt.TYPE_FP32, [1], True),
        "seed": (dt.TYPE_UINT64, [1], True),
        "min_tokens": (dt.TYPE_INT32, [1], True),
        "streaming": (dt.TYPE_BOOL, [1], True),
        "return_log_probs": (dt.TYPE_BOOL, [1], True),
        "stop_words_list": (dt.TYPE_INT32, [2, -1], False),
        "bad_words_list": (dt.TYPE_INT32, [2, -1], False),
    }
    for name, (dtype, dims, scalar) in expected_inputs.items():
        tensor = inputs[name]
        assert tensor.data_type == dtype, name
        assert list(tensor.dims) == dims, name
        assert tensor.HasField("reshape") is scalar, name
        if scalar:
            assert list(tensor.reshape.shape) == [], name
        assert tensor.optional is (name not in REQUIRED_INPUTS), name
    for name in ("input_ids", "stop_words_list", "bad_words_list"):
        assert inputs[name].allow_ragged_batch, name

    expected_outputs = {
        "output_ids": (dt.TYPE_INT32, [-1, -1]),
        "sequence_length": (dt.TYPE_INT32, [-1]),
        "cum_log_probs": (dt.TYPE_FP32, [-1]),
        "output_log_probs": (dt.TYPE_FP32, [-1, -1]),
    }
    for name, (dtype, dims) in expected_outputs.items():
        assert outputs[name].data_type == dtype, name
        assert list(outputs[name].dims) == dims, name


def test_trtllm_parameters(trtllm_config) -> None:
    params = {k: v.string_value for k, v in trtllm_config.parameters.items()}
    assert params["gpt_model_path"] == SAMPLE_VARS["engine_dir"]
    assert params["gpt_model_type"] == SAMPLE_VARS["batching_strategy"]
    assert params["kv_cache_free_gpu_mem_fraction"] == str(
        SAMPLE_VARS["kv_cache_free_gpu_mem_fraction"]
    )
    assert params["enable_kv_cache_reuse"] == "true"
    assert params["max_beam_width"] == "1"
    assert params["exclude_input_in_output"] == "true"
    assert params["batch_scheduler_policy"] == "guaranteed_no_evict"
    # Read by the backend without a fallback; loading fails when absent.
    for key in ("tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path"):
        assert key in params, key
