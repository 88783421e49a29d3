"""Folders that show a split model's blobs under the names llama.cpp looks for.

llama.cpp loads a split model from its first file and opens the others by name
(``PREFIX-00002-of-00003.gguf`` …, its ``llama_split_path``), but blobs are named by their digest. A link
folder holds ``model-00001-of-0000N.gguf`` … pointing at the blobs: relative symlinks (the store folder
can move), hard links where symlinks are not allowed (Windows without developer mode).
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Sequence
from pathlib import Path

from mr_notebook.errors import StoreError
from mr_notebook.store.files import fsync_dir


def part_name(number: int, count: int) -> str:
    """llama.cpp's name of part ``number`` (1-based) of a ``count``-part model with the prefix ``model``."""
    return f"model-{number:05d}-of-{count:05d}.gguf"


def links_valid(folder: Path, blobs: Sequence[Path]) -> bool:
    """Whether ``folder`` holds exactly one working link per blob, in order."""
    try:
        names = sorted(p.name for p in folder.iterdir())
        expected = [part_name(i, len(blobs)) for i in range(1, len(blobs) + 1)]
        return names == expected and all(
            (folder / name).samefile(blob) for name, blob in zip(expected, blobs, strict=True)
        )
    except OSError:  # no folder, or a link whose blob is gone
        return False


def _link(blob: Path, link: Path) -> None:
    try:
        link.symlink_to(os.path.relpath(blob, link.parent))
    except (OSError, NotImplementedError):
        os.link(blob, link)  # symlinks not allowed here; blobs and links share the store's filesystem


def publish_links(folder: Path, blobs: Sequence[Path], model: str) -> Path:
    """Make ``folder`` the link folder of ``blobs`` (built beside it, then renamed in); return part 1's path."""
    first = folder / part_name(1, len(blobs))
    if links_valid(folder, blobs):
        return first
    for blob in blobs:
        if not blob.is_file():
            raise StoreError(
                f"Model {model} is missing its file {blob.name}; remove it (`mr-notebook rm {model}`) and pull "
                "or package it again."
            )
    parent = folder.parent
    tmp = parent / f".{folder.name}.{uuid.uuid4().hex}.tmp"
    try:
        parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        for number, blob in enumerate(blobs, 1):
            _link(blob, tmp / part_name(number, len(blobs)))
        if folder.exists():  # stale (a blob was replaced): move it aside, a rename cannot replace a full folder
            old = parent / f".{folder.name}.{uuid.uuid4().hex}.old"
            os.replace(folder, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, folder)
        fsync_dir(parent)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise StoreError(
            f"Could not link the parts of a split model under {parent}: {exc.strerror or exc}. "
            "Check the store's permissions and free space."
        ) from exc
    return first


def remove_links(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
