"""Model metadata read from GGUF headers (tensor data and token lists are never loaded)."""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mr_notebook.errors import InvalidModelFile, LocalFileNotFound
from mr_notebook.store.gguf_header import GGUF_MAGIC, ArrayInfo, GGUFHeader, read_header

__all__ = ["GGUF_MAGIC", "GGUFInfo", "format_bytes", "format_parameters", "read_gguf_info", "split_parts"]

# Keys copied into the manifest's ``gguf`` map: scalars only (token lists would make it megabytes).
_SKIP_PREFIXES = ("tokenizer.ggml.", "tokenizer.chat_template")


@dataclass(frozen=True)
class GGUFInfo:
    """What ``list``/``inspect`` show and what the engine needs to estimate memory."""

    architecture: str
    parameters: int
    quantization: str
    context_length: int
    has_chat_template: bool
    size: int
    n_layer: int = 0
    n_embd: int = 0
    n_head: int = 0
    n_head_kv: int = 0
    n_vocab: int = 0
    pooling: int | None = None
    metadata: dict[str, Any] = field(default_factory=dict)


def format_parameters(count: int) -> str:
    """135_000_000 → ``"135M"``; 1_235_814_400 → ``"1.24B"``."""
    if count >= 1_000_000_000:
        return f"{count / 1e9:.2f}B"
    if count >= 10_000_000:
        return f"{count / 1e6:.0f}M"
    if count >= 1_000_000:
        return f"{count / 1e6:.2f}M"
    return f"{count / 1e3:.1f}K"


