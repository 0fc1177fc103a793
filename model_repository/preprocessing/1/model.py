"""preprocessing: tokenizes QUERY and word lists, refusing requests that cannot fit."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils

from python_backends.text_codec import InvalidRequestError, TextEncoder


def _optional(request, name):
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    return None if tensor is None else tensor.as_numpy().reshape(-1)


class TritonPythonModel:
    def initialize(self, args):
        params = json.loads(args["model_config"])["parameters"]
        max_context = int(params.get("max_context", {}).get("string_value") or 0)
        self.encoder = TextEncoder(
            Path(params["tokenizer_dir"]["string_value"]), max_context=max_context or None
        )

    def execute(self, requests):
        return [self._one(request) for request in requests]

    def _one(self, request):
        end_id, pad_id = _optional(request, "END_ID"), _optional(request, "PAD_ID")
        try:
            encoded = self.encoder.encode(
                query=_optional(request, "QUERY")[0],
                max_tokens=int(_optional(request, "REQUEST_OUTPUT_LEN")[0]),
                bad_words=list(_optional(request, "BAD_WORDS_DICT") or ()),
                stop_words=list(_optional(request, "STOP_WORDS_DICT") or ()),
                end_id=None if end_id is None else int(end_id[0]),
                pad_id=None if pad_id is None else int(pad_id[0]),
            )
        except InvalidRequestError as exc:
            error = pb_utils.TritonError(str(exc), pb_utils.TritonError.INVALID_ARG)
            return pb_utils.InferenceResponse(output_tensors=[], error=error)
        outputs = {
            "INPUT_ID": encoded.input_ids[None, :],
            "REQUEST_INPUT_LEN": np.array([[encoded.input_ids.size]], dtype=np.int32),
            "BAD_WORDS_IDS": encoded.bad_words[None],
            "STOP_WORDS_IDS": encoded.stop_words[None],
            "REQUEST_OUTPUT_LEN": np.array([[encoded.request_output_len]], dtype=np.int32),
            "OUT_END_ID": np.array([[encoded.end_id]], dtype=np.int32),
            "OUT_PAD_ID": np.array([[encoded.pad_id]], dtype=np.int32),
        }
        return pb_utils.InferenceResponse(
            output_tensors=[pb_utils.Tensor(k, v) for k, v in outputs.items()]
        )
