"""A small, seeded, deterministic Llama-architecture checkpoint built entirely offline.

The checkpoint is used wherever mufleet needs a *real* Hugging Face model without a model hub:
unit tests, the Triton python backends, benchmarks on machines with no internet. It consists of

* a byte-level BPE tokenizer trained with the ``tokenizers`` library on the corpus that ships
  with the package (``mufleet/data/corpus.txt``), with Llama-3-style special tokens and chat
  template, saved as a transformers fast tokenizer; and
* a ``LlamaForCausalLM`` with randomly initialised float32 weights (seeded, so every build of
  the same :class:`TinyModelSpec` is byte-identical), saved as ``model.safetensors``.

The weights are random: the model produces gibberish, but it produces the *same* gibberish on
every machine, which is what tests and benchmarks need.

Building is atomic: the checkpoint is written to a temporary directory next to the target and
renamed into place, so a reader never sees a half-written model, and concurrent builders agree
on one result.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = [
    "TINY_MODEL_VERSION",
    "TinyModelSpec",
    "build_tiny_model",
    "default_model_dir",
]

TINY_MODEL_VERSION: str = "2"
"""Version of the build recipe; bump it whenever the bytes a build produces would change."""

CORPUS_PATH = Path(__file__).resolve().parent / "data" / "corpus.txt"

BOS_TOKEN = "<|begin_of_text|>"
EOS_TOKEN = "<|end_of_text|>"
PAD_TOKEN = "<|pad|>"
START_HEADER_TOKEN = "<|start_header_id|>"
END_HEADER_TOKEN = "<|end_header_id|>"
EOT_TOKEN = "<|eot_id|>"
SPECIAL_TOKENS: tuple[str, ...] = (
    BOS_TOKEN,
    EOS_TOKEN,
    PAD_TOKEN,
    START_HEADER_TOKEN,
    END_HEADER_TOKEN,
    EOT_TOKEN,
)

# The Llama-3 pre-tokenisation regex: contractions, letter runs, digit groups of at most three,
# punctuation runs, newlines and whitespace.
_PRETOKENIZE_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# Llama-3.1-style chat template with tools: bos; with tools, a system block that lists them
# as JSON; one header block per message (a tool result as role "ipython", an assistant's
# tool calls as one JSON object each), each closed by <|eot_id|>; with add_generation_prompt,
# an open assistant header for the model to continue.
_H, _E, _T = START_HEADER_TOKEN, END_HEADER_TOKEN, EOT_TOKEN
_TOOLS_PREAMBLE = (
    "You can call these tools. To call one, answer with only "
    '{"name": <tool name>, "parameters": {<argument>: <value>}}.'
)
CHAT_TEMPLATE = (
    "{{- bos_token }}"
    "{%- if tools %}"
    "{{- '" + _H + "system" + _E + "\\n\\n' }}"
    "{{- " + json.dumps(_TOOLS_PREAMBLE) + " }}{{- '\\n\\n' }}"
    "{%- for tool in tools %}{{- tool | tojson }}{{- '\\n' }}{%- endfor %}"
    "{{- '" + _T + "' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{%- set role = 'ipython' if message['role'] == 'tool' else message['role'] %}"
    "{{- '" + _H + "' + role + '" + _E + "\\n\\n' }}"
    "{%- if message.get('tool_calls') %}"
    "{%- for call in message['tool_calls'] %}"
    "{{- {'name': call['function']['name'], "
    "'parameters': call['function']['arguments']} | tojson }}"
    "{%- endfor %}"
    "{%- else %}"
    "{{- (message['content'] or '') | trim }}"
    "{%- endif %}"
    "{{- '" + _T + "' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '" + _H + "assistant" + _E + "\\n\\n' }}"
    "{%- endif %}"
)

# Written last into a finished build; its presence (with matching contents) marks it complete.
_MARKER_FILE = "mufleet_tiny_model.json"
_REQUIRED_FILES: tuple[str, ...] = (
    "chat_template.jinja",
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
)


@dataclass(frozen=True)
class TinyModelSpec:
    """Shape and seed of a tiny Llama checkpoint (the defaults give about 4M parameters)."""

    vocab_size: int = 2048
    hidden_size: int = 256
    intermediate_size: int = 688
    num_hidden_layers: int = 4
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    max_position_embeddings: int = 2048
    seed: int = 0


def _log(message: str) -> None:
    print(f"[mufleet.tiny_model] {message}", file=sys.stderr, flush=True)


def _marker_contents(spec: TinyModelSpec) -> dict[str, Any]:
    return {"version": TINY_MODEL_VERSION, "spec": dataclasses.asdict(spec)}


def _read_marker(directory: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((directory / _MARKER_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _is_complete(directory: Path, spec: TinyModelSpec) -> bool:
    """True if ``directory`` holds a finished build of ``spec`` with this recipe version."""
    if _read_marker(directory) != _marker_contents(spec):
        return False
    return all((directory / name).is_file() for name in _REQUIRED_FILES)


def _train_tokenizer(spec: TinyModelSpec, out_dir: Path) -> dict[str, int]:
    """Train the BPE tokenizer, save it into ``out_dir``; return the special-token ids."""
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    n_base = len(pre_tokenizers.ByteLevel.alphabet()) + len(SPECIAL_TOKENS)
    if spec.vocab_size <= n_base:
        raise ValueError(f"vocab_size must be larger than {n_base}, got {spec.vocab_size}")

    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tokenizer.decoder = decoders.ByteLevel()
    # Special tokens come first, in order, so their ids are 0..5 whatever the corpus holds. The
    # trainer is deterministic: equal-count merges are broken by token id, not by hash order
    # (the unit tests check byte-identical output across builds).
    trainer = trainers.BpeTrainer(
        vocab_size=spec.vocab_size,
        min_frequency=0,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=sorted(pre_tokenizers.ByteLevel.alphabet()),
        show_progress=False,
    )
    # One document, not one line at a time, so that merges across blank lines ("\n\n") are
    # learnt too; the corpus is small enough for this to take well under a second.
    text = CORPUS_PATH.read_text(encoding="utf-8")
    tokenizer.train_from_iterator([text], trainer=trainer)

    ids: dict[str, int] = {}
    for token in SPECIAL_TOKENS:
        token_id = tokenizer.token_to_id(token)
        if token_id is None:
            raise RuntimeError(f"special token {token} missing from the trained vocabulary")
        ids[token] = token_id
    if tokenizer.get_vocab_size() > spec.vocab_size:
        raise RuntimeError(
            f"trained vocabulary has {tokenizer.get_vocab_size()} tokens, "
            f"more than vocab_size={spec.vocab_size}"
        )

    # Like Llama 3: every encoded sequence starts with <|begin_of_text|>, nothing at the end.
    bos_id = ids[BOS_TOKEN]
    tokenizer.post_processor = processors.Sequence(
        [
            processors.ByteLevel(trim_offsets=False),
            processors.TemplateProcessing(
                single=f"{BOS_TOKEN} $A",
                pair=f"{BOS_TOKEN} $A {BOS_TOKEN}:1 $B:1",
                special_tokens=[(BOS_TOKEN, bos_id)],
            ),
        ]
    )

    # transformers 5: PreTrainedTokenizerFast is an alias of TokenizersBackend, which keeps the
    # tokenizer.json pipeline as-is (model-specific classes such as LlamaTokenizer would rebuild
    # their own normaliser / pre-tokeniser around our vocabulary and merges).
    hf_tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        bos_token=BOS_TOKEN,
        eos_token=EOS_TOKEN,
        pad_token=PAD_TOKEN,
        model_max_length=spec.max_position_embeddings,
        padding_side="left",
        # Llama takes no token_type_ids (transformers 4 would return them by default).
        model_input_names=["input_ids", "attention_mask"],
        clean_up_tokenization_spaces=False,
        chat_template=CHAT_TEMPLATE,
    )
    hf_tokenizer.save_pretrained(out_dir)
    # transformers 5 records the class as "TokenizersBackend", a name transformers 4 does not
    # know; "PreTrainedTokenizerFast" loads the same tokenizer.json in both (in 5 it is an alias).
    config_path = out_dir / "tokenizer_config.json"
    tokenizer_config = json.loads(config_path.read_text(encoding="utf-8"))
    tokenizer_config["tokenizer_class"] = "PreTrainedTokenizerFast"
    config_path.write_text(
        json.dumps(tokenizer_config, indent=2, sort_keys=True, ensure_ascii=False) + "\n",
        encoding="utf-8",
    )
    return ids


def _build_model(spec: TinyModelSpec, token_ids: dict[str, int], out_dir: Path) -> int:
    """Initialise the seeded Llama model, save it into ``out_dir``; return its parameter count."""
    import torch
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM
    from transformers.utils import logging as hf_logging

    bos_id, eos_id, pad_id = token_ids[BOS_TOKEN], token_ids[EOS_TOKEN], token_ids[PAD_TOKEN]
    config = LlamaConfig(
        vocab_size=spec.vocab_size,
        hidden_size=spec.hidden_size,
        intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers,
        num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads,
        max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
        tie_word_embeddings=False,
        dtype="float32",
    )
    # Fork the RNG so that building a model does not perturb the caller's random stream.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(spec.seed)
        previous_dtype = torch.get_default_dtype()
        torch.set_default_dtype(torch.float32)
        try:
            with torch.device("cpu"):
                model = LlamaForCausalLM(config)
        finally:
            torch.set_default_dtype(previous_dtype)
    model.eval()
    model.generation_config = GenerationConfig(
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        pad_token_id=pad_id,
    )
    progress_bar = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()  # no "Writing model shards" bar for a 16 MB file
    try:
        model.save_pretrained(out_dir, safe_serialization=True)
    finally:
        if progress_bar:
            hf_logging.enable_progress_bar()
    return sum(p.numel() for p in model.parameters())


def _build_into(tmp_dir: Path, spec: TinyModelSpec) -> None:
    started = time.monotonic()
    _log(f"training byte-level BPE tokenizer (vocab_size={spec.vocab_size}) on {CORPUS_PATH.name}")
    token_ids = _train_tokenizer(spec, tmp_dir)
    _log(f"initialising Llama weights (seed={spec.seed})")
    n_params = _build_model(spec, token_ids, tmp_dir)
    (tmp_dir / _MARKER_FILE).write_text(
        json.dumps(_marker_contents(spec), indent=2, sort_keys=True) + "\n", encoding="utf-8"
    )
    # mkdtemp makes the directory private (0700) and some writers make private files; the model
    # is shared (e.g. mounted into a Triton container running as another user).
    for path in tmp_dir.iterdir():
        if path.is_file():
            path.chmod(0o644)
    tmp_dir.chmod(0o755)
    _log(f"built {n_params / 1e6:.2f}M parameters in {time.monotonic() - started:.1f}s")


def build_tiny_model(out_dir: Path, spec: TinyModelSpec = TinyModelSpec()) -> Path:
    """Build the tiny Llama checkpoint for ``spec`` into ``out_dir`` and return ``out_dir``.

    If ``out_dir`` already holds a complete build of the same ``spec`` (and the same
    :data:`TINY_MODEL_VERSION`), it is returned untouched. A previous build of another spec or
    version is replaced. An existing non-empty directory that is not a tiny-model build is never
    overwritten: :class:`FileExistsError` is raised instead.

    The result is a directory that ``AutoTokenizer.from_pretrained`` and
    ``AutoModelForCausalLM.from_pretrained`` load offline: ``config.json``,
    ``generation_config.json``, ``model.safetensors``, ``tokenizer.json``,
    ``tokenizer_config.json``, ``chat_template.jinja`` (plus a ``mufleet_tiny_model.json``
    marker). Two builds of the same spec produce byte-identical files.
    """
    out_dir = Path(out_dir).expanduser().absolute()
    if _is_complete(out_dir, spec):
        return out_dir
    if out_dir.exists():
        if not out_dir.is_dir():
            raise FileExistsError(f"{out_dir} exists and is not a directory")
        if any(out_dir.iterdir()) and _read_marker(out_dir) is None:
            raise FileExistsError(f"{out_dir} exists and is not a tiny-model build; not replaced")

    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.tmp-", dir=out_dir.parent))
    try:
        _build_into(tmp_dir, spec)
        installed = _install(tmp_dir, out_dir, spec)
    finally:
        if tmp_dir.exists():
            shutil.rmtree(tmp_dir, ignore_errors=True)
    _log(f"saved to {out_dir}" if installed else f"{out_dir} was built concurrently; using it")
    return out_dir


def _install(tmp_dir: Path, out_dir: Path, spec: TinyModelSpec) -> bool:
    """Rename the finished ``tmp_dir`` to ``out_dir``, tolerating a concurrent builder.

    Returns False if another process installed the same build first (``tmp_dir`` is unused).
    """
    try:
        # rename(2) replaces a missing or empty directory atomically.
        os.rename(tmp_dir, out_dir)
        return True
    except OSError:
        if _is_complete(out_dir, spec):
            return False  # another process finished the same build first; keep theirs
        if _read_marker(out_dir) is None:
            raise
    # out_dir holds a stale build (another spec or recipe version): move it aside, then swap.
    stale = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
    try:
        os.replace(out_dir, stale / "model")
        os.rename(tmp_dir, out_dir)
    finally:
        shutil.rmtree(stale, ignore_errors=True)
    return True


def default_model_dir() -> Path:
    """The default tiny model, ``<mufleet home>/models/tiny-llama-v<TINY_MODEL_VERSION>``.

    Builds it first (a few seconds) if it is missing.
    """
    from mufleet.paths import home

    return build_tiny_model(home() / "models" / f"tiny-llama-v{TINY_MODEL_VERSION}")
