"""How much memory a model needs before it is loaded, and how much the budget allows."""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import psutil

from mr_notebook.settings import DEFAULT_CONTEXT_CAP, DEFAULT_MEMORY_FRACTION, EngineSettings
from mr_notebook.store import format_bytes

#: Python, llama_cpp and its libraries in a worker, before any model.
PROCESS_OVERHEAD = 48 * 1024 * 1024
#: llama.cpp evaluates prompts in batches of this many tokens (llama-cpp-python's default n_batch).
BATCH = 512


@dataclass(frozen=True)
class Estimate:
    """A model's expected resident memory, by part."""

    weights: int
    kv_cache: int
    compute: int

    @property
    def total(self) -> int:
        return self.weights + self.kv_cache + self.compute

    def describe(self) -> str:
        return (
            f"{format_bytes(self.total)} (weights {format_bytes(self.weights)} + KV cache "
            f"{format_bytes(self.kv_cache)} + compute {format_bytes(self.compute)})"
        )


def context_size(settings: dict[str, Any], hints: dict[str, Any]) -> int:
    """The model's ``context_size`` setting, else the smaller of its trained context and 4096."""
    configured = settings.get("context_size")
    if configured:
        return int(configured)
    trained = int(hints.get("context_length") or 0)
    return min(trained, DEFAULT_CONTEXT_CAP) if trained > 0 else DEFAULT_CONTEXT_CAP


def default_threads() -> int:
    """Physical cores this process may run on (as llama-server and Ollama choose), at least 1.

    llama-cpp-python's default (half the logical CPUs) leaves cores idle on machines without SMT; more
    threads than physical cores make decoding slower (two threads fight over one core's vector units).
    """
    physical = psutil.cpu_count(logical=False) or psutil.cpu_count() or 1
    try:
        allowed = len(os.sched_getaffinity(0))
    except AttributeError:  # macOS, Windows: no affinity mask to respect
        allowed = physical
    return max(1, min(physical, allowed))


def estimate(hints: dict[str, Any], n_ctx: int, parallel: int = 1) -> Estimate:
    """Weights (file size) + f16 KV cache + compute buffers, from GGUF metadata.

    Each of the ``parallel`` sequences has a KV cache of ``n_ctx`` cells (any of them may hold a conversation
    as long as the context) and a row of logits in the output buffer.
    """
    n_layer = int(hints.get("n_layer") or 0)
    n_embd = int(hints.get("n_embd") or 0)
    n_head = int(hints.get("n_head") or 1)
    n_head_kv = int(hints.get("n_head_kv") or n_head)
    n_vocab = int(hints.get("n_vocab") or 0)
    kv = 2 * n_layer * n_ctx * n_head_kv * (n_embd // max(n_head, 1)) * 2 * max(parallel, 1)
    # Logits for one batch plus activations, roughly what llama.cpp's compute buffer reserves.
    compute = BATCH * (n_vocab + 8 * n_embd) * 4 + parallel * n_vocab * 4 + PROCESS_OVERHEAD
    return Estimate(weights=int(hints.get("size_bytes") or 0), kv_cache=kv, compute=compute)


def available(settings: EngineSettings, loaded: int) -> int:
    """Bytes a new model may use: the fixed budget minus loaded models, else a fraction of free memory."""
    if settings.memory_budget is not None:
        return max(settings.memory_budget - loaded, 0)
    # Loaded models are already absent from psutil's figure, so nothing is subtracted here.
    return int(psutil.virtual_memory().available * DEFAULT_MEMORY_FRACTION)


def rss(pid: int) -> int:
    """Resident memory of a process, 0 if it is gone."""
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return 0
