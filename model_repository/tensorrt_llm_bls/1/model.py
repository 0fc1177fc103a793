"""tensorrt_llm_bls: one unary response per request, produced by the streaming ensemble."""

import json
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backends.unary import OUTPUTS, UnaryCallError, collect_unary

ENSEMBLE = "ensemble"


def _ensemble_call(request):
    inputs = request.inputs()
    stream = pb_utils.get_input_tensor_by_name(request, "stream")
    if stream is not None and bool(np.asarray(stream.as_numpy()).reshape(-1)[0]):
        raise UnaryCallError("stream=true needs a streaming call: use the 'ensemble' model")
    bls = pb_utils.InferenceRequest(
        model_name=ENSEMBLE, inputs=inputs, requested_output_names=list(OUTPUTS)
    )
    for response in bls.exec(decoupled=True):
        if response.has_error():
            raise UnaryCallError(response.error().message())
        tensors = {t.name(): t.as_numpy() for t in response.output_tensors()}
        if tensors:
            yield tensors


def _respond(request):
    try:
        merged = collect_unary(_ensemble_call(request))
    except UnaryCallError as exc:
        error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
        return pb_utils.InferenceResponse(output_tensors=[], error=error)
    return pb_utils.InferenceResponse(
        output_tensors=[pb_utils.Tensor(name, value) for name, value in merged.items()]
    )


class TritonPythonModel:
    def initialize(self, args):
        config = json.loads(args["model_config"])
        self.pool = ThreadPoolExecutor(max_workers=max(int(config["max_batch_size"]), 1))

    def execute(self, requests):
        # A batch's requests run through the ensemble together, not one after another.
        return list(self.pool.map(_respond, requests))

    def finalize(self):
        self.pool.shutdown(wait=False, cancel_futures=True)
