"""Models other tools already downloaded, added to the store without downloading or copying them.

``import_models(store, "ollama")`` finds the models of a source and adopts their files (:mod:`.adopt`: a hard
link on the same filesystem, else a verified, read-only reference that is re-checked before each load).
Sources, one module each: ``ollama``, ``huggingface`` (the hub cache), ``model-runner`` (Docker Model Runner's
store), ``lmstudio``, or a PATH to a GGUF file or folder. ``discover(env)`` lists what every source holds.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from mr_notebook.errors import ModelNotFound
from mr_notebook.store.imports import huggingface, lmstudio, model_runner, ollama
from mr_notebook.store.imports import path as path_source
from mr_notebook.store.imports.base import Found, FoundFile, Imported, import_found
from mr_notebook.store.store import Store

__all__ = ["SOURCES", "Found", "FoundFile", "Imported", "discover", "find", "import_models", "locations"]

Finder = Callable[[Mapping[str, str]], list[Found]]
SOURCES: dict[str, Finder] = {
    "ollama": ollama.find,
    "huggingface": huggingface.find,
    "model-runner": model_runner.find,
    "lmstudio": lmstudio.find,
}
_ALIASES = {"hf": "huggingface", "docker": "model-runner", "lm-studio": "lmstudio"}


def locations(env: Mapping[str, str] | None = None) -> dict[str, list[Path]]:
    """Where each source is looked for (shown when nothing is found)."""
    env = os.environ if env is None else env
    return {
        "ollama": [ollama.root(env)],
        "huggingface": [huggingface.root(env)],
        "model-runner": [model_runner.root(env)],
        "lmstudio": lmstudio.roots(env),
    }


def find(source: str, env: Mapping[str, str] | None = None) -> list[Found]:
    """The models of one source: a name from :data:`SOURCES` or a path."""
    env = os.environ if env is None else env
    key = _ALIASES.get(source.lower(), source.lower())
    if key in SOURCES:
        return SOURCES[key](env)
    return path_source.find(Path(source))


def discover(env: Mapping[str, str] | None = None) -> list[Found]:
    """Every model every known source holds."""
    env = os.environ if env is None else env
    return [model for finder in SOURCES.values() for model in finder(env)]


def import_models(
    store: Store,
    source: str,
    names: Sequence[str] = (),
    *,
    env: Mapping[str, str] | None = None,
    link: bool = True,
    name: str | None = None,
) -> list[Imported]:
    """Adopt the models of ``source`` (those called ``names``, or all); ``name`` renames a single one."""
    found = find(source, env)
    if names:
        chosen = [f for f in found if any(f.matches(n) for n in names)]
        missing = [n for n in names if not any(f.matches(n) for f in found)]
        if missing:
            known = ", ".join(f.name for f in found) or "none"
            raise ModelNotFound(f"{', '.join(missing)} not found in {source} (it holds: {known}).")
        found = chosen
    if name is not None:
        if len(found) != 1:
            raise ModelNotFound(f"--name needs exactly one model; {source} holds {len(found)}. Name the one to import.")
        found[0].name = str(name)
    return [import_found(store, model, link=link) for model in found]
