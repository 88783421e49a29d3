"""What a stored model is: its files (blobs by digest), Docker Model Runner's config, per-model settings."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from mr_notebook.digests import short_id
from mr_notebook.store.gguf_meta import GGUFInfo, format_bytes, format_parameters

GGUF_MEDIA_TYPE = "application/vnd.docker.ai.gguf.v3"
CHAT_TEMPLATE_MEDIA_TYPE = "application/vnd.docker.ai.chat.template.jinja"
LICENSE_MEDIA_TYPE = "application/vnd.docker.ai.license"
MMPROJ_MEDIA_TYPE = "application/vnd.docker.ai.mmproj"

#: Per-model settings a user may persist (applied at the next load).
SETTING_KEYS = ("context_size", "keep_alive", "gpu_layers", "threads", "parallel", "chat_template")


@dataclass(frozen=True)
class ModelFile:
    """One blob of a model: weights (possibly several shards), chat template, license…"""

    digest: str
    size: int
    media_type: str = GGUF_MEDIA_TYPE
    name: str = ""


@dataclass
class ModelRecord:
    """A stored model as ``list``/``inspect`` show it, plus where its files are."""

    id: str
    created: int
    config: dict[str, Any]
    files: list[ModelFile]
    source: str = ""
    settings: dict[str, Any] = field(default_factory=dict)
    hints: dict[str, Any] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)

    @property
    def short_id(self) -> str:
        return short_id(self.id)

    @property
    def size(self) -> int:
        return sum(f.size for f in self.files if f.media_type == GGUF_MEDIA_TYPE)

    @property
    def name(self) -> str:
        return self.tags[0] if self.tags else self.short_id

    def to_json(self) -> dict[str, Any]:
        """Docker Model Runner's shape (``docker model inspect``), plus our per-model settings."""
        return {
            "id": self.id,
            "tags": list(self.tags),
            "created": self.created,
            "config": self.config,
            "settings": dict(self.settings),
        }


@dataclass(frozen=True)
class Removal:
    """What ``rm`` did: names removed, models deleted (no name left); the service adds loaded models it ended."""

    untagged: list[str]
    deleted: list[str]
    unloaded: list[str] = field(default_factory=list)

    def to_json(self) -> list[dict[str, str]]:
        """Docker's answer: ``[{"Untagged": name}, …, {"Deleted": id}]``."""
        return [{"Untagged": name} for name in self.untagged] + [{"Deleted": mid} for mid in self.deleted]


def config_from(info: GGUFInfo, registry: dict[str, Any]) -> dict[str, Any]:
    """Docker Model Runner's config block: from the GGUF header, the registry's values winning."""
    config: dict[str, Any] = {
        "format": "gguf",
        "quantization": info.quantization,
        "parameters": format_parameters(info.parameters),
        "architecture": info.architecture,
        "size": format_bytes(info.size),
        "context_size": info.context_length or None,
        "gguf": info.metadata,
    }
    for key, value in registry.items():
        if value not in (None, "", {}):
            config[key] = value
    return config


def hints_from(info: GGUFInfo) -> dict[str, Any]:
    """What the engine needs to estimate memory before it loads anything."""
    return {
        "size_bytes": info.size,
        "parameters": info.parameters,
        "context_length": info.context_length,
        "n_layer": info.n_layer,
        "n_embd": info.n_embd,
        "n_head": info.n_head,
        "n_head_kv": info.n_head_kv,
        "n_vocab": info.n_vocab,
        "pooling": info.pooling,
        "has_chat_template": info.has_chat_template,
    }
