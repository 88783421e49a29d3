"""The engine: models run on demand in worker processes, shared, with keep-alive and a memory budget.

Importing this package never imports llama_cpp; only the worker processes do.
"""

from mr_notebook.engine.params import GenerationParams
from mr_notebook.engine.results import (
    Chunk,
    Completion,
    EmbeddingResult,
    ModelStatus,
    Usage,
    collect,
    collect_choices,
)
from mr_notebook.engine.runner import Runner
from mr_notebook.engine.sync import SyncRunner

__all__ = [
    "Chunk",
    "Completion",
    "EmbeddingResult",
    "GenerationParams",
    "ModelStatus",
    "Runner",
    "SyncRunner",
    "Usage",
    "collect",
    "collect_choices",
]
