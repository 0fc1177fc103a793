"""How one model's tensors are declared: the data types, a tensor, a model's inputs and outputs.

Dims exclude the batch dimension (every model has ``max_batch_size > 0``). ``scalar``
inputs carry ``reshape: { shape: [ ] }``, as upstream's ``tensorrt_llm`` declares them.
Three data types are template variables, as upstream's are.
"""

from __future__ import annotations

from dataclasses import dataclass

BOOL = "TYPE_BOOL"
UINT8 = "TYPE_UINT8"
INT32 = "TYPE_INT32"
INT64 = "TYPE_INT64"
UINT64 = "TYPE_UINT64"
FP16 = "TYPE_FP16"
FP32 = "TYPE_FP32"
STRING = "TYPE_STRING"
LOGITS = "${logits_datatype}"
ENCODER_FEATURES = "${encoder_input_features_data_type}"
PROMPT_TABLE = "${prompt_embedding_table_data_type}"


@dataclass(frozen=True)
class T:
    """One tensor of one model."""

    name: str
    dtype: str
    dims: tuple[int, ...]
    required: bool = False
    scalar: bool = False
    ragged: bool = False

    def pbtxt(self, is_input: bool) -> str:
        dims = ", ".join(str(d) for d in self.dims)
        parts = [f'name: "{self.name}"', f"data_type: {self.dtype}", f"dims: [ {dims} ]"]
        if is_input:
            if self.scalar:
                parts.append("reshape: { shape: [ ] }")
            if not self.required:
                parts.append("optional: true")
            if self.ragged:
                parts.append("allow_ragged_batch: true")
        return "  { " + " ".join(parts) + " }"


@dataclass(frozen=True)
class ModelIO:
    inputs: tuple[T, ...]
    outputs: tuple[T, ...]

    @property
    def inputs_by_name(self) -> dict[str, T]:
        return {t.name: t for t in self.inputs}

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(t.name for t in self.outputs)

    def pbtxt(self) -> str:
        """The ``input [...]`` and ``output [...]`` blocks of ``config.pbtxt``."""
        inputs = ",\n".join(t.pbtxt(True) for t in self.inputs)
        outputs = ",\n".join(t.pbtxt(False) for t in self.outputs)
        return f"input [\n{inputs}\n]\noutput [\n{outputs}\n]"
