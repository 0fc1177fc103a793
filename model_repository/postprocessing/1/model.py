"""postprocessing: decodes each beam of TOKENS_BATCH up to its SEQUENCE_LENGTH."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backends.text_codec import TextDecoder


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        self.decoder = TextDecoder(Path(params["tokenizer_dir"]["string_value"]))

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
            texts = self.decoder.decode(tokens[0], lengths[0])
            output = pb_utils.Tensor("OUTPUT", np.array([texts], dtype=np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[output]))
        return responses
