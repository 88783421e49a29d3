"""Test helpers: tiny deterministic GGUF models (see :mod:`.tiny_model`)."""

from mr_notebook.testing.tiny_model import (
    CHATML_TEMPLATE,
    DEFAULT_REPLY,
    EMBEDDING_LENGTH,
    MAX_REPLY_PIECES,
    POOLING_TYPES,
    TinyModelFactory,
    build_tiny_model,
    reply_pieces,
)

__all__ = [
    "CHATML_TEMPLATE",
    "DEFAULT_REPLY",
    "EMBEDDING_LENGTH",
    "MAX_REPLY_PIECES",
    "POOLING_TYPES",
    "TinyModelFactory",
    "build_tiny_model",
    "reply_pieces",
]
