"""LM Studio's models folder: ``~/.lmstudio/models`` (LM Studio 0.3) or ``~/.cache/lm-studio/models`` (older).

Files sit at ``<publisher>/<repo>/<file>.gguf``: the Hugging Face repository LM Studio downloaded them from
(``lmstudio-community/Qwen2.5-0.5B-Instruct-GGUF``), so each quantization is named ``hf.co/publisher/repo:QUANT``
like a pull of that repository, and a later pull of it finds the file already stored. Split sets and the
folder's ``mmproj`` file come along. LM Studio records no digest: files are hashed on import.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from mr_notebook.store.imports.base import Found, FoundFile, group_ggufs, projectors, quant_of
from mr_notebook.store.imports.huggingface import model_tag
from mr_notebook.store.records import MMPROJ_MEDIA_TYPE
from mr_notebook.store.refs import parse_ref


def roots(env: Mapping[str, str]) -> list[Path]:
    home = Path(env.get("HOME") or Path.home())
    return [home / ".lmstudio" / "models", home / ".cache" / "lm-studio" / "models"]


def find(env: Mapping[str, str]) -> list[Found]:
    found: list[Found] = []
    seen: set[str] = set()
    for base in roots(env):
        if not base.is_dir():
            continue
        for folder in sorted(p for p in base.glob("*/*") if p.is_dir()):
            publisher, repo = folder.relative_to(base).parts
            projector = projectors(folder)[:1]
            for key, parts in group_ggufs(folder.glob("*.gguf")):
                quant = quant_of(parts[0].name) or model_tag(key)
                try:
                    name = str(parse_ref(f"hf.co/{publisher}/{repo}:{quant}"))
                except ValueError:
                    continue
                if name in seen:  # the same model in both folders: the newer layout wins
                    continue
                seen.add(name)
                files = [FoundFile(p, name=p.name) for p in parts]
                files += [FoundFile(p, MMPROJ_MEDIA_TYPE, name=p.name) for p in projector]
                found.append(Found("lmstudio", name, folder, files, aliases=[f"{publisher}/{repo}"]))
    return found
