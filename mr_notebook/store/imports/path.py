"""A file or folder of GGUF files: ``import --from PATH``.

A file is one model (with the other parts of its split set beside it); a folder is searched two levels
deep, one model per quantization (or split set) per folder, with the folder's ``mmproj`` file. Names are
``local/<folder or file>:<QUANT>`` unless the caller gives one (only for a single model).
"""

from __future__ import annotations

from pathlib import Path

from mr_notebook.errors import LocalFileNotFound
from mr_notebook.store.gguf_meta import split_parts
from mr_notebook.store.imports.base import Found, FoundFile, group_ggufs, model_name, projectors, quant_of
from mr_notebook.store.imports.huggingface import model_tag
from mr_notebook.store.records import MMPROJ_MEDIA_TYPE
from mr_notebook.store.refs import parse_ref

_MAX_FOLDERS = 10_000


def find(path: Path) -> list[Found]:
    path = path.expanduser()
    if path.is_file():
        parts = split_parts(path)
        return [_found(path.parent, model_name(_stem(path.name)), parts)]
    if not path.is_dir():
        raise LocalFileNotFound(f"No file or folder at {path}. Give a .gguf file or a folder that holds some.")
    below = [p for pattern in ("*", "*/*") for p in sorted(path.glob(pattern)) if p.is_dir()]
    folders = [path, *below]
    found = []
    for folder in folders[:_MAX_FOLDERS]:
        for key, parts in group_ggufs(folder.glob("*.gguf")):
            stem = _stem(parts[0].name)
            found.append(_found(folder, model_name(stem if folder == path else f"{folder.name}"), parts, key))
    return found


def _stem(filename: str) -> str:
    stem = filename.removesuffix(".gguf")
    quant = quant_of(filename)
    if quant:
        index = stem.upper().rfind(quant)
        stem = stem[:index].rstrip("-._") or stem
    return stem.split("-00001-of-")[0]


def _found(folder: Path, repository: str, parts: list[Path], key: str = "") -> Found:
    tag = quant_of(parts[0].name) or model_tag(key or _stem(parts[0].name))
    files = [FoundFile(p, name=p.name) for p in parts]
    files += [FoundFile(p, MMPROJ_MEDIA_TYPE, name=p.name) for p in projectors(folder)[:1]]
    return Found("path", str(parse_ref(f"local/{repository}:{tag}")), folder, files)
