"""Writing GGUF files for tests: one file, or a llama.cpp split model (``gguf-split``'s layout), atomically.

A split model is N files named ``{stem}-00001-of-0000N.gguf`` … (llama.cpp's ``llama_split_path``). Every
file carries ``split.no``, ``split.count`` and ``split.tensors.count``; the first one also holds all the
metadata and the tokenizer, the others only tensors, exactly as ``gguf-split --split`` writes them.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import gguf

__all__ = ["split_path", "write_gguf"]


def split_path(path: str | os.PathLike[str], number: int, count: int) -> Path:
    """File ``number`` (1-based) of a ``count``-way split of ``path``: ``stem-0000i-of-0000N.gguf``."""
    target = Path(path)
    return target.with_name(f"{target.stem}-{number:05d}-of-{count:05d}.gguf")


def _chunks(names: list[str], count: int) -> list[list[str]]:
    """``names`` cut into ``count`` contiguous runs whose lengths differ by at most one."""
    base, extra = divmod(len(names), count)
    out: list[list[str]] = []
    start = 0
    for index in range(count):
        end = start + base + (1 if index < extra else 0)
        out.append(names[start:end])
        start = end
    return out


def _write_one(
    target: Path,
    arch: str,
    tensors: Mapping[str, Any],
    populate: Callable[[gguf.GGUFWriter], None] | None,
    split: tuple[int, int, int] | None,
) -> None:
    writer = gguf.GGUFWriter(target, arch)
    if populate is None:
        # gguf-split's later files hold no metadata but the split keys; GGUFWriter always adds the
        # architecture, so drop it to match.
        writer.kv_data[0].pop(gguf.Keys.General.ARCHITECTURE, None)
    else:
        populate(writer)
    if split is not None:
        number, count, total = split
        writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_NO, number)
        writer.add_uint16(gguf.Keys.Split.LLM_KV_SPLIT_COUNT, count)
        writer.add_int32(gguf.Keys.Split.LLM_KV_SPLIT_TENSORS_COUNT, total)
    for name, value in tensors.items():
        if isinstance(value, tuple):  # (bytes of a quantized tensor, its GGMLQuantizationType)
            writer.add_tensor(name, value[0], raw_dtype=value[1])
        else:
            writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def write_gguf(
    path: str | os.PathLike[str],
    arch: str,
    populate: Callable[[gguf.GGUFWriter], None],
    tensors: Mapping[str, Any],
    *,
    splits: int = 1,
) -> list[Path]:
    """Write ``tensors`` with the metadata ``populate`` adds, as one file or ``splits`` files; return them.

    All files are written to temporary names first and renamed into place only when every one is
    complete, so a reader never sees half a model.

    Raises:
        ValueError: if ``splits`` is below 1 or above the number of tensors.
    """
    if splits < 1 or splits > len(tensors):
        raise ValueError(f"splits must be between 1 and {len(tensors)} (the number of tensors), not {splits}")
    target = Path(path)
    targets = [target] if splits == 1 else [split_path(target, i, splits) for i in range(1, splits + 1)]
    groups = _chunks(list(tensors), splits)
    temps: list[Path] = []
    try:
        for number, (final, names) in enumerate(zip(targets, groups, strict=True)):
            fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
            os.close(fd)
            temps.append(Path(tmp_name))
            _write_one(
                temps[-1],
                arch,
                {name: tensors[name] for name in names},
                populate if number == 0 else None,
                None if splits == 1 else (number, splits, len(tensors)),
            )
        for tmp, final in zip(temps, targets, strict=True):
            tmp.replace(final)
    except BaseException:
        for tmp in temps:
            tmp.unlink(missing_ok=True)
        raise
    return targets
