"""Ollama's store: ``$OLLAMA_MODELS`` or ``~/.ollama/models``.

``manifests/<registry>/<namespace>/<model>/<tag>`` are Docker v2 manifests whose layers are files under
``blobs/sha256-<hex>`` (Ollama's ``manifest.BlobsPath``). The weights are the
``application/vnd.ollama.image.model`` layer (a GGUF file); ``…projector`` layers are multimodal projectors
(mmproj); ``…params`` is JSON of Modelfile parameters; ``…template`` is a Go template; ``…license`` text.

A model is named by its manifest path, which is Ollama's own full name: ``registry.ollama.ai/library/
llama3.2:1b`` (``ollama list`` shows ``llama3.2:1b``, accepted too), ``hf.co/org/repo:Q4_K_M`` for models Ollama
pulled from Hugging Face (the name a pull of ours would give).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mr_notebook.store.imports.base import Found, FoundFile, is_gguf, small_json
from mr_notebook.store.imports.gotemplate import translate
from mr_notebook.store.records import LICENSE_MEDIA_TYPE, MMPROJ_MEDIA_TYPE
from mr_notebook.store.refs import parse_ref

MODEL = "application/vnd.ollama.image.model"
PROJECTOR = "application/vnd.ollama.image.projector"
PARAMS = "application/vnd.ollama.image.params"
TEMPLATE = "application/vnd.ollama.image.template"
LICENSE = "application/vnd.ollama.image.license"
SYSTEM = "application/vnd.ollama.image.system"
DEFAULT_REGISTRY = "registry.ollama.ai"
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_MAX_SMALL = 1024 * 1024  # manifests, params, templates: never read a huge file into memory
#: Modelfile parameters that are per-model settings here (the others are kept in the config, for reference).
SETTINGS = {"num_ctx": "context_size", "num_gpu": "gpu_layers", "num_thread": "threads"}


def root(env: Mapping[str, str]) -> Path:
    if env.get("OLLAMA_MODELS"):
        return Path(env["OLLAMA_MODELS"]).expanduser()
    return Path(env.get("HOME") or Path.home()) / ".ollama" / "models"


def _short_name(registry: str, namespace: str, model: str, tag: str) -> str:
    if registry == DEFAULT_REGISTRY:
        return f"{model}:{tag}" if namespace == "library" else f"{namespace}/{model}:{tag}"
    return f"{registry}/{namespace}/{model}:{tag}"


def find(env: Mapping[str, str]) -> list[Found]:
    base = root(env)
    manifests = base / "manifests"
    if not manifests.is_dir():
        return []
    found = []
    for path in sorted(manifests.glob("*/*/*/*")):
        if path.is_file() and not path.name.startswith("."):
            model = _read(base, path)
            if model is not None:
                found.append(model)
    return found


def _read(base: Path, path: Path) -> Found | None:
    registry, namespace, model, tag = path.relative_to(base / "manifests").parts
    try:
        manifest = small_json(path, _MAX_SMALL)
        name = str(parse_ref(f"{registry}/{namespace}/{model}:{tag}"))
    except (OSError, ValueError):
        return None  # not a manifest, or a name we cannot represent: not a model to offer
    layers = [layer for layer in manifest.get("layers", []) if isinstance(layer, dict)]

    def blob(layer: dict[str, Any]) -> Path | None:
        digest = str(layer.get("digest", ""))
        return base / "blobs" / digest.replace(":", "-") if _DIGEST.match(digest) else None

    found = Found("ollama", name, path, [], aliases=[_short_name(registry, namespace, model, tag)], model_id=None)
    for layer in layers:
        kind, file = layer.get("mediaType"), blob(layer)
        if file is None or not file.is_file():
            continue
        claimed = str(layer["digest"])
        if kind == MODEL and is_gguf(file):
            found.files.append(FoundFile(file, claimed=claimed, name=f"{model}-{tag}.gguf"))
        elif kind == PROJECTOR and is_gguf(file):
            found.files.append(FoundFile(file, MMPROJ_MEDIA_TYPE, claimed, "mmproj.gguf"))
        elif kind == LICENSE:
            found.files.append(FoundFile(file, LICENSE_MEDIA_TYPE, claimed, "LICENSE"))
        elif kind == PARAMS:
            _parameters(found, file)
        elif kind == TEMPLATE:
            _template(found, file)
        elif kind == SYSTEM:
            found.notes.append("its system prompt (a SYSTEM line) is not applied: pass it with --system")
    if not any(f.media_type != MMPROJ_MEDIA_TYPE and f.media_type != LICENSE_MEDIA_TYPE for f in found.files):
        return None  # no GGUF weights (a safetensors or cloud model): nothing llama.cpp can load
    return found


def _parameters(found: Found, file: Path) -> None:
    try:
        params = small_json(file, _MAX_SMALL)
    except (OSError, ValueError):
        found.notes.append("its parameters layer is unreadable")
        return
    if not isinstance(params, dict):
        return
    kept: dict[str, Any] = {}
    for key, value in params.items():
        setting = SETTINGS.get(key)
        # num_gpu 0 means CPU only; the others must be positive (-1 or 0 there mean "automatic").
        least = 0 if key == "num_gpu" else 1
        if setting is not None and isinstance(value, int) and not isinstance(value, bool) and value >= least:
            found.settings[setting] = value
        else:
            kept[key] = value
    if kept:
        # Sampling defaults (temperature, stop …) have no per-model setting here: kept for `inspect`.
        found.config["ollama_parameters"] = kept


def _template(found: Found, file: Path) -> None:
    try:
        with open(file, "rb") as handle:
            text = handle.read(_MAX_SMALL).decode("utf-8")
    except (OSError, UnicodeDecodeError):
        found.notes.append("its template layer is unreadable")
        return
    jinja = translate(text)
    if jinja is None:
        found.notes.append("its Go template does not translate to Jinja: the GGUF file's own chat template is used")
    else:
        found.chat_template = jinja
