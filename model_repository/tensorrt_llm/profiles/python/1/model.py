"""tensorrt_llm (cpu and sim profiles): the TensorRT-LLM contract over a Python engine."""

import json
import logging
import os
import threading
import time
from pathlib import Path

import triton_python_backend_utils as pb_utils

from python_backends.engine_metrics import EngineMetrics
from python_backends.engines import build_engine
from python_backends.generation import (
    PRIORITY_PARAMETER,
    TRTLLM_INPUTS,
    InvalidGenerationError,
    parse_request,
)
from python_backends.token_bytes import TokenBytes, Utf8Holdback
from python_backends.triton_responses import ResponseAssembler
from python_backends.trtllm_metrics import TrtLlmMetrics

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
ENGINE_DEAD_EXIT_CODE = 87
CANCELLATION_CHECK_S = 0.1


def _inputs(request):
    found = {}
    for name in TRTLLM_INPUTS:
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            found[name] = tensor.as_numpy()
    return found


def _priority(request, default):
    """The request's level, from the PRIORITY_PARAMETER request parameter (a Python model
    cannot read Triton's own priority); without it, the model's default level, where
    Triton's queue would have put it."""
    level = json.loads(request.parameters() or "{}").get(PRIORITY_PARAMETER)
    return level if isinstance(level, int) else default


def _default_level(config):
    """``dynamic_batching.default_priority_level`` (a string in the JSON config), or None."""
    level = int((config.get("dynamic_batching") or {}).get("default_priority_level") or 0)
    return level or None


def _error(message, code=None):
    code = pb_utils.TritonError.INTERNAL if code is None else code
    return pb_utils.InferenceResponse(error=pb_utils.TritonError(message, code))


def _sender(response_sender):
    def send(tensors, error, final):
        if error is not None:
            code = (
                pb_utils.TritonError.CANCELLED
                if error == "cancelled"
                else pb_utils.TritonError.INTERNAL
            )
            response_sender.send(_error(error, code), flags=FINAL)
        elif tensors is None:
            response_sender.send(flags=FINAL)
        else:
            outputs = [pb_utils.Tensor(name, value) for name, value in tensors.items()]
            response = pb_utils.InferenceResponse(output_tensors=outputs)
            response_sender.send(response, flags=FINAL if final else 0)

    return send


class _CancellationCheck:
    """Asks Triton whether the client cancelled at most every CANCELLATION_CHECK_S (an IPC
    round trip to the server each time), as TensorRT-LLM's cancellation_check_period_ms."""

    def __init__(self, sender, assembler):
        self.sender, self.assembler = sender, assembler
        self.checked_at, self.cancelled = 0.0, False

    def __call__(self):
        if self.assembler.failed or self.cancelled:
            return True
        now = time.monotonic()
        if now - self.checked_at >= CANCELLATION_CHECK_S:
            self.checked_at = now
            self.cancelled = self.sender.is_cancelled()
        return self.cancelled


def _exit_stub(reason):
    """A dead engine takes its stub down, so Triton and the router see it and restart it."""
    logging.getLogger(__name__).critical("exiting the stub: %s", reason)
    # Let the error responses already sent leave the stub before it goes.
    threading.Timer(0.5, os._exit, args=(ENGINE_DEAD_EXIT_CODE,)).start()


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.exclude_input = params.get("exclude_input_in_output", "true") == "true"
        self.default_level = _default_level(config)
        self.engine = build_engine(params["engine"], params, int(config["max_batch_size"]))
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(str(Path(params["tokenizer_dir"])))
        self.token_bytes = TokenBytes.from_tokenizer(tokenizer)
        name, version = args["model_name"], args["model_version"]
        self.metrics = TrtLlmMetrics(pb_utils, name, version)
        self.engine_metrics = EngineMetrics(pb_utils, name, version, self.engine.info)
        self.engine.on_step = self._on_step
        self._on_step(self.engine.stats)  # the limits are known before the first request
        self.engine.on_fatal = _exit_stub
        self.engine.start()

    def _on_step(self, stats):
        self.metrics.update(stats)
        self.engine_metrics.update(stats)

    def _holdback(self):
        return Utf8Holdback(self.token_bytes)

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                parsed = parse_request(
                    _inputs(request),
                    self.engine.name,
                    self.engine.vocab_size,
                    self.engine.max_context,
                    _priority(request, self.default_level),
                    self.exclude_input,
                )
                if parsed.options.streaming and not self.decoupled:
                    raise InvalidGenerationError(
                        "streaming needs a decoupled model: render the repository with "
                        "--decoupled true, or send streaming=false"
                    )
            except InvalidGenerationError as exc:
                sender.send(_error(str(exc), pb_utils.TritonError.INVALID_ARG), flags=FINAL)
                continue
            assembler = ResponseAssembler(parsed, _sender(sender), self.decoupled, self._holdback)

            cancelled = _CancellationCheck(sender, assembler)

            for index, spec in enumerate(parsed.specs):
                self.engine.submit(spec, assembler.emitter(index), cancelled)
        # Submit and return, as the TensorRT-LLM backend hands requests to its executor:
        # they wait in the engine's queue, ordered by priority level, so a top-level
        # request (a canary) is admitted ahead of a full batch instead of waiting behind
        # it in Triton's queue, and a wedged engine never holds Triton's execute thread.
        return None

    def finalize(self):
        self.engine.stop()
