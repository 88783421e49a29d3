"""A llama_batch filled token by token, and the context it is decoded in."""

from __future__ import annotations

from typing import Any

import llama_cpp

from mr_notebook.engine.llama.model import Model, log_since, mark_log
from mr_notebook.errors import ModelLoadError


class Batch:
    """Up to ``capacity`` tokens, one sequence id each."""

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self.batch = llama_cpp.llama_batch_init(capacity, 0, 1)
        self.n = 0

    def clear(self) -> None:
        self.n = 0

    @property
    def room(self) -> int:
        return self.capacity - self.n

    def add(self, token: int, pos: int, seq: int, logits: bool) -> int:
        """Append one token; returns its row (the index of its logits when ``logits`` is set)."""
        b, i = self.batch, self.n
        b.token[i] = token
        b.pos[i] = pos
        b.n_seq_id[i] = 1
        b.seq_id[i][0] = seq
        b.logits[i] = logits
        self.n = i + 1
        return i

    def add_many(self, tokens: list[int], start: int, seq: int, *, logits_last: bool, logits_all: bool = False) -> int:
        b, i = self.batch, self.n
        for offset, token in enumerate(tokens):
            b.token[i + offset] = token
            b.pos[i + offset] = start + offset
            b.n_seq_id[i + offset] = 1
            b.seq_id[i + offset][0] = seq
            b.logits[i + offset] = logits_all
        if logits_last and tokens:
            b.logits[i + len(tokens) - 1] = True
        self.n = i + len(tokens)
        return self.n - 1

    def decode(self, ctx: Any) -> int:
        self.batch.n_tokens = self.n
        return int(llama_cpp.llama_decode(ctx, self.batch))

    def free(self) -> None:
        llama_cpp.llama_batch_free(self.batch)


def new_context(
    model: Model,
    *,
    n_ctx: int,
    n_batch: int,
    n_seq: int,
    threads: int,
    embeddings: bool = False,
    pooling: int = llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED,
    unified: bool = False,
) -> Any:
    """A context for ``n_seq`` sequences of up to ``n_ctx`` tokens each.

    Not unified (the default): every sequence has a KV cache of its own, so any conversation can use the whole
    context and, above all, a sequence's attention sums run over its own cells only, in the same order whatever
    the other sequences hold. In one unified cache the cells of different sequences interleave, which changed
    greedy SmolLM2 output with the batch (7 of 8 answers at 4 clients). Costs KV memory for each sequence.
    """
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx if unified else n_ctx * n_seq
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = n_seq
    params.n_threads = threads
    params.n_threads_batch = threads
    params.kv_unified = unified
    params.no_perf = True
    params.embeddings = embeddings
    params.pooling_type = pooling
    # With flash attention (llama.cpp's "auto" turns it on for CPUs) a sequence's greedy output changed with
    # what else shared its batch (2 of 8 prompts on a tiny random model); without it, it never did. Same-input
    # same-output matters more here than FA's speed on long contexts; llama-cpp-python's Llama keeps it off too.
    params.flash_attn_type = llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    mark = mark_log()
    ctx = llama_cpp.llama_init_from_model(model.model, params)
    if not ctx:
        raise ModelLoadError(
            f"llama.cpp could not create a context of {n_ctx} tokens for {model.name}: "
            f"{log_since(mark) or 'no reason given'}. Lower the context size "
            f"(`mr-notebook configure {model.name} --context-size 2048`) or free memory."
        )
    return ctx
