"""postprocessing: decodes each sequence of TOKENS_BATCH up to its SEQUENCE_LENGTH."""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils

from python_backends.text_codec import TextDecoder


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        skip = params.get("skip_special_tokens", {}).get("string_value", "true") != "false"
        self.decoder = TextDecoder(
            Path(params["tokenizer_dir"]["string_value"]), skip_special_tokens=skip
        )

    def execute(self, requests):
        responses = []
        for request in requests:
            tokens = pb_utils.get_input_tensor_by_name(request, "TOKENS_BATCH").as_numpy()
            lengths = pb_utils.get_input_tensor_by_name(request, "SEQUENCE_LENGTH").as_numpy()
            texts = self.decoder.decode_batch(tokens, lengths)
            responses.append(
                pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor("OUTPUT", texts)])
            )
        return responses
