#!/usr/bin/env bash
# mufleet container entrypoint.
#
# 1. validates the mounted directories (exit 2 with a clear message),
# 2. renders the model repository with `mufleet render` (into a staging dir
#    under TMPDIR) and copies it into MODEL_REPOSITORY, which must be empty
#    or hold an earlier render (marker file .mufleet-rendered),
# 3. execs tritonserver on it; arguments given to the container are passed
#    through to tritonserver (e.g. `--log-verbose=1`).
#
# Environment (defaults in brackets):
#   MUFLEET_PROFILE   model profile to render                  [trtllm]
#   ENGINE_DIR        TensorRT-LLM engine dir (trtllm profile) [/engines]
#   TOKENIZER_DIR     Hugging Face tokenizer dir               [/tokenizer]
#   MODEL_DIR         HF checkpoint dir, passed as --model-dir to render
#                     for non-trtllm profiles when set         []
#   MODEL_REPOSITORY  where the rendered repository is written [/models]
#   MAX_BATCH_SIZE    passed to render as --max-batch-size     [renderer default]
#   HTTP_PORT / GRPC_PORT / METRICS_PORT                       [8000/8001/8002]
#   TRITONSERVER      tritonserver executable                  [tritonserver]
#   MUFLEET_BIN       mufleet executable                       [mufleet]
#   MUFLEET_DRY_RUN   1: render, then print the tritonserver command instead
#                     of exec'ing it (for tests outside Docker)
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

PROFILE="${MUFLEET_PROFILE:-trtllm}"
ENGINE_DIR="${ENGINE_DIR:-/engines}"
TOKENIZER_DIR="${TOKENIZER_DIR:-/tokenizer}"
MODEL_DIR="${MODEL_DIR:-}"
MODEL_REPOSITORY="${MODEL_REPOSITORY:-/models}"
MAX_BATCH_SIZE="${MAX_BATCH_SIZE:-}"
HTTP_PORT="${HTTP_PORT:-8000}"
GRPC_PORT="${GRPC_PORT:-8001}"
METRICS_PORT="${METRICS_PORT:-8002}"
TRITONSERVER="${TRITONSERVER:-tritonserver}"
MUFLEET_BIN="${MUFLEET_BIN:-mufleet}"
DRY_RUN="${MUFLEET_DRY_RUN:-0}"

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
    if ! is_uint "$MAX_BATCH_SIZE" || ((10#$MAX_BATCH_SIZE == 0)); then
        die 2 "MAX_BATCH_SIZE='$MAX_BATCH_SIZE' is not a positive integer"
    fi
fi

for port_var in HTTP_PORT GRPC_PORT METRICS_PORT; do
    port="${!port_var}"
    if ! is_uint "$port" || ((10#$port == 0 || 10#$port > 65535)); then
        die 2 "$port_var='$port' is not a valid TCP port"
    fi
done

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
    render_cmd+=(--max-batch-size "$MAX_BATCH_SIZE")
fi

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
server_cmd=("$TRITONSERVER"
    --model-repository "$MODEL_REPOSITORY"
    --http-port "$HTTP_PORT"
    --grpc-port "$GRPC_PORT"
    --metrics-port "$METRICS_PORT"
    "$@")

if [[ "$DRY_RUN" == "1" ]]; then
    # One shell-quoted line on stdout, so it can be copied or parsed.
    printf '%q' "${server_cmd[0]}"
    printf ' %q' "${server_cmd[@]:1}"
    printf '\n'
    exit 0
fi

command -v -- "$TRITONSERVER" >/dev/null 2>&1 ||
    die 127 "tritonserver executable '$TRITONSERVER' not found"

log "starting: ${server_cmd[*]}"
exec "${server_cmd[@]}"
