"""Lock files: the exact models (name → digest) a notebook used, and ``sync`` that brings exactly those back.

``mr-notebook.lock`` is JSON a person can read and diff::

    {"version": 1, "models": [{"name": "ai/smollm2:latest", "digest": "sha256:…", "source": "…"}]}

``sync`` pulls OCI models by digest (``name@sha256:…``, so the registry cannot hand over another file) and
names them as locked; a store that already holds a *different* model under a locked name is refused, never
silently used or replaced.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mr_notebook.digests import short_id
from mr_notebook.errors import LockError, ModelNotFound, MrNotebookError, PullError
from mr_notebook.store.refs import parse_ref

if TYPE_CHECKING:
    from mr_notebook.client import Engine

DEFAULT_LOCK = "mr-notebook.lock"
LOCK_VERSION = 1


@dataclass(frozen=True)
class LockedModel:
    name: str
    digest: str
    source: str = ""

    def to_json(self) -> dict[str, str]:
        return {"name": self.name, "digest": self.digest, "source": self.source}


def read_lock(path: str | os.PathLike[str]) -> list[LockedModel]:
    try:
        document = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise LockError(f"No lock file at {path}: write one with `%model lock` in the notebook.") from None
    except (OSError, ValueError) as exc:
        raise LockError(f"Cannot read the lock file {path}: {exc}. Restore it from version control.") from None
    rows = document.get("models") if isinstance(document, dict) else None
    if not isinstance(rows, list):
        raise LockError(f'{path} is not an mr-notebook lock file (no "models" list).')
    models = []
    for row in rows:
        if not (isinstance(row, dict) and isinstance(row.get("name"), str) and isinstance(row.get("digest"), str)):
            raise LockError(f'{path}: every model needs a "name" and a "digest"; found {row!r:.100}.')
        parse_ref(row["name"])  # an InvalidReference names the problem
        if not row["digest"].startswith("sha256:"):
            raise LockError(f"{path}: {row['name']}'s digest must be sha256:…, not {row['digest']!r:.80}.")
        models.append(LockedModel(row["name"], row["digest"], str(row.get("source") or "")))
    return models


def _source(engine: Engine, name: str, digest: str) -> str:
    store = getattr(engine, "store", None)  # the in-kernel engine knows where a model came from
    if store is not None:
        try:
            return str(store.get(name).source or "")
        except (MrNotebookError, ValueError):
            pass
    return f"{parse_ref(name).name}@{digest}"


def write_lock(path: str | os.PathLike[str], engine: Engine, used: Mapping[str, str]) -> list[LockedModel]:
    """Write (or update) the lock file with the models in ``used`` (name → digest); returns its models."""
    if not used:
        raise LockError("This kernel has not used a model yet: chat with one (or map over data), then lock.")
    target = Path(path)
    existing = {m.name: m for m in read_lock(target)} if target.exists() else {}
    for name, digest in used.items():
        canonical = str(parse_ref(name))
        existing[canonical] = LockedModel(canonical, digest, _source(engine, canonical, digest))
    models = sorted(existing.values(), key=lambda m: m.name)
    document = {"version": LOCK_VERSION, "models": [m.to_json() for m in models]}
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=".tmp-", suffix=".lock")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(document, handle, indent=2)
            handle.write("\n")
        os.replace(temporary, target)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
    return models


def _stored_digest(engine: Engine, name: str) -> str | None:
    try:
        return str(engine.inspect(name).get("id") or "")
    except ModelNotFound:
        return None


def sync(
    path: str | os.PathLike[str], engine: Engine, say: Callable[[str], None] = lambda _: None, progress: Any = None
) -> list[LockedModel]:
    """Bring the store to exactly the lock file's models; refuses a different model under a locked name."""
    models = read_lock(path)
    have = {m.name: _stored_digest(engine, m.name) for m in models}
    conflicts = [m for m in models if have[m.name] not in (None, m.digest)]
    if conflicts:
        lines = "; ".join(f"{m.name} is {have[m.name]} here, the lock says {m.digest}" for m in conflicts)
        raise LockError(
            f"The store holds other models under locked names ({lines}). Nothing was changed. Remove or rename "
            f"them (`%model rm NAME`, `%model tag`) and sync again, or re-lock if the new models are intended."
        )
    for model in models:
        if have[model.name] == model.digest:
            say(f"{model.name} is up to date ({short_id(model.digest)}).")
            continue
        ref = parse_ref(model.name)
        if model.source.startswith("file:"):
            raise LockError(
                f"{model.name} was packaged from a local file ({model.source}), so it cannot be pulled: package "
                f"that file again (`%model package --gguf PATH {model.name}`); its digest must be {model.digest}."
            )
        if ref.is_huggingface:
            _sync_by_name(engine, model, progress)
        else:
            pinned = f"{ref.name}@{model.digest}"
            engine.pull(pinned, progress)
            engine.tag(pinned, model.name)
            engine.rm([pinned])  # untags only: the locked name keeps the model
        say(f"{model.name} pulled at {short_id(model.digest)}.")
    return models


def _sync_by_name(engine: Engine, model: LockedModel, progress: Any) -> None:
    """Hugging Face has no pull by digest: pull the name, then keep it only if it is the locked file."""
    engine.pull(model.name, progress)
    got = _stored_digest(engine, model.name)
    if got != model.digest:
        engine.rm([model.name], force=True)
        raise PullError(
            f"{model.name} now resolves to {got}, not the locked {model.digest}: the repository changed. "
            "It was removed again; pin another revision or re-lock on purpose."
        )
