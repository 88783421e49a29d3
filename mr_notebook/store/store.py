"""The on-disk model store: content-addressed blobs, one manifest per model, one index of names.

Layout under the home folder::

    blobs/sha256/<hex>               model files, named by their sha256
    blobs/sha256/<hex>.incomplete    partial downloads (resumable)
    models/<id hex>.json             one manifest per model: files, config, per-model settings
    index.json                       {"tags": {"ai/tiny:latest": "sha256:<id>"}}
    links/<id hex>/                  split models: model-00001-of-0000N.gguf … linking to their blobs
    locks/                           filelock files (one per blob, one for the index)

Names never become paths: a name maps to a model id through the index, and ids and digests are hex, so no
name can address a file outside the store. Every write is atomic (temp file, fsync, rename) and a model
appears in the index only after its blobs are complete and verified.
"""

from __future__ import annotations

import builtins
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any

from mr_notebook.errors import LocalFileNotFound, ModelInUse, ModelNotFound, StoreError
from mr_notebook.settings import default_home
from mr_notebook.store import external, housekeeping
from mr_notebook.store.blobs import BlobStore
from mr_notebook.store.files import sha256_file, write_json_atomic
from mr_notebook.store.gguf_meta import read_gguf_info, split_parts
from mr_notebook.store.links import publish_links, remove_links
from mr_notebook.store.records import (
    CHAT_TEMPLATE_MEDIA_TYPE,
    GGUF_MEDIA_TYPE,
    LICENSE_MEDIA_TYPE,
    MMPROJ_MEDIA_TYPE,
    SETTING_KEYS,
    ModelFile,
    ModelRecord,
    Removal,
    config_from,
    hints_from,
)
from mr_notebook.store.refs import ModelRef, parse_ref

__all__ = [
    "CHAT_TEMPLATE_MEDIA_TYPE",
    "GGUF_MEDIA_TYPE",
    "LICENSE_MEDIA_TYPE",
    "MMPROJ_MEDIA_TYPE",
    "SETTING_KEYS",
    "ModelFile",
    "ModelRecord",
    "Removal",
    "Store",
    "sha256_file",
    "write_json_atomic",
]

_ID_PREFIX = re.compile(r"^(?:sha256:)?([0-9a-f]{12,64})$")