def format_bytes(size: int) -> str:
    """1536 → ``"1.50 KiB"`` (binary units, like ``docker model list``)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.2f} {unit}"
        value /= 1024
    return f"{size} B"  # unreachable; keeps mypy content


def _quant_name(file_type: int | None, tensor_types: Counter[str]) -> str:
    import gguf

    if file_type is not None:
        try:
            name = gguf.LlamaFileType(file_type).name
        except ValueError:
            name = ""
        if name and name != "GUESSED":
            return name.removeprefix("MOSTLY_").removeprefix("ALL_")
    return tensor_types.most_common(1)[0][0] if tensor_types else "unknown"


def _open(path: Path) -> GGUFHeader:
    try:
        return read_header(path)
    except OSError as exc:
        raise InvalidModelFile(f"{path} could not be read ({exc.strerror or exc}).") from exc


def _split_keys(header: GGUFHeader) -> tuple[int, int, int] | None:
    """(split.no, split.count, split.tensors.count) of a part of a split model; None for a one-file model."""
    import gguf

    def number(key: str, default: int) -> int:
        item = header.fields.get(key)
        return default if item is None else int(item)

    count = number(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, 0)
    if count <= 1:  # llama.cpp treats split.count 0 or 1 as a whole model
        return None
    return number(gguf.Keys.Split.LLM_KV_SPLIT_NO, -1), count, number(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, -1)


def split_parts(path: Path) -> list[Path]:
    """``[path]`` for a one-file model; for part 1 of a split model, every part in order (beside it).

    llama.cpp finds the other parts by name (``PREFIX-00002-of-00003.gguf`` …, its ``llama_split_path``),
    so the names given here are the ones it will look for.
    """
    keys = _split_keys(_open(path))
    if keys is None:
        return [path]
    number, count, _ = keys
    suffix = f"-{number + 1:05d}-of-{count:05d}.gguf"
    if number != 0:
        first = path.name.removesuffix(suffix) + f"-00001-of-{count:05d}.gguf" if path.name.endswith(suffix) else ""
        raise InvalidModelFile(
            f"{path} is part {number + 1} of a {count}-part split model; give the first part"
            + (f" ({first})." if first else ".")
        )
    if not path.name.endswith(suffix) or path.name == suffix:
        raise InvalidModelFile(
            f"{path} is part 1 of a {count}-part split model, but its name does not end with {suffix}: "
            f"llama.cpp finds the other parts by name, so keep the names PREFIX-00001-of-{count:05d}.gguf … "
            f"PREFIX-{count:05d}-of-{count:05d}.gguf."
        )
    prefix = path.name.removesuffix(suffix)
    parts = [path.with_name(f"{prefix}-{i:05d}-of-{count:05d}.gguf") for i in range(1, count + 1)]
    for index, part in enumerate(parts, 1):
        if not part.is_file():
            raise LocalFileNotFound(
                f"Part {index} of the {count}-part split model {path.name} is missing: no file at {part}. "
                "Put every part in one folder, with its original name."
            )
    return parts


def _check_parts(paths: Sequence[Path], keys: Sequence[tuple[int, int, int] | None], n_tensors: int) -> None:
    """Refuse files that llama.cpp could not load together as one model."""
    if keys[0] is None:
        if len(paths) > 1:
            raise InvalidModelFile(
                f"The model has {len(paths)} GGUF files but the first ({paths[0]}) is a whole model, not part 1 "
                "of a split model; llama.cpp would load only it. Package each file as its own model."
            )
        return
    count, total = keys[0][1], keys[0][2]
    if len(paths) != count:
        raise InvalidModelFile(
            f"{paths[0]} is part 1 of a {count}-part split model, but the model has {len(paths)} part(s). "
            "Pull or package it again with all its parts, in order."
        )
    for index, (path, key) in enumerate(zip(paths, keys, strict=True)):
        if key is None or key[:2] != (index, count):
            shown = "a whole model" if key is None else f"part {key[0] + 1} of {key[1]}"
            raise InvalidModelFile(
                f"{path} should be part {index + 1} of {count} of a split model, but its header says {shown}. "
                "Pull or package the model again with its parts in order."
            )
    if total >= 0 and total != n_tensors:
        raise InvalidModelFile(
            f"The split model {paths[0]} should hold {total} tensors but its {count} parts hold {n_tensors}; "
            "a part is damaged or belongs to another model."
        )


def read_gguf_info(paths: Sequence[Path]) -> GGUFInfo:
    """Read metadata from a GGUF file, or the parts of a split one (part 1 first): sizes and counts add up."""
    if not paths:
        raise InvalidModelFile("No GGUF file given.")
    parameters = 0
    size = 0
    n_tensors = 0
    tensor_types: Counter[str] = Counter()
    first: GGUFHeader | None = None
    keys: list[tuple[int, int, int] | None] = []
    for path in paths:
        reader = _open(path)
        keys.append(_split_keys(reader))
        n_tensors += len(reader.tensors)
        actual = path.stat().st_size
        for tensor in reader.tensors:
            end = tensor.offset + tensor.n_bytes
            if end > actual:
                raise InvalidModelFile(
                    f"{path} is truncated: tensor {tensor.name!r} ends at byte {end}, the file has {actual}. "
                    "Download or copy it again."
                )
            parameters += tensor.n_elements
            if len(tensor.shape) >= 2:
                tensor_types[tensor.type_name] += 1
        size += actual
        if first is None:
            first = reader
    if first is None:  # unreachable: paths is not empty; narrows the type
        raise InvalidModelFile("No GGUF file given.")
    _check_parts(paths, keys, n_tensors)

    def value(key: str) -> Any:
        item = first.fields.get(key)
        return None if isinstance(item, ArrayInfo) else item

    arch = str(value("general.architecture") or "unknown")
    metadata: dict[str, Any] = {}
    for key, content in first.fields.items():
        if key.startswith(_SKIP_PREFIXES) or isinstance(content, list | ArrayInfo):
            continue
        metadata[key] = str(content) if isinstance(content, float) and not math.isfinite(content) else content

    def int_value(key: str) -> int:
        raw = value(f"{arch}.{key}")
        if isinstance(raw, list):  # per-layer head counts in some architectures
            raw = max(raw) if raw else 0
        return int(raw or 0)

    tokens = first.fields.get("tokenizer.ggml.tokens")
    n_head = int_value("attention.head_count")
    pooling = value(f"{arch}.pooling_type")
    return GGUFInfo(
        architecture=arch,
        parameters=parameters,
        quantization=_quant_name(value("general.file_type"), tensor_types),
        context_length=int_value("context_length"),
        has_chat_template="tokenizer.chat_template" in first.fields,
        size=size,
        n_layer=int_value("block_count"),
        n_embd=int_value("embedding_length"),
        n_head=n_head,
        n_head_kv=int_value("attention.head_count_kv") or n_head,
        n_vocab=tokens.count if isinstance(tokens, ArrayInfo) else len(tokens or ()),
        pooling=None if pooling is None else int(pooling),
        metadata=metadata,
    )
