"""preprocessing: tokenizes each batch row's text and word lists (python_backends.preprocess)."""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from python_backends.contract import MODELS
from python_backends.preprocess import preprocess
from python_backends.text_codec import InvalidRequestError, TextEncoder

INPUTS = MODELS["preprocessing"].input_names


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]

        def param(key, default=""):
            return params.get(key, {}).get("string_value") or default

        self.encoder = TextEncoder(
            Path(param("tokenizer_dir")),
            max_context=int(param("max_context", "0")) or None,
            add_special_tokens=param("add_special_tokens", "true") == "true",
        )

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        inputs = {}
        for name in INPUTS:
            tensor = pb_utils.get_input_tensor_by_name(request, name)
            if tensor is not None:
                inputs[name] = tensor.as_numpy()
        try:
            outputs = preprocess(inputs, self.encoder)
        except InvalidRequestError as exc:
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(output_tensors=[], error=error)
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()]
        )