class Store(BlobStore):
    """A model store rooted at ``home``; safe to share between processes."""

    def __init__(self, home: str | os.PathLike[str] | None = None, *, lock_timeout: float | None = None) -> None:
        super().__init__(Path(home) if home is not None else default_home(), lock_timeout)
        self.models_dir = self.home / "models"
        self.links_dir = self.home / "links"
        self.index_path = self.home / "index.json"

    def __repr__(self) -> str:
        return f"Store({str(self.home)!r})"

    def ensure(self) -> None:
        """Create the folders (first write only; reading an empty store creates nothing)."""
        super().ensure()  # says what to do when the home is not writable
        self.models_dir.mkdir(exist_ok=True)

    # ---------------------------------------------------------------- index and manifests

    def _read_index(self) -> dict[str, str]:
        try:
            with open(self.index_path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"The store index {self.index_path} is unreadable ({exc}). Restore it or run `mr-notebook purge`."
            ) from exc
        tags = data.get("tags", {}) if isinstance(data, dict) else {}
        return {str(k): str(v) for k, v in tags.items()}

    def _manifest_path(self, model_id: str) -> Path:
        return self.models_dir / f"{self._hex(model_id)}.json"

    def _read_manifest(self, model_id: str, tags: list[str]) -> ModelRecord | None:
        try:
            with open(self._manifest_path(model_id), encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as exc:
            raise StoreError(
                f"The manifest of {model_id} is unreadable ({exc}); remove the model and pull it again."
            ) from exc
        return ModelRecord(
            id=data["id"],
            created=int(data.get("created", 0)),
            config=data.get("config", {}),
            files=[ModelFile(**f) for f in data.get("files", [])],
            source=data.get("source", ""),
            settings=data.get("settings", {}),
            hints=data.get("hints", {}),
            tags=sorted(tags),
        )

    def _write_manifest(self, record: ModelRecord) -> None:
        data = asdict(record)
        data.pop("tags")
        write_json_atomic(self._manifest_path(record.id), data)

    def _records(self, index: dict[str, str]) -> builtins.list[ModelRecord]:
        by_id: dict[str, list[str]] = {}
        for tag, model_id in index.items():
            by_id.setdefault(model_id, []).append(tag)
        records = [r for mid, tags in by_id.items() if (r := self._read_manifest(mid, tags)) is not None]
        return sorted(records, key=lambda r: (-r.created, r.name))

    def list(self) -> builtins.list[ModelRecord]:
        """All stored models, newest first."""
        return self._records(self._read_index())

    def _find(self, index: dict[str, str], text: str | ModelRef) -> tuple[str, ModelRecord]:
        """(the canonical name or id asked for, its record)."""
        raw = str(text).strip()
        ref = text if isinstance(text, ModelRef) else None
        if ref is None:
            id_match = _ID_PREFIX.match(raw)
            try:
                ref = parse_ref(raw)
            except ValueError:
                if id_match is None:
                    raise
        if ref is not None and ref.digest is not None:
            for record in self._records(index):
                if record.id == ref.digest or any(f.digest == ref.digest for f in record.files):
                    return str(ref), record
        elif ref is not None and str(ref) in index:
            name = str(ref)
            found = self._read_manifest(index[name], [t for t, i in index.items() if i == index[name]])
            if found is not None:
                return name, found
        id_match = _ID_PREFIX.match(raw)
        if id_match is not None:
            prefix = id_match.group(1)
            matches = [r for r in self._records(index) if r.id.removeprefix("sha256:").startswith(prefix)]
            if len(matches) == 1:
                return matches[0].id, matches[0]
        shown = str(ref) if ref is not None else raw
        raise ModelNotFound(
            f"Model {shown!r} is not in the store. Pull it with `mr-notebook pull {shown}` (in a notebook: "
            f"`%model pull {shown}`), or see the stored models with `mr-notebook list`."
        )

    def get(self, name: str | ModelRef) -> ModelRecord:
        """The stored model called ``name`` (a name, a digest reference or an id prefix)."""
        return self._find(self._read_index(), name)[1]

    def paths(self, record: ModelRecord, media_type: str = GGUF_MEDIA_TYPE) -> builtins.list[Path]:
        """Blob paths of a model's files of one media type, in manifest order (shard 1 first)."""
        return [self.blob_path(f.digest) for f in record.files if f.media_type == media_type]

    def model_file(self, record: ModelRecord) -> Path:
        """The path llama.cpp loads: a one-file model's blob; a split model's part 1 in ``links/<id hex>/``."""
        blobs = self.paths(record)
        if not blobs:
            raise StoreError(f"Model {record.name} has no GGUF file; pull or package it again.")
        for entry in record.files:  # files adopted from another tool: unchanged since they were verified?
            external.check(self, entry.digest, record.name)
        if len(blobs) == 1:
            return blobs[0]
        with self.index_lock():  # not while `rm` deletes the model, which would leave dangling links
            if self._read_manifest(record.id, []) is None:
                raise ModelNotFound(f"Model {record.name} was removed from the store; pull it again.")
            return publish_links(self.links_dir / self._hex(record.id), blobs, record.name)

    @contextmanager
    def _locked_index(self, orphans: builtins.list[str] | None = None) -> Iterator[dict[str, str]]:
        """Hold the index lock; the yielded dict is written back atomically when the block succeeds.

        Models whose ids the block puts in ``orphans`` are deleted only after the index is written, and only
        if no name points at them then: an error before that point leaves every model as it was.
        """
        with self.index_lock():
            index = self._read_index()
            before = dict(index)
            yield index
            if index != before:
                write_json_atomic(self.index_path, {"tags": dict(sorted(index.items()))})
            for orphan in dict.fromkeys(orphans or []):
                if orphan not in index.values():
                    self._delete_model(orphan, index)

    def create_model(
        self,
        names: Sequence[str | ModelRef],
        files: Sequence[ModelFile],
        *,
        config: dict[str, Any] | None = None,
        source: str = "",
        model_id: str | None = None,
        created: int | None = None,
    ) -> ModelRecord:
        """Publish a model whose blobs are already committed; ``names`` then point at it."""
        refs = [n if isinstance(n, ModelRef) else parse_ref(n) for n in names]
        gguf_paths = [self.blob_path(f.digest) for f in files if f.media_type == GGUF_MEDIA_TYPE]
        if not gguf_paths:
            raise StoreError("A model needs at least one GGUF file.")
        info = read_gguf_info(gguf_paths)
        if model_id is None:
            listing = json.dumps([[f.media_type, f.digest] for f in files])
            model_id = "sha256:" + hashlib.sha256(listing.encode()).hexdigest()
        record = ModelRecord(
            id=model_id,
            created=int(created if created is not None else time.time()),
            config=config_from(info, config or {}),
            files=list(files),
            source=source,
            hints=hints_from(info),
        )
        self.ensure()
        orphans: builtins.list[str] = []
        with self._locked_index(orphans) as index:
            missing = [f.digest for f in files if not self.has_blob(f.digest)]
            if missing:
                raise StoreError(f"Blob {missing[0]} vanished before the model was saved; pull or package it again.")
            old = self._read_manifest(model_id, [])
            if old is not None:  # same content under a new name: keep its settings and age
                record.settings, record.created = old.settings, old.created
            self._write_manifest(record)
            orphans.extend(sorted({index[str(r)] for r in refs if str(r) in index} - {model_id}))
            for ref in refs:
                index[str(ref)] = model_id
            record.tags = sorted(t for t, i in index.items() if i == model_id)
        return record

    def import_gguf(self, path: str | os.PathLike[str], name: str, *, link: bool = True) -> ModelRecord:
        """Add a local GGUF file as model ``name`` (``mr-notebook package --gguf PATH NAME``).

        For a split model give part 1 (``…-00001-of-0000N.gguf``): the other parts beside it come along.
        """
        src = Path(path).expanduser()
        ref = parse_ref(name)
        if not src.is_file():
            raise LocalFileNotFound(f"No file at {src}. Give the path of a .gguf model file.")
        parts = split_parts(src)
        read_gguf_info(parts)  # refuse non-GGUF and damaged files before hashing gigabytes
        with self.lease() as lease:
            entries = [self.add_blob_file(part, link=link, lease=lease) for part in parts]
            return self.create_model([ref], entries, source=f"file://{src.resolve()}")

    def tag(self, source: str, target: str) -> ModelRecord:
        """Give the model ``source`` the extra name ``target``."""
        new = parse_ref(target)
        orphans: builtins.list[str] = []
        with self._locked_index(orphans) as index:
            _, record = self._find(index, source)
            displaced = index.get(str(new))
            index[str(new)] = record.id
            if displaced is not None and displaced != record.id:
                orphans.append(displaced)
            record.tags = sorted(t for t, i in index.items() if i == record.id)
        return record

    def _plan_removal(
        self, index: dict[str, str], names: Iterable[str], force: bool
    ) -> tuple[builtins.list[str], builtins.list[ModelRecord]]:
        """(names to untag, models left with no name) for ``remove``; raises as ``remove`` would."""
        index = dict(index)
        untag: builtins.list[str] = []
        doomed: builtins.list[ModelRecord] = []
        for text in names:
            asked, record = self._find(index, text)
            if asked in index:
                gone = [asked]
            else:  # asked by id or digest: that means every name
                gone = sorted(t for t, i in index.items() if i == record.id)
                if len(gone) > 1 and not force:
                    raise ModelInUse(
                        f"Model {record.short_id} has several names ({', '.join(gone)}); "
                        "remove them by name, or use force (-f) to remove them all."
                    )
            for tag in gone:
                del index[tag]
            untag.extend(gone)
            if record.id not in index.values() and all(r.id != record.id for r in doomed):
                doomed.append(record)
        return untag, doomed

    def doomed(self, names: Iterable[str], *, force: bool = False) -> builtins.list[ModelRecord]:
        """The models ``remove(names)`` would delete (no name left), without changing anything."""
        return self._plan_removal(self._read_index(), names, force)[1]

    def remove(self, names: Iterable[str], *, force: bool = False) -> Removal:
        """Untag each name; a model with no name left is deleted with the blobs nothing else uses."""
        orphans: builtins.list[str] = []
        with self._locked_index(orphans) as index:
            untag, doomed = self._plan_removal(index, names, force)
            for tag in untag:
                del index[tag]
            orphans.extend(record.id for record in doomed)
        return Removal(untagged=untag, deleted=[record.id for record in doomed])

    def _delete_model(self, model_id: str, index: dict[str, str]) -> None:
        """Drop a manifest and the blobs no remaining manifest uses (caller holds the index lock)."""
        record = self._read_manifest(model_id, [])
        self._manifest_path(model_id).unlink(missing_ok=True)
        remove_links(self.links_dir / self._hex(model_id))
        if record is None:
            return
        still_used = {f.digest for r in self._records(index) for f in r.files} | self.leased()
        for entry in record.files:
            if entry.digest not in still_used:
                self.blob_path(entry.digest).unlink(missing_ok=True)  # an adopted file: only our name of it
                external.forget(self, entry.digest)

    def configure(self, name: str, **settings: Any) -> ModelRecord:
        """Persist per-model settings (``None`` clears one); they apply at the model's next load."""
        unknown = set(settings) - set(SETTING_KEYS)
        if unknown:
            raise StoreError(f"Unknown model setting(s) {sorted(unknown)}; known: {', '.join(SETTING_KEYS)}.")
        with self._locked_index() as index:
            _, record = self._find(index, name)
            for key, value in settings.items():
                if value is None:
                    record.settings.pop(key, None)
                else:
                    record.settings[key] = value
            self._write_manifest(record)
        return record

    # ---------------------------------------------------------------- housekeeping

    def prune(self) -> dict[str, int]:
        """Delete partial downloads nobody is writing, blobs no model or pull uses, and stray temp files."""
        return housekeeping.prune(self)

    def purge(self) -> dict[str, int]:
        """Delete every model, blob and partial download, except what pulls in flight are writing."""
        return housekeeping.purge(self)

    def df(self) -> dict[str, int]:
        """Bytes used by blobs, by partial downloads, in total; and the model count."""
        return housekeeping.df(self)
