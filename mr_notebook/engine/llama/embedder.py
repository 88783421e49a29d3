"""Embeddings in a second context of the same model: several inputs per decode, one decode per step."""

from __future__ import annotations

import base64
import ctypes
from collections.abc import Callable
from typing import Any

import llama_cpp
import numpy as np

from mr_notebook.engine.llama.batch import Batch, new_context
from mr_notebook.engine.llama.jobs import EmbedJob
from mr_notebook.engine.llama.model import Model
from mr_notebook.errors import ContextLengthExceeded, InvalidRequest

#: Tokens per embedding decode (and the longest input): llama.cpp pools a sequence only within one batch.
EMBED_CONTEXT = 2048
#: Inputs evaluated together in one decode (sequence ids of the embedding context).
EMBED_SEQUENCES = 16

Send = Callable[[dict[str, Any] | bytes], None]


class Embedder:
    """Created on first use: a chat-only workload never pays for the embedding context."""

    def __init__(self, model: Model, config: dict[str, Any], threads: int) -> None:
        self.model = model
        self.threads = threads
        self.n_ctx = min(int(config.get("context_length") or EMBED_CONTEXT), EMBED_CONTEXT)
        # A GGUF that declares pooling (an embedding model) keeps it; chat models get mean pooling.
        self.pooling = (
            llama_cpp.LLAMA_POOLING_TYPE_UNSPECIFIED
            if config.get("pooling") is not None
            else llama_cpp.LLAMA_POOLING_TYPE_MEAN
        )
        #: Inputs embedded since the worker started (reported in stats).
        self.embedded = 0
        self._ctx: Any = None
        self._batch: Batch | None = None

    def _context(self) -> tuple[Any, Batch]:
        if self._ctx is None or self._batch is None:
            self._ctx = new_context(
                self.model,
                n_ctx=self.n_ctx,
                n_batch=self.n_ctx,
                n_seq=EMBED_SEQUENCES,
                threads=self.threads,
                embeddings=True,
                pooling=self.pooling,
                unified=True,  # cleared after every decode: the inputs of one batch share it
            )
            self.n_ctx = int(llama_cpp.llama_n_ctx(self._ctx))
            self._batch = Batch(int(llama_cpp.llama_n_batch(self._ctx)))
        return self._ctx, self._batch

    def set_threads(self, threads: int) -> None:
        self.threads = threads
        if self._ctx is not None:
            llama_cpp.llama_set_n_threads(self._ctx, threads, threads)

    def prepare(self, inputs: list[Any]) -> list[list[int]]:
        """Tokenize (or check token ids of) every input, before any is evaluated."""
        _, batch = self._context()
        limit = batch.capacity
        out = []
        for i, item in enumerate(inputs):
            if isinstance(item, list):
                self.model.check_tokens(item, "input")
                tokens = list(item)
            else:
                tokens = self.model.tokenize(item, add_special=True, special=False)
            if not tokens:
                raise InvalidRequest(f"input[{i}] is empty; send some text.", "input")
            if len(tokens) > limit:
                raise ContextLengthExceeded(
                    f"input[{i}] is {len(tokens)} tokens but embeddings take at most {limit}; split the text.",
                    "input",
                )
            out.append(tokens)
        return out

    def step(self, job: EmbedJob, send: Send, budget: int | None = None) -> bool:
        """Evaluate the next inputs of ``job`` that fit one batch (and ``budget`` tokens, though always at least
        one input); True when the job is complete."""
        ctx, batch = self._context()
        batch.clear()
        first = job.next
        seqs = 0
        room = batch.capacity if budget is None else min(budget, batch.capacity)
        while job.next < len(job.inputs) and seqs < EMBED_SEQUENCES:
            tokens = job.inputs[job.next]
            if len(tokens) > batch.room or (seqs and batch.n + len(tokens) > room):
                break
            batch.add_many(tokens, 0, seqs, logits_last=True, logits_all=True)
            job.prompt_tokens += len(tokens)
            job.next += 1
            seqs += 1
        memory = llama_cpp.llama_get_memory(ctx)
        llama_cpp.llama_memory_clear(memory, True)
        result = batch.decode(ctx)
        if result != 0:
            raise InvalidRequest(f"llama.cpp could not compute these embeddings (llama_decode returned {result}).")
        n_embd = self.model.n_embd
        for seq in range(seqs):
            pointer = llama_cpp.llama_get_embeddings_seq(ctx, seq)
            if not pointer:
                raise InvalidRequest("This model does not produce pooled embeddings.", "model")
            raw = np.ctypeslib.as_array(ctypes.cast(pointer, ctypes.POINTER(ctypes.c_float)), shape=(n_embd,))
            vector = raw.astype(np.float32)
            norm = float(np.linalg.norm(vector))
            if norm > 0:
                vector /= norm
            # float32 bytes in base64: one small message per input instead of one huge JSON line.
            encoded = base64.b64encode(vector.tobytes()).decode("ascii")
            send({"id": job.rid, "type": "vector", "index": first + seq, "b64": encoded})
        llama_cpp.llama_memory_clear(memory, True)
        self.embedded += seqs
        if job.next < len(job.inputs):
            return False
        send({"id": job.rid, "type": "result", "count": len(job.inputs), "prompt_tokens": job.prompt_tokens})
        return True
