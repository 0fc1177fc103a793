#!/usr/bin/env bash
# mufleet container entrypoint.
#
# 1. validates the mounted directories and every setting below (exit 2 with a
#    clear message, before anything is written),
# 2. renders the model repository with `mufleet render` (into a staging dir
#    under TMPDIR) and copies it into MODEL_REPOSITORY, which must be empty
#    or hold an earlier render (marker file .mufleet-rendered),
# 3. starts tritonserver on it, with the flags the local nodes use (explicit
#    model control loading every model, strict readiness, exit on error, no
#    auto-complete of model configs, a Python-backend shared-memory prefix of
#    its own). Arguments given to the container are passed on to tritonserver
#    (to rank 0 only when several ranks run), e.g. `--log-verbose=1`.
#
# How tritonserver is started depends on the engine's world size
# (tp_size * pp_size * cp_size, from ENGINE_DIR/config.json) and on
# MUFLEET_TRTLLM_MODE:
#   single        one tritonserver, exec'd directly (world size 1)
#   mpi           leader mode: `mpirun -n 1 tritonserver ... : -n 1 ...`, one
#                 rank per GPU. Rank 0 loads every model and serves HTTP,
#                 gRPC and metrics; the other ranks load only tensorrt_llm
#                 and serve no endpoint. Each rank has its own shm prefix.
#   orchestrator  one tritonserver under `mpirun -n 1` with
#                 TRTLLM_ORCHESTRATOR=1: the TensorRT-LLM backend spawns its
#                 worker processes itself (MPI_Comm_spawn) when the model loads
#   auto          orchestrator when TRTLLM_ORCHESTRATOR=1 is already set,
#                 mpi when the world size is above 1, single otherwise (and
#                 always single for profiles other than trtllm)
#
# Environment (defaults in brackets):
#   MUFLEET_PROFILE   model profile to render                  [trtllm]
#   ENGINE_DIR        TensorRT-LLM engine dir (trtllm profile) [/engines]
#   TOKENIZER_DIR     Hugging Face tokenizer dir               [/tokenizer]
#   MODEL_DIR         HF checkpoint dir, passed as --model-dir to render
#                     for non-trtllm profiles when set         []
#   MODEL_REPOSITORY  where the rendered repository is written [/models]
#   MAX_BATCH_SIZE    passed to render as --max-batch-size     [renderer default]
#   MUFLEET_TRTLLM_MODE  auto | single | mpi | orchestrator    [auto]
#   HTTP_PORT / GRPC_PORT / METRICS_PORT                       [8000/8001/8002]
#   TRITONSERVER      tritonserver executable                  [tritonserver]
#   MPIRUN            mpirun executable (mpi/orchestrator)     [mpirun]
#   MUFLEET_BIN       mufleet executable                       [mufleet]
#   MUFLEET_DRY_RUN   1: render, then print the final command (the whole
#                     mpirun line when several ranks run) instead of
#                     exec'ing it (for tests outside Docker)
#
# Template settings: each variable in KNOBS below that is set (non-empty) is
# checked and passed to render as `--set <lower-case name>=<value>`, e.g.
# DECOUPLED_MODE=false -> `--set decoupled_mode=false`. Unset ones keep the
# renderer's default.
set -euo pipefail

die() {
    # die EXIT_CODE MESSAGE...
    local code="$1"
    shift
    printf 'mufleet-entrypoint: error: %s\n' "$*" >&2
    exit "$code"
}

log() {
    printf 'mufleet-entrypoint: %s\n' "$*" >&2
}

is_uint() {
    [[ "$1" =~ ^[0-9]+$ ]]
}

