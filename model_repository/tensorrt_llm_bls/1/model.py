"""tensorrt_llm_bls: preprocessing -> tensorrt_llm -> postprocessing through BLS calls.

``execute`` hands each request to a worker thread and returns at once, so requests that
arrive while others run are served concurrently; every response goes through the
request's response sender (decoupled or not).
"""

import json
import logging
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backends.bls import BlsError, BlsPipeline
from python_backends.contract import MODELS

FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
INPUTS = MODELS["tensorrt_llm_bls"].input_names
log = logging.getLogger(__name__)


class InnerCallError(RuntimeError):
    """An inner model answered with an error; its message goes to the caller."""


def _tensors(response):
    if response.has_error():
        raise InnerCallError(response.error().message())
    return {t.name(): t.as_numpy() for t in response.output_tensors()}


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        params = {k: v["string_value"] for k, v in config["parameters"].items()}
        self.decoupled = pb_utils.using_decoupled_model_transaction_policy(config)
        self.trtllm_model = params.get("tensorrt_llm_model_name") or "tensorrt_llm"
        self.accumulate = params.get("accumulate_tokens", "false").lower() in ("true", "1", "yes")
        workers = int(params.get("max_concurrent_requests") or 64)
        self.pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="bls")

    def execute(self, requests):
        for request in requests:
            self.pool.submit(self._serve, request, request.get_response_sender())
        return None

    def _serve(self, request, sender):
        parameters = json.loads(request.parameters() or "{}")

        def call(model, inputs, decoupled):
            inner = pb_utils.InferenceRequest(
                model_name=model,
                inputs=[pb_utils.Tensor(k, np.ascontiguousarray(v)) for k, v in inputs.items()],
                requested_output_names=list(MODELS[model].output_names),
                request_id=request.request_id(),
                parameters=parameters,
                timeout=request.timeout(),
            )
            if decoupled:
                for response in inner.exec(decoupled=True):
                    tensors = _tensors(response)
                    if tensors:
                        yield tensors
            else:
                yield _tensors(inner.exec())

        pipeline = BlsPipeline(call, self.decoupled, self.accumulate, self.trtllm_model)
        inputs = {}
        for name in INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        try:
            for tensors in pipeline.run(inputs):
                if sender.is_cancelled():
                    error = pb_utils.TritonError("cancelled", pb_utils.TritonError.CANCELLED)
                    sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
                    return
                outputs = [pb_utils.Tensor(k, v) for k, v in tensors.items()]
                response = pb_utils.InferenceResponse(output_tensors=outputs)
                if self.decoupled:
                    sender.send(response)
                else:
                    sender.send(response, flags=FINAL)
                    return
            if self.decoupled:
                sender.send(flags=FINAL)
        except (BlsError, InnerCallError) as exc:
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)
        except Exception as exc:  # never leave a caller without a final response
            log.exception("tensorrt_llm_bls failed")
            error = pb_utils.TritonError(f"tensorrt_llm_bls failed: {exc}")
            sender.send(pb_utils.InferenceResponse(error=error), flags=FINAL)

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
