"""Model stores of other tools, written in their real on-disk formats, for import tests.

Each builder writes what that tool writes when it pulls a model (sources: Ollama's ``manifest`` and
``server/images.go``; huggingface_hub's cache layout (``file_download.py``, "Manage the cache" guide); Docker
Model Runner's ``pkg/distribution/internal/store``; LM Studio's models folder layout) and returns the paths a
test compares against.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

OLLAMA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OLLAMA_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MODEL_CONFIG = "application/vnd.docker.ai.model.config.v0.1+json"
GGUF = "application/vnd.docker.ai.gguf.v3"
CHATML_GO_TEMPLATE = (
    "{{ if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    "{{ if .Prompt }}<|im_start|>user\n{{ .Prompt }}<|im_end|>\n{{ end }}"
    "<|im_start|>assistant\n{{ .Response }}<|im_end|>\n"
)


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return "sha256:" + digest.hexdigest()


def ollama_store(
    models: Path,
    name: str,
    tag: str,
    gguf: Path,
    *,
    registry: str = "registry.ollama.ai",
    namespace: str = "library",
    template: str | None = CHATML_GO_TEMPLATE,
    params: Mapping[str, Any] | None = None,
    projector: Path | None = None,
    license_text: str | None = "MIT",
) -> dict[str, Path]:
    """``$OLLAMA_MODELS``: ``blobs/sha256-<hex>`` and ``manifests/<registry>/<namespace>/<name>/<tag>``."""
    blobs = models / "blobs"
    blobs.mkdir(parents=True, exist_ok=True)

    def layer(media_type: str, data: bytes | None = None, path: Path | None = None) -> dict[str, Any]:
        digest = _sha(data) if data is not None else _file_sha(path)  # type: ignore[arg-type]
        target = blobs / digest.replace(":", "-")
        if data is not None:
            target.write_bytes(data)
        elif not target.exists():
            shutil.copyfile(path, target)  # type: ignore[arg-type]  # what `ollama pull` leaves on disk
        return {"mediaType": media_type, "digest": digest, "size": target.stat().st_size}

    layers = [layer("application/vnd.ollama.image.model", path=gguf)]
    if projector is not None:
        layers.append(layer("application/vnd.ollama.image.projector", path=projector))
    if template is not None:
        layers.append(layer("application/vnd.ollama.image.template", template.encode()))
    if license_text is not None:
        layers.append(layer("application/vnd.ollama.image.license", license_text.encode()))
    if params is not None:
        layers.append(layer("application/vnd.ollama.image.params", json.dumps(dict(params)).encode()))
    config = {
        "model_format": "gguf",
        "model_family": "llama",
        "model_families": ["llama"],
        "model_type": "1M",
        "file_type": "F16",
        "architecture": "amd64",
        "os": "linux",
        "rootfs": {"type": "layers", "diff_ids": [entry["digest"] for entry in layers]},
    }
    config_layer = layer(OLLAMA_CONFIG, json.dumps(config).encode())
    manifest = {"schemaVersion": 2, "mediaType": OLLAMA_MANIFEST, "config": config_layer, "layers": layers}
    path = models / "manifests" / registry / namespace / name / tag
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))
    return {"manifest": path, "model": blobs / layers[0]["digest"].replace(":", "-")}


def hf_cache(cache: Path, repo_id: str, files: Mapping[str, Path], commit: str = "a" * 40) -> dict[str, Path]:
    """``$HF_HUB_CACHE/models--ORG--REPO``: ``blobs/<sha256>``, ``snapshots/<commit>/<file>`` → blob, ``refs/main``."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    snapshot = repo / "snapshots" / commit
    (repo / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot.mkdir(parents=True, exist_ok=True)
    (repo / "refs").mkdir(exist_ok=True)
    (repo / "refs" / "main").write_text(commit)
    blobs = {}
    for filename, source in files.items():
        blob = repo / "blobs" / _file_sha(source).removeprefix("sha256:")  # an LFS file's etag is its sha256
        if not blob.exists():
            shutil.copyfile(source, blob)
        link = snapshot / filename
        link.symlink_to(os.path.relpath(blob, link.parent))
        blobs[filename] = blob
    return blobs


def model_runner_store(root: Path, tag: str, ggufs: list[Path], config: Mapping[str, Any] | None = None) -> str:
    """Docker Model Runner's store (``layout.json``, ``models.json``, ``manifests/``, ``blobs/``); returns the id."""
    blobs = root / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)

    def put(path: Path | None = None, data: bytes | None = None) -> dict[str, Any]:
        digest = _file_sha(path) if path is not None else _sha(data or b"")
        target = blobs / digest.removeprefix("sha256:")
        if path is not None:
            shutil.copyfile(path, target)
        else:
            target.write_bytes(data or b"")
        return {"digest": digest, "size": target.stat().st_size}

    layers = [
        {"mediaType": GGUF, **put(path), "annotations": {"org.opencontainers.image.title": path.name}} for path in ggufs
    ]
    document = {
        "config": {
            "format": "gguf",
            "quantization": "F16",
            "parameters": "1M",
            "architecture": "llama",
            **(config or {}),
        },
        "descriptor": {"created": "2025-05-01T10:00:00.000000000Z"},
        "rootfs": {"type": "rootfs", "diff_ids": [entry["digest"] for entry in layers]},
    }
    config_layer = {"mediaType": MODEL_CONFIG, **put(data=json.dumps(document).encode())}
    manifest = json.dumps(
        {"schemaVersion": 2, "mediaType": OCI_MANIFEST, "config": config_layer, "layers": layers}
    ).encode()
    model_id = _sha(manifest)
    (root / "manifests" / "sha256").mkdir(parents=True, exist_ok=True)
    (root / "manifests" / "sha256" / model_id.removeprefix("sha256:")).write_bytes(manifest)
    (root / "layout.json").write_text(json.dumps({"version": "1.0.0"}))
    index_path = root / "models.json"
    index = json.loads(index_path.read_text()) if index_path.exists() else {"models": []}
    files = [entry["digest"] for entry in layers] + [config_layer["digest"]]
    index["models"].append({"id": model_id, "tags": [tag], "files": files})
    index_path.write_text(json.dumps(index, indent=2))
    return model_id


def lmstudio_folder(models: Path, publisher: str, repo: str, files: Mapping[str, Path]) -> Path:
    """``~/.lmstudio/models/<publisher>/<repo>/<file>.gguf``."""
    folder = models / publisher / repo
    folder.mkdir(parents=True, exist_ok=True)
    for filename, source in files.items():
        shutil.copyfile(source, folder / filename)
    return folder
