"""What every source finds (models as other tools stored them) and how a found model enters the store."""

from __future__ import annotations

import hashlib
import json
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mr_notebook.errors import InvalidModelFile, StoreError
from mr_notebook.store.gguf_header import read_header
from mr_notebook.store.imports.adopt import adopt
from mr_notebook.store.leases import Lease
from mr_notebook.store.records import (
    CHAT_TEMPLATE_MEDIA_TYPE,
    GGUF_MEDIA_TYPE,
    MMPROJ_MEDIA_TYPE,
    ModelFile,
    ModelRecord,
)
from mr_notebook.store.refs import parse_ref
from mr_notebook.store.store import Store

_SPLIT = re.compile(r"^(?P<base>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_QUANT = re.compile(r"(?:^|[-._/])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32|FP16)(?=[-._])", re.IGNORECASE)
_NAME_JUNK = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True)
class FoundFile:
    path: Path
    media_type: str = GGUF_MEDIA_TYPE
    claimed: str | None = None  # the sha256 its tool named it by (Ollama, Model Runner, the HF cache)
    name: str = ""


@dataclass
class Found:
    """One model another tool stored: what it would be called here, and where its files are."""

    source: str  # "ollama" | "huggingface" | "model-runner" | "lmstudio" | "path"
    name: str  # our canonical name, e.g. registry.ollama.ai/library/llama3.2:1b
    location: Path  # the tool's manifest or folder, for `import` listings
    files: list[FoundFile]
    aliases: list[str] = field(default_factory=list)  # other names the tool shows (llama3.2:1b), for selection
    config: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)
    chat_template: str | None = None  # translated to Jinja (written as a small blob of ours)
    model_id: str | None = None
    created: int | None = None
    notes: list[str] = field(default_factory=list)  # what did not translate

    @property
    def size(self) -> int:
        """Bytes of weights and projectors (what a copy would have cost)."""
        kinds = (GGUF_MEDIA_TYPE, MMPROJ_MEDIA_TYPE)
        return sum(f.path.stat().st_size for f in self.files if f.media_type in kinds and f.path.exists())

    def to_json(self) -> dict[str, Any]:
        """What ``import`` lists: source, name, where, the files and their total size, what did not translate."""
        return {
            "source": self.source,
            "name": self.name,
            "aliases": list(self.aliases),
            "location": str(self.location),
            "files": [str(f.path) for f in self.files],
            "size": self.size,
            "notes": list(self.notes),
        }

    def matches(self, wanted: str) -> bool:
        if wanted in (self.name, *self.aliases):
            return True
        try:
            return str(parse_ref(wanted)) == self.name
        except ValueError:
            return False


@dataclass(frozen=True)
class Imported:
    found: Found
    record: ModelRecord
    how: str  # "hard link" | "reference" | "already stored" (the weakest of its files)


def model_name(text: str) -> str:
    """A valid repository component from a folder or file name (lowercase, runs of other characters → -)."""
    return _NAME_JUNK.sub("-", text.lower()).strip("-._") or "model"


def quant_of(filename: str) -> str | None:
    found = _QUANT.findall(filename)
    return found[-1].upper() if found else None


def group_ggufs(paths: Iterable[Path]) -> list[tuple[str, list[Path]]]:
    """GGUF files by model, as (base name, files): a split set's parts together in order, each other file
    alone; no mmproj. Files of different folders never share a model."""
    groups: dict[tuple[Path, str], list[Path]] = {}
    for path in sorted(paths):
        if not path.name.lower().endswith(".gguf") or "mmproj" in path.name.lower():
            continue
        split = _SPLIT.match(path.name)
        base = split.group("base") if split else path.name.removesuffix(".gguf")
        groups.setdefault((path.parent, base), []).append(path)
    complete = []
    for (_, base), members in groups.items():
        split = _SPLIT.match(members[0].name)
        if split is None or len(members) == int(split.group("count")):
            complete.append((base, members))  # an incomplete split set (a download under way) is not a model yet
    return complete


def projectors(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("*.gguf") if "mmproj" in p.name.lower())


def small_json(path: Path, limit: int = 4 * 1024 * 1024) -> Any:
    """A JSON file another tool wrote, refused past ``limit`` bytes (never read a huge file into memory)."""
    with open(path, "rb") as handle:
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise ValueError(f"{path} is larger than {limit} bytes")
    return json.loads(data)


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as handle:
            return handle.read(4) == b"GGUF"
    except OSError:
        return False


def import_found(store: Store, found: Found, *, link: bool = True) -> Imported:
    """Put ``found`` in the store without copying its files; its name then points at it."""
    for item in found.files:
        if item.media_type == GGUF_MEDIA_TYPE:
            try:
                read_header(item.path.resolve())  # a damaged or non-GGUF file is refused before it is hashed
            except OSError as exc:
                raise InvalidModelFile(f"{item.path} cannot be read ({exc.strerror}); it was not imported.") from exc
    hows: list[str] = []
    with store.lease() as lease:
        files: list[ModelFile] = []
        for item in found.files:
            adopted = adopt(
                store,
                item.path,
                media_type=item.media_type,
                lease=lease,
                claimed=item.claimed,
                link=link,
                name=item.name,
            )
            files.append(adopted.file)
            hows.append(adopted.how)
        if found.chat_template:
            files.append(_template_blob(store, found.chat_template, lease))
        record = store.create_model(
            [found.name],
            files,
            config=found.config,
            source=f"{found.source}:{found.location}",
            model_id=found.model_id,
            created=found.created,
        )
    unset = {k: v for k, v in found.settings.items() if k not in record.settings}  # the user's own win
    if unset:
        record = store.configure(found.name, **unset)
    order = ("reference", "hard link", "already stored")
    return Imported(found, record, min(hows, key=order.index) if hows else "already stored")


def _template_blob(store: Store, template: str, lease: Lease) -> ModelFile:
    """The translated chat template, a small blob the store owns (the only bytes an import writes)."""
    data = template.encode("utf-8")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    lease.add([digest])
    with store.blob_lock(digest):
        if not store.has_blob(digest):
            partial = store.partial_path(digest)
            try:
                with open(partial, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
            except OSError as exc:
                partial.unlink(missing_ok=True)
                raise StoreError(f"Could not write a chat template into the store: {exc.strerror}.") from exc
            store.commit_partial(digest, digest)
    return ModelFile(digest=digest, size=len(data), media_type=CHAT_TEMPLATE_MEDIA_TYPE, name="template.jinja")
