"""tensorrt_llm (cpu and sim profiles): the TensorRT-LLM contract over a Python engine."""

import json

import triton_python_backend_utils as pb_utils

from python_backends.engines import build_engine
from python_backends.generation import (
    OPTIONAL_INPUTS,
    REQUIRED_INPUTS,
    InvalidGenerationError,
    parse_generation,
)
from python_backends.triton_responses import token_event_tensors
from python_backends.trtllm_metrics import TrtLlmMetrics

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _inputs(request):
    found = {}
    for name in (*REQUIRED_INPUTS, *OPTIONAL_INPUTS):
        tensor = pb_utils.get_input_tensor_by_name(request, name)
        if tensor is not None:
            found[name] = tensor.as_numpy()
    return found


def _priority(request):
    level = json.loads(request.parameters() or "{}").get("priority")
    return level if isinstance(level, int) else None


def _sender(response_sender):
    def emit(event):
        if event.error is not None:
            code = (
                pb_utils.TritonError.CANCELLED
                if event.error == "cancelled"
                else pb_utils.TritonError.INTERNAL
            )
            error = pb_utils.TritonError(event.error, code)
            response_sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
            return
        if not event.token_ids and event.finished:
            response_sender.send(flags=FINAL)
            return
        tensors = [pb_utils.Tensor(k, v) for k, v in token_event_tensors(event).items()]
        response_sender.send(
            pb_utils.InferenceResponse(output_tensors=tensors),
            flags=FINAL if event.finished else 0,
        )

    return emit


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.engine = build_engine(params["engine"], params, int(config["max_batch_size"]))
        self.metrics = TrtLlmMetrics(pb_utils, args["model_name"], args["model_version"])
        self.engine.on_step = self.metrics.update
        self.engine.start()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                spec = parse_generation(
                    _inputs(request),
                    self.engine.vocab_size,
                    self.engine.max_context,
                    _priority(request),
                )
            except InvalidGenerationError as exc:
                error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
                sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
                continue
            self.engine.submit(spec, _sender(sender), sender.is_cancelled)
        # Hold this batch until the engine has a slot for all of it: later requests
        # then wait in Triton's priority queue, where higher priorities overtake.
        self.engine.wait_admitted()
        return None

    def finalize(self):
        self.engine.stop()
