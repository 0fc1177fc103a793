"""Static and dry-run checks for the GPU container: Dockerfile, entrypoint, trtllm config.

Nothing here needs Docker, a GPU or tritonserver. The entrypoint is run outside a
container with ``MUFLEET_DRY_RUN=1``, which renders and then prints the tritonserver
command line instead of exec'ing it.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import shlex
import shutil
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

# Render parameters of the trtllm tests (everything else at its default).
SAMPLE_VARS: dict[str, object] = {
    "profile": "trtllm",
    "tokenizer_dir": "/tokenizer",
    "engine_dir": "/engines",
    "max_batch_size": 16,
    "max_queue_delay_us": 100,
    "kv_cache_free_gpu_mem_fraction": 0.85,
    "max_tokens_in_paged_kv_cache": 4096,
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


def _healthcheck_argv(dockerfile: list[tuple[str, str]]) -> list[str]:
    (check,) = _args(dockerfile, "HEALTHCHECK")
    _, _, command = check.partition(" CMD ")
    argv = json.loads(command)  # exec form: no shell in the health probe
    assert isinstance(argv, list)
    return [str(a) for a in argv]


def test_healthcheck_command_runs(dockerfile: list[tuple[str, str]]) -> None:
    """The probe exits 0 when /v2/health/ready answers 200, and non-zero otherwise."""
    import http.server
    import threading

    class Ready(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/v2/health/ready" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    argv = _healthcheck_argv(dockerfile)
    assert argv[0] == "python3"
    probe = [sys.executable, *argv[1:]]
    server = http.server.HTTPServer(("127.0.0.1", 0), Ready)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = str(server.server_address[1])
        env = os.environ | {"HTTP_PORT": port}
        assert subprocess.run(probe, env=env, timeout=30, check=False).returncode == 0
    finally:
        server.shutdown()
        server.server_close()
    down = subprocess.run(probe, env=env, capture_output=True, timeout=30, check=False)
    assert down.returncode == 1


def test_run_lines_fail_on_pipe_errors(dockerfile: list[tuple[str, str]]) -> None:
    shells = _args(dockerfile, "SHELL")
    assert shells, "no SHELL instruction"
    shell = json.loads(shells[0])
    assert shell[0].endswith("bash")
    assert "pipefail" in shell
    first_shell = next(i for i, (kw, _) in enumerate(dockerfile) if kw == "SHELL")
    first_run = next(i for i, (kw, _) in enumerate(dockerfile) if kw == "RUN")
    assert first_shell < first_run


def test_image_checks_for_mpirun(dockerfile: list[tuple[str, str]]) -> None:
    # TP/PP engines are served through mpirun: the build fails if the image lacks it.
    assert "command -v mpirun" in " ".join(_args(dockerfile, "RUN"))


HADOLINT = shutil.which("hadolint", path=f"{Path(sys.executable).parent}:{os.environ['PATH']}")


@pytest.mark.skipif(HADOLINT is None, reason="hadolint not installed")
def test_dockerfile_hadolint_clean() -> None:
    assert HADOLINT is not None
    result = subprocess.run(
        [HADOLINT, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, check=False
    )
    assert result.returncode == 0, result.stdout + result.stderr


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
    assert env["MUFLEET_TRTLLM_MODE"] == "auto"
    # The installed (non-editable) package must find the copied templates.
    templates = env["MUFLEET_MODEL_REPOSITORY"]
    assert templates.startswith(f"{IMAGE_PROJECT_DIR}/")
    assert (REPO / Path(templates).relative_to(IMAGE_PROJECT_DIR)).is_dir()


# --------------------------------------------------------------------------- entrypoint

# Template settings the entrypoint passes to `mufleet render --set`: env name -> kind.
KNOBS: dict[str, str] = {
    "DECOUPLED_MODE": "bool",
    "MAX_QUEUE_SIZE": "uint",
    "MAX_QUEUE_DELAY_US": "uint",
    "PRIORITY_LEVELS": "count",
    "DEFAULT_PRIORITY_LEVEL": "count",
    "BLS_INSTANCE_COUNT": "count",
    "PREPROCESSING_INSTANCE_COUNT": "count",
    "POSTPROCESSING_INSTANCE_COUNT": "count",
    "TENSORRT_LLM_INSTANCE_COUNT": "count",
    "ACCUMULATE_TOKENS": "bool",
    "BATCHING_STRATEGY": "batching",
    "KV_CACHE_FREE_GPU_MEM_FRACTION": "fraction",
    "ENABLE_KV_CACHE_REUSE": "bool",
    "ENABLE_CHUNKED_CONTEXT": "bool",
    "MAX_TOKENS_IN_PAGED_KV_CACHE": "uint",
    "MAX_ATTENTION_WINDOW_SIZE": "uint",
    "EXCLUDE_INPUT_IN_OUTPUT": "bool",
    "GPU_DEVICE_IDS": "ids",
    "PARTICIPANT_IDS": "ids",
}

# Variables the entrypoint reads: cleared from the inherited environment.
_ENTRYPOINT_VARS = {
    "MUFLEET_PROFILE",
    "ENGINE_DIR",
    "TOKENIZER_DIR",
    "MODEL_DIR",
    "MODEL_REPOSITORY",
    "MAX_BATCH_SIZE",
    "MUFLEET_TRTLLM_MODE",
    "TRTLLM_ORCHESTRATOR",
    "TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES",
    "CUDA_VISIBLE_DEVICES",
    "HOSTNAME",
    "HTTP_PORT",
    "GRPC_PORT",
    "METRICS_PORT",
    "TRITONSERVER",
    "MPIRUN",
    "MUFLEET_BIN",
    "MUFLEET_DRY_RUN",
    *KNOBS,
}

HOST = "testhost"
TRITON = "/opt/tritonserver/bin/tritonserver"
# Flags every tritonserver process of the container gets.
BASE_FLAGS = [
    "--model-control-mode=explicit",
    "--strict-readiness=true",
    "--exit-on-error=true",
    "--disable-auto-complete-config",
]


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


def _engine_config(dirs: dict[str, Path], **mapping: int) -> None:
    """An engine config.json as trtllm-build writes it (only the keys read here)."""
    config = {
        "version": "1.2.1",
        "pretrained_config": {"architecture": "LlamaForCausalLM", "mapping": mapping},
        "build_config": {"max_batch_size": 8},
    }
    (dirs["engines"] / "config.json").write_text(json.dumps(config))


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
    ("var", "value"),
    [
        ("MAX_BATCH_SIZE", "0"),
        ("MAX_BATCH_SIZE", "lots"),
        ("MAX_BATCH_SIZE", "99999999999999999999"),
        ("HTTP_PORT", "99999"),
    ],
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
        "TRITONSERVER": TRITON,
        "MUFLEET_DRY_RUN": "1",
        "TMPDIR": str(tmpdir),
        "HOSTNAME": HOST,
    }


def _set_args(argv: list[str]) -> dict[str, str]:
    """The ``--set FIELD=VALUE`` pairs of a render command line, in order."""
    pairs: dict[str, str] = {}
    for flag, value in itertools.pairwise(argv):
        if flag == "--set":
            field, sep, setting = value.partition("=")
            assert sep, value
            assert field not in pairs, f"{field} set twice"
            pairs[field] = setting
    return pairs


def _split_ranks(argv: list[str]) -> list[list[str]]:
    """``mpirun --allow-run-as-root -n 1 A... : -n 1 B...`` -> [[A...], [B...]]."""
    assert argv[:2] == ["mpirun", "--allow-run-as-root"], argv
    contexts: list[list[str]] = [[]]
    for token in argv[2:]:
        if token == ":":
            contexts.append([])
        else:
            contexts[-1].append(token)
    ranks = []
    for context in contexts:
        assert context[:2] == ["-n", "1"], context
        ranks.append(context[2:])
    return ranks


def _flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def _prefixes(argv: list[str]) -> list[str]:
    key = "--backend-config=python,shm-region-prefix-name="
    return [a.removeprefix(key) for a in argv if a.startswith(key)]


def test_dry_run_with_stub_cli(dirs: dict[str, Path], tmp_path: Path) -> None:
    fake, argv_log = _fake_mufleet(tmp_path)
    env = _stub_env(dirs, tmp_path, fake) | {"MAX_BATCH_SIZE": "4", "GRPC_PORT": "9001"}
    result = _run_entrypoint(env, "--log-verbose=1", "--model-load-thread-count=2")
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

    # World size 1: one tritonserver, exec'd directly.
    assert shlex.split(result.stdout) == [
        TRITON,
        "--model-repository",
        str(dirs["models"]),
        *BASE_FLAGS,
        "--load-model=*",
        "--http-port",
        "8000",
        "--grpc-port",
        "9001",
        "--metrics-port",
        "8002",
        f"--backend-config=python,shm-region-prefix-name=mufleet_{HOST}_rank0_",
        "--log-verbose=1",
        "--model-load-thread-count=2",
    ]


def test_server_flags_match_local_nodes(dirs: dict[str, Path], tmp_path: Path) -> None:
    """Model control, readiness and error handling are those of ``mufleet up`` nodes."""
    from mufleet.node import TritonNode
    from mufleet.triton_dist import TritonDistribution

    triton = TritonDistribution(
        binary=Path("tritonserver"),
        backend_dir=tmp_path / "backends",
        library_dirs=(),
        python_bin_dir=tmp_path,
    )
    node = TritonNode("node0", tmp_path / "repo", triton, fault_file=tmp_path / "faults.json")
    policy = (
        "--model-control-mode",
        "--load-model",
        "--strict-readiness",
        "--exit-on-error",
        "--disable-auto-complete-config",
    )
    node_flags = {a for a in node.command() if a.startswith(policy)}
    assert "--model-control-mode=explicit" in node_flags

    fake, _ = _fake_mufleet(tmp_path)
    result = _run_entrypoint(_stub_env(dirs, tmp_path, fake))
    assert result.returncode == 0, result.stderr
    container_flags = set(shlex.split(result.stdout))
    assert node_flags <= container_flags, sorted(node_flags - container_flags)
    assert set(BASE_FLAGS) <= container_flags


def test_knobs_become_set_arguments(dirs: dict[str, Path], tmp_path: Path) -> None:
    fake, argv_log = _fake_mufleet(tmp_path)
    knobs = {
        "DECOUPLED_MODE": "False",  # any case, passed on in lower case
        "MAX_QUEUE_SIZE": "64",
        "MAX_QUEUE_DELAY_US": "0",
        "PRIORITY_LEVELS": "4",
        "DEFAULT_PRIORITY_LEVEL": "3",
        "BLS_INSTANCE_COUNT": "2",
        "PREPROCESSING_INSTANCE_COUNT": "3",
        "POSTPROCESSING_INSTANCE_COUNT": "4",
        "TENSORRT_LLM_INSTANCE_COUNT": "1",
        "ACCUMULATE_TOKENS": "true",
        "BATCHING_STRATEGY": "V1",
        "KV_CACHE_FREE_GPU_MEM_FRACTION": "0.85",
        "ENABLE_KV_CACHE_REUSE": "false",
        "ENABLE_CHUNKED_CONTEXT": "TRUE",
        "MAX_TOKENS_IN_PAGED_KV_CACHE": "0080",  # leading zeros dropped
        "MAX_ATTENTION_WINDOW_SIZE": "0",
        "EXCLUDE_INPUT_IN_OUTPUT": "true",
        "GPU_DEVICE_IDS": "0,1;2,3",
        "PARTICIPANT_IDS": "1,2",
    }
    assert knobs.keys() == KNOBS.keys()
    env = _stub_env(dirs, tmp_path, fake) | knobs | {"MAX_BATCH_SIZE": "16"}
    result = _run_entrypoint(env)
    assert result.returncode == 0, result.stderr

    argv = json.loads(argv_log.read_text())
    assert _flag(argv, "--max-batch-size") == "16"
    assert _set_args(argv) == {
        "decoupled_mode": "false",
        "max_queue_size": "64",
        "max_queue_delay_us": "0",
        "priority_levels": "4",
        "default_priority_level": "3",
        "bls_instance_count": "2",
        "preprocessing_instance_count": "3",
        "postprocessing_instance_count": "4",
        "tensorrt_llm_instance_count": "1",
        "accumulate_tokens": "true",
        "batching_strategy": "V1",
        "kv_cache_free_gpu_mem_fraction": "0.85",
        "enable_kv_cache_reuse": "false",
        "enable_chunked_context": "true",
        "max_tokens_in_paged_kv_cache": "80",
        "max_attention_window_size": "0",
        "exclude_input_in_output": "true",
        "gpu_device_ids": "0,1;2,3",
        "participant_ids": "1,2",
    }
    # Each FIELD=VALUE is one argument after its own --set.
    sets = [i for i, a in enumerate(argv) if a == "--set"]
    assert len(sets) == len(KNOBS)
    assert all("=" in argv[i + 1] for i in sets)


@pytest.mark.parametrize("name", sorted(KNOBS))
def test_each_knob_alone(dirs: dict[str, Path], tmp_path: Path, name: str) -> None:
    value = {
        "bool": "true",
        "uint": "7",
        "count": "1",
        "fraction": "1",
        "ids": "0",
        "batching": "inflight_fused_batching",
    }[KNOBS[name]]
    fake, argv_log = _fake_mufleet(tmp_path)
    result = _run_entrypoint(_stub_env(dirs, tmp_path, fake) | {name: value})
    assert result.returncode == 0, result.stderr
    assert _set_args(json.loads(argv_log.read_text())) == {name.lower(): value}


def test_unset_and_empty_knobs_pass_nothing(dirs: dict[str, Path], tmp_path: Path) -> None:
    fake, argv_log = _fake_mufleet(tmp_path)
    env = _stub_env(dirs, tmp_path, fake) | {"DECOUPLED_MODE": "", "GPU_DEVICE_IDS": ""}
    result = _run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    argv = json.loads(argv_log.read_text())
    assert "--set" not in argv
    assert "--max-batch-size" not in argv


BAD_VALUES = {
    "bool": ["yes", "1", "truee"],
    "uint": ["-1", "1.5", "ten", "99999999999"],
    "count": ["0", "-2", "two"],
    "fraction": ["0", "0.0", "1.5", "-0.5", "abc", "1e-1"],
    "ids": ["0,", ";1", "a,b", "0 1"],
    "batching": ["inflight", "v2"],
}


@pytest.mark.parametrize(
    ("name", "value"),
    [(name, bad) for name, kind in sorted(KNOBS.items()) for bad in BAD_VALUES[kind][:2]]
    + [("KV_CACHE_FREE_GPU_MEM_FRACTION", bad) for bad in BAD_VALUES["fraction"][2:]]
    + [("MAX_QUEUE_SIZE", bad) for bad in BAD_VALUES["uint"][2:]]
    + [("DECOUPLED_MODE", "truee"), ("GPU_DEVICE_IDS", "0 1")],
)
def test_bad_knob_exits_2_before_render(
    dirs: dict[str, Path], tmp_path: Path, name: str, value: str
) -> None:
    env = _stub_env(dirs, tmp_path, tmp_path / "mufleet-must-not-run") | {name: value}
    result = _run_entrypoint(env)
    assert result.returncode == 2, result.stderr
    assert f"{name}='{value}' must be" in result.stderr
    assert result.stdout == ""
    assert not dirs["models"].exists(), "validation must happen before anything is written"


def test_default_priority_above_levels_exits_2(dirs: dict[str, Path], tmp_path: Path) -> None:
    env = _stub_env(dirs, tmp_path, tmp_path / "mufleet-must-not-run") | {
        "PRIORITY_LEVELS": "2",
        "DEFAULT_PRIORITY_LEVEL": "3",
    }
    result = _run_entrypoint(env)
    assert result.returncode == 2
    assert "DEFAULT_PRIORITY_LEVEL='3' is above PRIORITY_LEVELS='2'" in result.stderr


def test_tp2_engine_runs_two_mpi_ranks(dirs: dict[str, Path], tmp_path: Path) -> None:
    _engine_config(dirs, world_size=2, tp_size=2, pp_size=1, cp_size=1, gpus_per_node=8)
    fake, _ = _fake_mufleet(tmp_path)
    env = _stub_env(dirs, tmp_path, fake) | {"MPIRUN": "mpirun", "HTTP_PORT": "9000"}
    result = _run_entrypoint(env, "--log-verbose=1")
    assert result.returncode == 0, result.stderr
    assert "world size 2, launch mode 'mpi'" in result.stderr

    leader, worker = _split_ranks(shlex.split(result.stdout))
    for rank in (leader, worker):
        assert rank[0] == TRITON
        assert _flag(rank, "--model-repository") == str(dirs["models"])
        assert set(BASE_FLAGS) <= set(rank)
        assert len(_prefixes(rank)) == 1

    # Rank 0 loads every model and serves the endpoints; container args go to it.
    assert "--load-model=*" in leader
    assert (_flag(leader, "--http-port"), _flag(leader, "--grpc-port")) == ("9000", "8001")
    assert _flag(leader, "--metrics-port") == "8002"
    assert leader[-1] == "--log-verbose=1"

    # Rank 1 only holds its share of the engine.
    assert [a for a in worker if a.startswith("--load-model")] == ["--load-model=tensorrt_llm"]
    assert {"--allow-http=false", "--allow-grpc=false", "--allow-metrics=false"} <= set(worker)
    assert not any(a.endswith("-port") or a.startswith("--log") for a in worker), worker

    prefixes = _prefixes(leader) + _prefixes(worker)
    assert prefixes == [f"mufleet_{HOST}_rank0_", f"mufleet_{HOST}_rank1_"]
    assert "TRTLLM_ORCHESTRATOR" not in result.stdout


@pytest.mark.parametrize(
    ("config", "world"),
    [
        ({"pretrained_config": {"mapping": {"tp_size": 2, "pp_size": 2}}}, 4),
        ({"pretrained_config": {"mapping": {"world_size": 3, "tp_size": 3}}}, 3),
        ({"builder_config": {"tensor_parallel": 2, "pipeline_parallel": 1}}, 2),
    ],
)
def test_world_size_from_engine_config(
    dirs: dict[str, Path], tmp_path: Path, config: dict[str, object], world: int
) -> None:
    (dirs["engines"] / "config.json").write_text(json.dumps(config))
    fake, _ = _fake_mufleet(tmp_path)
    result = _run_entrypoint(_stub_env(dirs, tmp_path, fake))
    assert result.returncode == 0, result.stderr
    ranks = _split_ranks(shlex.split(result.stdout))
    assert len(ranks) == world
    assert len({p for rank in ranks for p in _prefixes(rank)}) == world
    assert sum("--http-port" in rank for rank in ranks) == 1


def test_forced_mpi_mode_with_one_rank(dirs: dict[str, Path], tmp_path: Path) -> None:
    fake, _ = _fake_mufleet(tmp_path)
    env = _stub_env(dirs, tmp_path, fake) | {"MUFLEET_TRTLLM_MODE": "mpi"}
    result = _run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    (leader,) = _split_ranks(shlex.split(result.stdout))
    assert "--load-model=*" in leader


def test_other_profiles_run_one_server(dirs: dict[str, Path], tmp_path: Path) -> None:
    _engine_config(dirs, world_size=2, tp_size=2)  # not read: no engine for cpu
    fake, argv_log = _fake_mufleet(tmp_path)
    env = _stub_env(dirs, tmp_path, fake) | {
        "MUFLEET_PROFILE": "cpu",
        "TRTLLM_ORCHESTRATOR": "1",
        "MAX_QUEUE_SIZE": "8",
    }
    result = _run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[0] == TRITON
    assert "--load-model=*" in argv
    render = json.loads(argv_log.read_text())
    assert "--engine-dir" not in render
    assert _set_args(render) == {"max_queue_size": "8"}


def test_orchestrator_mode(dirs: dict[str, Path], tmp_path: Path) -> None:
    _engine_config(dirs, world_size=2, tp_size=2, pp_size=1)
    fake, _ = _fake_mufleet(tmp_path)
    env = _stub_env(dirs, tmp_path, fake) | {
        "MUFLEET_TRTLLM_MODE": "orchestrator",
        "CUDA_VISIBLE_DEVICES": "0,1",
    }
    result = _run_entrypoint(env, "--log-verbose=1")
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    assert argv[:3] == ["env", "TRTLLM_ORCHESTRATOR=1", "TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES=1"]
    (server,) = _split_ranks(argv[3:])  # one tritonserver; the backend spawns the workers
    assert server[0] == TRITON
    assert set(BASE_FLAGS) <= set(server)
    assert "--load-model=*" in server
    assert _flag(server, "--http-port") == "8000"
    assert _prefixes(server) == [f"mufleet_{HOST}_rank0_"]
    for flag in (
        "--pinned-memory-pool-byte-size=0",
        "--enable-peer-access=false",
        "--cuda-memory-pool-byte-size=0:0",
        "--cuda-memory-pool-byte-size=1:0",
    ):
        assert flag in server
    assert not any(a.startswith("--cuda-memory-pool-byte-size=2:") for a in server)
    assert server[-1] == "--log-verbose=1"


def test_orchestrator_counts_gpus_with_nvidia_smi(dirs: dict[str, Path], tmp_path: Path) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    smi = bin_dir / "nvidia-smi"
    smi.write_text(
        "#!/bin/sh\n"
        '[ "$1" = --list-gpus ] || exit 9\n'
        'for i in 0 1 2; do echo "GPU $i: NVIDIA H200 (UUID: GPU-$i)"; done\n'
    )
    smi.chmod(0o755)
    fake, _ = _fake_mufleet(tmp_path)
    env = _stub_env(dirs, tmp_path, fake) | {
        "TRTLLM_ORCHESTRATOR": "1",  # auto honours an orchestrator env
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    result = _run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    argv = shlex.split(result.stdout)
    pools = sorted(a for a in argv if a.startswith("--cuda-memory-pool-byte-size="))
    assert pools == [f"--cuda-memory-pool-byte-size={i}:0" for i in range(3)]


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"MUFLEET_TRTLLM_MODE": "leader"}, "MUFLEET_TRTLLM_MODE='leader' must be"),
        ({"MUFLEET_TRTLLM_MODE": "single"}, "world size 2"),
        ({"MUFLEET_TRTLLM_MODE": "mpi", "TRTLLM_ORCHESTRATOR": "1"}, "TRTLLM_ORCHESTRATOR='1'"),
        ({"MUFLEET_TRTLLM_MODE": "orchestrator", "MUFLEET_PROFILE": "cpu"}, "needs"),
    ],
)
def test_bad_launch_mode_exits_2(
    dirs: dict[str, Path], tmp_path: Path, env: dict[str, str], message: str
) -> None:
    _engine_config(dirs, world_size=2, tp_size=2)
    base = _stub_env(dirs, tmp_path, tmp_path / "mufleet-must-not-run")
    result = _run_entrypoint(base | env)
    assert result.returncode == 2, result.stderr
    assert message in result.stderr
    assert not dirs["models"].exists()


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        json.dumps({"pretrained_config": {"mapping": {"tp_size": "two"}}}),
        json.dumps({"pretrained_config": {"mapping": {"world_size": 0}}}),
    ],
)
def test_unreadable_engine_config_exits_2(dirs: dict[str, Path], tmp_path: Path, text: str) -> None:
    (dirs["engines"] / "config.json").write_text(text)
    env = _stub_env(dirs, tmp_path, tmp_path / "mufleet-must-not-run")
    result = _run_entrypoint(env)
    assert result.returncode == 2, result.stderr
    assert "world size" in result.stderr
    assert not dirs["models"].exists()


def _recorder(path: Path, log: Path) -> Path:
    """An executable that records its argv and TRTLLM_* environment, then exits 0."""
    path.write_text(
        f"#!{sys.executable}\n"
        "import json, os, pathlib, sys\n"
        "env = {k: v for k, v in os.environ.items() if k.startswith('TRTLLM_')}\n"
        f"pathlib.Path({str(log)!r}).write_text(json.dumps({{'argv': sys.argv, 'env': env}}))\n"
    )
    path.chmod(0o755)
    return path


@pytest.mark.parametrize("mode", ["single", "mpi", "orchestrator"])
def test_execs_the_server(dirs: dict[str, Path], tmp_path: Path, mode: str) -> None:
    """Without dry run the entrypoint execs the command it would print."""
    if mode != "single":
        _engine_config(dirs, world_size=2, tp_size=2)
    fake, _ = _fake_mufleet(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    seen = tmp_path / "exec.json"
    _recorder(bin_dir / "tritonserver", seen)
    _recorder(bin_dir / "mpirun", seen)
    env = _stub_env(dirs, tmp_path, fake) | {
        "TRITONSERVER": "tritonserver",
        "MUFLEET_TRTLLM_MODE": mode,
        "CUDA_VISIBLE_DEVICES": "0,1",
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
    }
    dry = _run_entrypoint(env)
    assert dry.returncode == 0, dry.stderr
    printed = shlex.split(dry.stdout)

    env.pop("MUFLEET_DRY_RUN")
    result = _run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    assert result.stdout == ""
    record = json.loads(seen.read_text())
    argv = [Path(record["argv"][0]).name, *record["argv"][1:]]
    if mode == "orchestrator":
        assert record["env"]["TRTLLM_ORCHESTRATOR"] == "1"
        assert record["env"]["TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES"] == "1"
        printed = printed[3:]  # env VAR=... VAR=...
    else:
        assert "TRTLLM_ORCHESTRATOR" not in record["env"]
    assert argv == printed
    assert argv[0] == ("tritonserver" if mode == "single" else "mpirun")


def test_missing_mpirun_exits_127(dirs: dict[str, Path], tmp_path: Path) -> None:
    _engine_config(dirs, world_size=2, tp_size=2)
    fake, _ = _fake_mufleet(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    _recorder(bin_dir / "tritonserver", tmp_path / "exec.json")
    env = _stub_env(dirs, tmp_path, fake) | {
        "TRITONSERVER": str(bin_dir / "tritonserver"),
        "MPIRUN": str(tmp_path / "no-such-mpirun"),
    }
    env.pop("MUFLEET_DRY_RUN")
    result = _run_entrypoint(env)
    assert result.returncode == 127
    assert "mpirun" in result.stderr
    assert not (tmp_path / "exec.json").exists()


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


def _real_cli_env(dirs: dict[str, Path], tmp_path: Path) -> dict[str, str]:
    assert MUFLEET is not None
    return {
        "TMPDIR": str(tmp_path),
        "ENGINE_DIR": str(dirs["engines"]),
        "TOKENIZER_DIR": str(dirs["tokenizer"]),
        "MODEL_REPOSITORY": str(dirs["models"]),
        "MAX_BATCH_SIZE": "8",
        "MUFLEET_BIN": MUFLEET,
        "TRITONSERVER": "tritonserver",
        "MUFLEET_DRY_RUN": "1",
    }


@pytest.mark.skipif(MUFLEET is None, reason="mufleet CLI not installed yet")
def test_dry_run_with_real_cli(dirs: dict[str, Path], tmp_path: Path) -> None:
    result = _run_entrypoint(_real_cli_env(dirs, tmp_path), "--log-verbose=1")
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


def _render_accepts_set() -> bool:
    if MUFLEET is None:
        return False
    help_text = subprocess.run(
        [MUFLEET, "render", "--help"], capture_output=True, text=True, check=False
    ).stdout
    return "--set" in help_text


@pytest.mark.skipif(not _render_accepts_set(), reason="mufleet render has no --set")
def test_knobs_reach_the_rendered_config_with_real_cli(
    dirs: dict[str, Path], tmp_path: Path
) -> None:
    env = _real_cli_env(dirs, tmp_path) | {
        "KV_CACHE_FREE_GPU_MEM_FRACTION": "0.5",
        "ENABLE_KV_CACHE_REUSE": "false",
        "MAX_QUEUE_DELAY_US": "250",
    }
    result = _run_entrypoint(env)
    assert result.returncode == 0, result.stderr
    config = _parse_model_config((dirs["models"] / "tensorrt_llm" / "config.pbtxt").read_text())
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["kv_cache_free_gpu_mem_fraction"] == "0.5"
    assert params["enable_kv_cache_reuse"] == "false"
    assert config.dynamic_batching.max_queue_delay_microseconds == 250


# --------------------------------------------------------------------------- trtllm config


def _parse_model_config(text: str):  # -> model_config_pb2.ModelConfig
    text_format = pytest.importorskip("google.protobuf.text_format")
    model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")
    return text_format.Parse(text, model_config_pb2.ModelConfig())


@pytest.fixture(scope="module")
def trtllm_config(tmp_path_factory: pytest.TempPathFactory):
    from mufleet.repository import RenderParams, render

    out = render(RenderParams.model_validate(SAMPLE_VARS), tmp_path_factory.mktemp("trt") / "r")
    return _parse_model_config((out / "tensorrt_llm" / "config.pbtxt").read_text())


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
    assert db.priority_levels == 7
    assert db.default_priority_level == 5
    assert db.max_queue_delay_microseconds == SAMPLE_VARS["max_queue_delay_us"]


def test_trtllm_parameters(trtllm_config) -> None:
    params = {k: v.string_value for k, v in trtllm_config.parameters.items()}
    assert params["gpt_model_path"] == SAMPLE_VARS["engine_dir"]
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["kv_cache_free_gpu_mem_fraction"] == str(
        SAMPLE_VARS["kv_cache_free_gpu_mem_fraction"]
    )
    assert params["enable_kv_cache_reuse"] == "true"
    assert params["max_beam_width"] == "1"
    assert params["exclude_input_in_output"] == "true"
    assert params["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert params["max_tokens_in_paged_kv_cache"] == "4096"
    assert "gpu_device_ids" not in params, "unset optional parameters are left out"
    # Read by the backend without a fallback; loading fails when absent.
    for key in ("tokenizer_dir", "guided_decoding_backend", "xgrammar_tokenizer_info_path"):
        assert key in params, key
