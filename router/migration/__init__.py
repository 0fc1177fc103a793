"""Mid-stream migration: a stream whose node dies after tokens reached the client goes on
elsewhere, and the client sees one unbroken stream.

The rest of the generation runs on another node's ``tensorrt_llm`` model with token ids:
the prompt's ids (the router tokenizes as the nodes' preprocessing does) plus the ids the
client already has, the remaining budget, and every sampling input of the original request
mapped by the contract's routing maps (:mod:`python_backends.contract`); stop, bad and bias
words go through the preprocessing's own code. Its responses are translated back into the
original front's shape — ``ensemble``, ``tensorrt_llm_bls`` or ``tensorrt_llm`` — so the
client's concatenated text equals that of an unbroken run. Re-tokenizing prompt text plus
generated text would not: the ids of a text are not the ids that generated it.

How the pipeline uses it::

    prepare_request(job)               # the node also returns output_ids (idempotent)
    ledger = StreamLedger(job)         # before or after prepare_request
    for response in node_stream:
        ledger.observe(response)       # the ids, text and log-probs that reached the client
        yield ledger.for_client(response)  # only the outputs the client asked for
    ...                                # the node fails; ledger.streamed: something was sent
    if ledger.migratable:              # else ledger.why_not says why it cannot resume
        cont = ledger.continuation()   # cont.request: for another node's tensorrt_llm
        for response in other_node_stream(cont.request):
            for out in cont.translate(response):  # 0 or 1 responses, the front's shape
                ledger.observe(out)    # so that a second failure can migrate again
                yield ledger.for_client(out)

Translated responses carry the original request id, the front's model name, version and
response parameters, Triton's final flag where the continuation ends, ``text_output``
decoded as the postprocessing model decodes (:class:`python_backends.text_codec.TextDecoder`,
BLS ``accumulate_tokens`` included), and counts (``num_output_tokens``), cumulative
log-probs and ``num_input_tokens`` measured from the original start.

**Text at the seam.** The client's text is the concatenation of per-response decodes, so
the continuation must be cut into the same responses as the unbroken run. The engines
release tokens only where a UTF-8 character is complete
(:class:`python_backends.token_bytes.Utf8Holdback`); at every release the holdback's state
is what a fresh holdback reaches from the tokens it still holds, and those unsent tokens
are exactly what the continuation generates first. A fresh engine-side holdback therefore
cuts the continuation as the unbroken run would have been cut, and the router decodes each
response as it comes. A router-side holdback would differ wherever an engine sends partial
characters (TensorRT-LLM streams one token per response, and the unbroken text then has
U+FFFD where a character spans tokens): exact equality needs the same cuts, not better ones.

Triton's ensemble pairs the outputs of its steps by the order they come in, not by the
engine response they belong to: with several postprocessing instances a response can
carry its own ``output_ids`` and the ``text_output`` of a neighbour (the unbroken stream
then shows two texts swapped, and its concatenation is no longer that of its ids). A cut
inside such a swap leaves the client with texts beyond the ids it has and without some of
its ids' texts. The ledger decodes each response's ids and matches the client's texts
against them (:attr:`Seam.owed`, :attr:`Seam.ahead`); the continuation sends the owed
texts first and skips the ones the client has when they come, one text per response,
so every text reaches the client once.

**Exactness.** The continuation reproduces the unbroken run token for token when the
engine's next token depends only on the context (prompt plus tokens so far), the seed and
the sampling inputs, as the cpu and sim engines' does: greedy decoding, and seeded sampling
on engines that seed each step from the seed and the context (an engine with one random
generator per request, as TensorRT-LLM's sampling layers keep, starts a fresh one at the
seam). Inexact by construction (the request migrates anyway): ``runtime_top_p_decay`` (the
decay restarts at the seam), presence and frequency penalties (they count output tokens,
and the tokens already sent become prompt), multi-token stop and bad words whose first
tokens lie before the seam on engines that match them over output tokens only (the Python
engines match over the context), and perf metrics (the continuation's request's).
Cumulative log-probs are equal up to float32 rounding of the sum.

Not migratable (:attr:`StreamLedger.why_not`): batches of several rows, several returned
sequences, beam search, unary (non-streamed) requests, context or generation logits,
inputs whose state lives on the failed node (guided decoding, draft tokens, disaggregated
context, prompt tables, encoder inputs), a stream that has ended or has nothing left to
generate, and one that sent nothing yet (fail over with the original request instead).

Assumptions about the nodes' repository: preprocessing adds special tokens (the
``add_special_tokens`` default) as :meth:`router.models.ServedModel.encode` does; pass
``skip_special_tokens`` and the BLS ``accumulate_tokens`` as rendered when they are not the
defaults. The first continuation of a model loads its tokenizer again for the
preprocessing and postprocessing code (cached afterwards).
"""

from router.migration.ledger import MigrationError, StreamLedger, prepare_request
from router.migration.translate import Continuation, Seam

__all__ = ["Continuation", "MigrationError", "Seam", "StreamLedger", "prepare_request"]
