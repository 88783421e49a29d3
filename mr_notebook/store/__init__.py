"""The model store: references, blobs and manifests on disk, GGUF metadata, pullers."""

from mr_notebook.store.gguf_meta import GGUFInfo, format_bytes, format_parameters, read_gguf_info
from mr_notebook.store.refs import ModelRef, normalize, parse_ref
from mr_notebook.store.store import (
    CHAT_TEMPLATE_MEDIA_TYPE,
    GGUF_MEDIA_TYPE,
    ModelFile,
    ModelRecord,
    Removal,
    Store,
    sha256_file,
)

__all__ = [
    "CHAT_TEMPLATE_MEDIA_TYPE",
    "GGUF_MEDIA_TYPE",
    "GGUFInfo",
    "ModelFile",
    "ModelRecord",
    "ModelRef",
    "Removal",
    "Store",
    "format_bytes",
    "format_parameters",
    "normalize",
    "parse_ref",
    "read_gguf_info",
    "sha256_file",
]
