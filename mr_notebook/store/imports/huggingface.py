"""The Hugging Face hub cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``, else ``~/.cache/huggingface/hub``).

huggingface_hub's :func:`scan_cache_dir` reads it (``models--ORG--REPO/snapshots/<rev>/`` links into
``blobs/<etag>``; an LFS file's etag is its sha256). Each GGUF quantization (or split set) of a repository is
one model named ``hf.co/org/repo:QUANT``, as ``pull hf.co/org/repo:QUANT`` would name it; the repository's
``mmproj`` file comes along. A file cached at several revisions is taken from the one a ref (``main``)
points at, else the newest.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

from mr_notebook.store.imports.base import Found, FoundFile, group_ggufs, quant_of
from mr_notebook.store.records import MMPROJ_MEDIA_TYPE
from mr_notebook.store.refs import parse_ref

_SHA256 = re.compile(r"^[0-9a-f]{64}$")


def root(env: Mapping[str, str]) -> Path:
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    home = Path(env.get("HOME") or Path.home())
    cache = Path(env["XDG_CACHE_HOME"]) if env.get("XDG_CACHE_HOME") else home / ".cache"
    return cache / "huggingface" / "hub"


def find(env: Mapping[str, str]) -> list[Found]:
    from huggingface_hub import CacheNotFound, scan_cache_dir

    base = root(env)
    try:
        info = scan_cache_dir(base)
    except (CacheNotFound, OSError):
        return []
    found: list[Found] = []
    for repo in sorted(info.repos, key=lambda r: r.repo_id):
        if repo.repo_type != "model":
            continue
        # Files of every cached revision, each name from the newest revision that has it (a ref such as
        # "main" first): a quantization fetched at an older commit is still on disk and still usable.
        revisions = sorted(repo.revisions, key=lambda r: (bool(r.refs), r.last_modified), reverse=True)
        blobs: dict[Path, Path] = {}
        names: set[str] = set()
        for revision in revisions:
            for file in revision.files:
                relative = str(Path(file.file_path).relative_to(revision.snapshot_path))
                if relative not in names:
                    names.add(relative)
                    blobs[Path(file.file_path)] = Path(file.blob_path)
        projector = [p for p in blobs if p.name.lower().endswith(".gguf") and "mmproj" in p.name.lower()]
        for key, parts in group_ggufs(blobs):
            quant = quant_of(parts[0].name) or model_tag(key)
            try:
                name = str(parse_ref(f"hf.co/{repo.repo_id}:{quant}"))
            except ValueError:
                continue
            files = [FoundFile(p, claimed=_claimed(blobs[p]), name=p.name) for p in parts]
            files += [FoundFile(p, MMPROJ_MEDIA_TYPE, _claimed(blobs[p]), p.name) for p in projector[:1]]
            found.append(Found("huggingface", name, parts[0].parent, files))
    return found


def model_tag(key: str) -> str:
    """A tag for a file without a recognisable quantization: its name, as a valid tag."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", key)[:128].lstrip(".-") or "latest"


def _claimed(blob: Path) -> str | None:
    return f"sha256:{blob.name}" if _SHA256.match(blob.name) else None