# Non-negative integer that fits the backend's int32 parameters. Leading zeros
# are allowed (and dropped by to_int).
is_int32() {
    local digits
    is_uint "$1" || return 1
    digits="${1#"${1%%[!0]*}"}"
    ((${#digits} <= 10)) && ((10#${digits:-0} <= 2147483647))
}

to_int() {
    printf '%d' "$((10#$1))"
}

is_bool() {
    [[ "${1,,}" == "true" || "${1,,}" == "false" ]]
}

# A decimal number in (0, 1]: 0.85, .5, 1, 1.0 (no exponent, no sign).
is_fraction() {
    local whole frac
    [[ "$1" =~ ^([0-9]*)(\.([0-9]*))?$ ]] || return 1
    whole="${BASH_REMATCH[1]}"
    frac="${BASH_REMATCH[3]}"
    [[ -n "$whole$frac" ]] || return 1
    if [[ "$whole" =~ ^0*$ ]]; then
        [[ "$frac" =~ [1-9] ]]
    elif [[ "$whole" =~ ^0*1$ ]]; then
        [[ "$frac" =~ ^0*$ ]]
    else
        return 1
    fi
}

# Device or rank ids: comma-separated per model instance, instances separated
# by semicolons ("0,1" or "0,1;2,3"), as the TensorRT-LLM backend reads them.
is_id_list() {
    [[ "$1" =~ ^[0-9]+(,[0-9]+)*(\;[0-9]+(,[0-9]+)*)*$ ]]
}

PROFILE="${MUFLEET_PROFILE:-trtllm}"
ENGINE_DIR="${ENGINE_DIR:-/engines}"
TOKENIZER_DIR="${TOKENIZER_DIR:-/tokenizer}"
MODEL_DIR="${MODEL_DIR:-}"
MODEL_REPOSITORY="${MODEL_REPOSITORY:-/models}"
MAX_BATCH_SIZE="${MAX_BATCH_SIZE:-}"
TRTLLM_MODE="${MUFLEET_TRTLLM_MODE:-auto}"
HTTP_PORT="${HTTP_PORT:-8000}"
GRPC_PORT="${GRPC_PORT:-8001}"
METRICS_PORT="${METRICS_PORT:-8002}"
TRITONSERVER="${TRITONSERVER:-tritonserver}"
MPIRUN="${MPIRUN:-mpirun}"
MUFLEET_BIN="${MUFLEET_BIN:-mufleet}"
DRY_RUN="${MUFLEET_DRY_RUN:-0}"

# Template settings: VARIABLE:kind. The renderer field is the lower-case name.
#   bool      true | false (any case; passed on in lower case)
#   uint      integer >= 0 (0 leaves max_tokens_in_paged_kv_cache and
#             max_attention_window_size unset)
#   count     integer >= 1
#   fraction  decimal in (0, 1]
#   ids       "0,1" or "0,1;2,3"
#   batching  inflight_fused_batching | V1
KNOBS=(
    DECOUPLED_MODE:bool
    MAX_QUEUE_SIZE:uint
    MAX_QUEUE_DELAY_US:uint
    PRIORITY_LEVELS:count
    DEFAULT_PRIORITY_LEVEL:count
    BLS_INSTANCE_COUNT:count
    PREPROCESSING_INSTANCE_COUNT:count
    POSTPROCESSING_INSTANCE_COUNT:count
    TENSORRT_LLM_INSTANCE_COUNT:count
    ACCUMULATE_TOKENS:bool
    BATCHING_STRATEGY:batching
    KV_CACHE_FREE_GPU_MEM_FRACTION:fraction
    ENABLE_KV_CACHE_REUSE:bool
    ENABLE_CHUNKED_CONTEXT:bool
    MAX_TOKENS_IN_PAGED_KV_CACHE:uint
    MAX_ATTENTION_WINDOW_SIZE:uint
    EXCLUDE_INPUT_IN_OUTPUT:bool
    GPU_DEVICE_IDS:ids
    PARTICIPANT_IDS:ids
)

# ---- validation: everything here runs before mufleet is touched ----------
[[ -n "$PROFILE" ]] || die 2 "MUFLEET_PROFILE is empty"

if [[ "$PROFILE" == "trtllm" ]]; then
    [[ -d "$ENGINE_DIR" ]] || die 2 "engine directory ENGINE_DIR='$ENGINE_DIR' does not exist;" \
        "mount a TensorRT-LLM engine built with trtllm-build (docker run -v \$PWD/engines:/engines ...)"
    [[ -f "$ENGINE_DIR/config.json" ]] || die 2 "ENGINE_DIR='$ENGINE_DIR' has no config.json;" \
        "point it at the --output_dir of trtllm-build"
elif [[ -n "$MODEL_DIR" && ! -d "$MODEL_DIR" ]]; then
    die 2 "model directory MODEL_DIR='$MODEL_DIR' does not exist"
fi

[[ -d "$TOKENIZER_DIR" ]] || die 2 "tokenizer directory TOKENIZER_DIR='$TOKENIZER_DIR' does not exist;" \
    "mount the Hugging Face tokenizer (docker run -v \$PWD/tokenizer:/tokenizer ...)"

if [[ -n "$MAX_BATCH_SIZE" ]]; then
    if ! is_int32 "$MAX_BATCH_SIZE" || ((10#$MAX_BATCH_SIZE == 0)); then
        die 2 "MAX_BATCH_SIZE='$MAX_BATCH_SIZE' is not a positive integer"
    fi
fi

for port_var in HTTP_PORT GRPC_PORT METRICS_PORT; do
    port="${!port_var}"
    if ! is_int32 "$port" || ((10#$port == 0 || 10#$port > 65535)); then
        die 2 "$port_var='$port' is not a valid TCP port"
    fi
done

set_args=()
for knob in "${KNOBS[@]}"; do
    name="${knob%%:*}"
    kind="${knob#*:}"
    value="${!name:-}"
    [[ -n "$value" ]] || continue
    case "$kind" in
    bool)
        is_bool "$value" || die 2 "$name='$value' must be true or false"
        value="${value,,}"
        ;;
    uint)
        is_int32 "$value" || die 2 "$name='$value' must be an integer >= 0"
        value="$(to_int "$value")"
        ;;
    count)
        if ! is_int32 "$value" || ((10#$value == 0)); then
            die 2 "$name='$value' must be an integer >= 1"
        fi
        value="$(to_int "$value")"
        ;;
    fraction)
        is_fraction "$value" || die 2 "$name='$value' must be a number in (0, 1], e.g. 0.9"
        ;;
    ids)
        is_id_list "$value" || die 2 "$name='$value' must be comma-separated ids, one group" \
            "per model instance separated by ';' (e.g. 0,1 or 0,1;2,3)"
        ;;
    batching)
        [[ "$value" == "inflight_fused_batching" || "$value" == "V1" ]] ||
            die 2 "$name='$value' must be inflight_fused_batching or V1"
        ;;
    *) die 1 "internal: unknown kind '$kind' for $name" ;;
    esac
    set_args+=(--set "${name,,}=$value")
done

if [[ -n "${PRIORITY_LEVELS:-}" && -n "${DEFAULT_PRIORITY_LEVEL:-}" ]] &&
    ((10#$DEFAULT_PRIORITY_LEVEL > 10#$PRIORITY_LEVELS)); then
    die 2 "DEFAULT_PRIORITY_LEVEL='$DEFAULT_PRIORITY_LEVEL' is above PRIORITY_LEVELS='$PRIORITY_LEVELS'"
fi

# World size of the engine: ranks (one per GPU) that must run together.
engine_world_size() {
    python3 - "$1" <<'PY'
import json
import sys

path = sys.argv[1]


def fail(message):
    print(f"{path}: {message}", file=sys.stderr)
    sys.exit(1)


def size(section, key):
    value = section.get(key, 1)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        fail(f"{key} is {value!r}, expected a positive integer")
    return value


try:
    with open(path, encoding="utf-8") as f:
        config = json.load(f)
except (OSError, ValueError) as exc:
    fail(f"cannot read engine config: {exc}")
if not isinstance(config, dict):
    fail("engine config is not a JSON object")

# trtllm-build (TensorRT-LLM >= 0.8): pretrained_config.mapping carries
# world_size = tp_size * pp_size * cp_size. Older engines: builder_config.
pretrained = config.get("pretrained_config")
mapping = pretrained.get("mapping") if isinstance(pretrained, dict) else None
legacy = config.get("builder_config")
if isinstance(mapping, dict):
    if "world_size" in mapping:
        world = size(mapping, "world_size")
    else:
        world = size(mapping, "tp_size") * size(mapping, "pp_size") * size(mapping, "cp_size")
elif isinstance(legacy, dict):
    world = size(legacy, "tensor_parallel") * size(legacy, "pipeline_parallel")
else:
    world = 1
print(world)
PY
}

WORLD_SIZE=1
if [[ "$PROFILE" == "trtllm" ]]; then
    WORLD_SIZE="$(engine_world_size "$ENGINE_DIR/config.json")" ||
        die 2 "cannot read the world size from ENGINE_DIR='$ENGINE_DIR'/config.json"
fi

# The backend reads TRTLLM_ORCHESTRATOR with atoi: a non-zero number turns
# orchestrator mode on.
ORCHESTRATOR_ENV="${TRTLLM_ORCHESTRATOR:-0}"
ORCHESTRATOR_ON=0
if is_int32 "$ORCHESTRATOR_ENV" && ((10#$ORCHESTRATOR_ENV != 0)); then
    ORCHESTRATOR_ON=1
fi
case "$TRTLLM_MODE" in
auto)
    if [[ "$PROFILE" != "trtllm" ]]; then
        LAUNCH=single
    elif ((ORCHESTRATOR_ON)); then
        LAUNCH=orchestrator
    elif ((WORLD_SIZE > 1)); then
        LAUNCH=mpi
    else
        LAUNCH=single
    fi
    ;;
single | mpi | orchestrator) LAUNCH="$TRTLLM_MODE" ;;
*) die 2 "MUFLEET_TRTLLM_MODE='$TRTLLM_MODE' must be auto, single, mpi or orchestrator" ;;
esac

if [[ "$LAUNCH" != "single" && "$PROFILE" != "trtllm" ]]; then
    die 2 "MUFLEET_TRTLLM_MODE='$TRTLLM_MODE' needs MUFLEET_PROFILE=trtllm (profile is '$PROFILE')"
fi
if [[ "$LAUNCH" == "single" ]] && ((WORLD_SIZE > 1)); then
    die 2 "the engine in ENGINE_DIR='$ENGINE_DIR' has world size $WORLD_SIZE (tp*pp*cp);" \
        "one tritonserver cannot serve it: use MUFLEET_TRTLLM_MODE=mpi or orchestrator"
fi
if [[ "$PROFILE" == "trtllm" && "$LAUNCH" != "orchestrator" ]] && ((ORCHESTRATOR_ON)); then
    die 2 "TRTLLM_ORCHESTRATOR='$ORCHESTRATOR_ENV' is set but MUFLEET_TRTLLM_MODE='$TRTLLM_MODE';" \
        "unset TRTLLM_ORCHESTRATOR or use MUFLEET_TRTLLM_MODE=orchestrator"
fi

log "engine world size $WORLD_SIZE, launch mode '$LAUNCH'"

# MODEL_REPOSITORY is refilled on every start. To never delete data that is
# not ours, it must be empty or hold the marker of a previous render.
MARKER=".mufleet-rendered"
mkdir -p -- "$MODEL_REPOSITORY" 2>/dev/null ||
    die 2 "cannot create model repository directory MODEL_REPOSITORY='$MODEL_REPOSITORY'"
[[ -w "$MODEL_REPOSITORY" ]] ||
    die 2 "model repository directory MODEL_REPOSITORY='$MODEL_REPOSITORY' is not writable"
if [[ ! -e "$MODEL_REPOSITORY/$MARKER" ]] &&
    [[ -n "$(find "$MODEL_REPOSITORY" -mindepth 1 -maxdepth 1 -print -quit)" ]]; then
    die 2 "MODEL_REPOSITORY='$MODEL_REPOSITORY' is not empty and was not rendered by mufleet;" \
        "use an empty directory"
fi

command -v -- "$MUFLEET_BIN" >/dev/null 2>&1 ||
    die 127 "mufleet CLI '$MUFLEET_BIN' not found on PATH"

# ---- render --------------------------------------------------------------
# `mufleet render` replaces --out atomically (a sibling temp dir, then a
# rename), which needs a writable parent and fails on a mount point such as a
# /models volume. So render into a private staging dir and copy the result
# into MODEL_REPOSITORY, which itself is never removed.
stage="$(mktemp -d "${TMPDIR:-/tmp}/mufleet-render.XXXXXX")"
trap 'rm -rf -- "$stage"' EXIT

render_cmd=("$MUFLEET_BIN" render
    --profile "$PROFILE"
    --tokenizer-dir "$TOKENIZER_DIR"
    --out "$stage/repository")
if [[ "$PROFILE" == "trtllm" ]]; then
    render_cmd+=(--engine-dir "$ENGINE_DIR")
elif [[ -n "$MODEL_DIR" ]]; then
    render_cmd+=(--model-dir "$MODEL_DIR")
fi
if [[ -n "$MAX_BATCH_SIZE" ]]; then
    render_cmd+=(--max-batch-size "$(to_int "$MAX_BATCH_SIZE")")
fi
render_cmd+=("${set_args[@]}")

log "rendering profile '$PROFILE' into '$MODEL_REPOSITORY'"
# render's own output goes to stderr: stdout carries only the dry-run command.
"${render_cmd[@]}" >&2
[[ -d "$stage/repository" ]] || die 1 "mufleet render did not create '$stage/repository'"

find "$MODEL_REPOSITORY" -mindepth 1 -maxdepth 1 -exec rm -rf -- {} +
cp -R -- "$stage/repository/." "$MODEL_REPOSITORY/"
: >"$MODEL_REPOSITORY/$MARKER"
rm -rf -- "$stage"
trap - EXIT

# ---- serve ---------------------------------------------------------------
# Python-backend shared-memory regions are named after this prefix; every
# tritonserver process needs its own (ranks of one job, and containers that
# share an IPC namespace, e.g. --ipc=host: hence the host name).
host_tag="${HOSTNAME:-node}"
host_tag="${host_tag//[^A-Za-z0-9]/}"
shm_prefix() {
    printf 'mufleet_%s_rank%d_' "${host_tag:-node}" "$1"
}

# Flags every tritonserver process gets, as in mufleet/node.py.
server_base=(
    --model-repository "$MODEL_REPOSITORY"
    --model-control-mode=explicit
    --strict-readiness=true
    --exit-on-error=true
    --disable-auto-complete-config
)

# The serving process: every model, the three endpoints.
rank0=("$TRITONSERVER" "${server_base[@]}"
    "--load-model=*"
    --http-port "$HTTP_PORT"
    --grpc-port "$GRPC_PORT"
    --metrics-port "$METRICS_PORT"
    "--backend-config=python,shm-region-prefix-name=$(shm_prefix 0)")

gpu_count() {
    # GPUs this process may use: CUDA_VISIBLE_DEVICES when it lists them,
    # otherwise what nvidia-smi sees (0 when it is not there).
    local visible="${CUDA_VISIBLE_DEVICES:-}" ids
    if [[ -n "$visible" && "$visible" != "all" ]]; then
        IFS=, read -ra ids <<<"$visible"
        printf '%d' "${#ids[@]}"
    elif command -v nvidia-smi >/dev/null 2>&1; then
        nvidia-smi --list-gpus 2>/dev/null | grep -c '^GPU ' || true
    else
        printf '0'
    fi
}

case "$LAUNCH" in
single)
    server_cmd=("${rank0[@]}" "$@")
    ;;
mpi)
    # Leader mode: ranks 1.. load only tensorrt_llm, whose backend keeps them
    # in the executor as workers of rank 0; they serve no endpoint.
    server_cmd=("$MPIRUN" --allow-run-as-root -n 1 "${rank0[@]}" "$@")
    for ((rank = 1; rank < WORLD_SIZE; rank++)); do
        server_cmd+=(: -n 1 "$TRITONSERVER" "${server_base[@]}"
            --load-model=tensorrt_llm
            --allow-http=false
            --allow-grpc=false
            --allow-metrics=false
            "--backend-config=python,shm-region-prefix-name=$(shm_prefix "$rank")")
    done
    ;;
orchestrator)
    # The orchestrating tritonserver runs no engine itself: no pinned or CUDA
    # memory pools, no peer access (as upstream's launch script does for
    # orchestrator mode), so it holds no memory on the workers' GPUs.
    pools=(--pinned-memory-pool-byte-size=0 --enable-peer-access=false)
    gpus="$(gpu_count)"
    if ((gpus == 0)); then
        log "no GPU listed (CUDA_VISIBLE_DEVICES, nvidia-smi): CUDA memory pools left at Triton's default"
    fi
    for ((gpu = 0; gpu < gpus; gpu++)); do
        pools+=("--cuda-memory-pool-byte-size=$gpu:0")
    done
    server_cmd=(env TRTLLM_ORCHESTRATOR=1 TRTLLM_ORCHESTRATOR_SPAWN_PROCESSES=1
        "$MPIRUN" --allow-run-as-root -n 1 "${rank0[@]}" "${pools[@]}" "$@")
    ;;
esac

if [[ "$DRY_RUN" == "1" ]]; then
    # One shell-quoted line on stdout, so it can be copied or parsed.
    printf '%q' "${server_cmd[0]}"
    printf ' %q' "${server_cmd[@]:1}"
    printf '\n'
    exit 0
fi

command -v -- "$TRITONSERVER" >/dev/null 2>&1 ||
    die 127 "tritonserver executable '$TRITONSERVER' not found"
if [[ "$LAUNCH" != "single" ]]; then
    command -v -- "$MPIRUN" >/dev/null 2>&1 ||
        die 127 "mpirun executable '$MPIRUN' not found (needed for MUFLEET_TRTLLM_MODE '$LAUNCH')"
fi

log "starting: ${server_cmd[*]}"
exec "${server_cmd[@]}"
