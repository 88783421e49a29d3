"""Pull Docker Model Runner artifacts from OCI registries (Docker Hub by default).

Why a small client rather than oras-py: oras-py downloads a blob to a path of its choosing in one
request, with no Range resume into an existing partial file, no hashing while streaming (it re-reads the
file), no ``Retry-After`` handling and a requests-based auth flow. Everything a model pull needs here is a
few HTTP calls: the bearer-token challenge, a manifest (or index) GET, and blob GETs with ``Range``,
streamed into the store's ``.incomplete`` file (see :mod:`.common`). The HTTP side lives in
:mod:`.registry_api`; credentials and the plain-HTTP rule in :mod:`.credentials`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from mr_notebook.digests import short_id
from mr_notebook.errors import PullError, RemoteNotFound
from mr_notebook.store.pull.common import (
    PullResult,
    Reporter,
    fetch_blob,
    stored,
)
from mr_notebook.store.pull.credentials import HUB_HOST
from mr_notebook.store.pull.registry_api import RegistryClient
from mr_notebook.store.pull.sink import HashingWriter
from mr_notebook.store.refs import DOCKER_HUB, ModelRef
from mr_notebook.store.store import (
    CHAT_TEMPLATE_MEDIA_TYPE,
    GGUF_MEDIA_TYPE,
    LICENSE_MEDIA_TYPE,
    MMPROJ_MEDIA_TYPE,
    ModelFile,
    Store,
)

MODEL_CONFIG_TYPES = (
    "application/vnd.docker.ai.model.config.v0.1+json",
    "application/vnd.docker.ai.model.config.v0.2+json",
)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
FILE_TYPES = (GGUF_MEDIA_TYPE, CHAT_TEMPLATE_MEDIA_TYPE, LICENSE_MEDIA_TYPE, MMPROJ_MEDIA_TYPE)
_LABELS = {CHAT_TEMPLATE_MEDIA_TYPE: "chat template", LICENSE_MEDIA_TYPE: "license", MMPROJ_MEDIA_TYPE: "mmproj"}


def _host_of(ref: ModelRef) -> str:
    return HUB_HOST if ref.registry == DOCKER_HUB else ref.registry


def _pick_manifest(index: dict[str, Any]) -> str:
    manifests = [m for m in index.get("manifests", []) if isinstance(m, dict) and m.get("digest")]
    if not manifests:
        raise PullError("The image index lists no manifests.")
    for entry in manifests:
        if entry.get("artifactType") in MODEL_CONFIG_TYPES:
            return str(entry["digest"])
    return str(manifests[0]["digest"])


def created_of(config: dict[str, Any]) -> int | None:
    raw = (config.get("descriptor") or {}).get("created")
    if not isinstance(raw, str):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", raw.replace("Z", "+00:00"))
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return None


def pull_oci(store: Store, ref: ModelRef, reporter: Reporter, env: Mapping[str, str]) -> PullResult:
    """Pull ``ref`` from its registry into ``store``."""
    host = _host_of(ref)
    client = RegistryClient(host, ref.repository, env, reporter)
    try:
        return _pull(store, ref, client, reporter)
    finally:
        client.close()


def _pull(store: Store, ref: ModelRef, client: RegistryClient, reporter: Reporter) -> PullResult:
    name = str(ref)
    reporter.emit("resolving", f"Resolving {name}")
    accept = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
    try:
        manifest, digest, media_type = client.get_json(f"manifests/{ref.digest or ref.tag}", accept, ref.digest)
    except RemoteNotFound as exc:
        raise RemoteNotFound(
            f"Model {name} not found on {client.host}: unknown repository or tag. Check the name and tag ({exc})"
        ) from exc
    if media_type in INDEX_TYPES or "manifests" in manifest:
        chosen = _pick_manifest(manifest)
        manifest, digest, media_type = client.get_json(f"manifests/{chosen}", accept, chosen)

    layers = [layer for layer in manifest.get("layers", []) if isinstance(layer, dict)]
    config_desc = manifest.get("config") or {}
    if not any(layer.get("mediaType") == GGUF_MEDIA_TYPE for layer in layers):
        kinds = sorted({str(config_desc.get("mediaType"))} | {str(x.get("mediaType")) for x in layers})
        raise PullError(
            f"{name} is not a GGUF model (media types {', '.join(kinds)}). mr-notebook runs "
            f"models packaged by Docker Model Runner with {GGUF_MEDIA_TYPE} layers."
        )

    record = stored(store, ref)
    if record is not None and record.id == digest and all(store.has_blob(f.digest) for f in record.files):
        reporter.emit("done", f"{name} is up to date ({record.short_id})")
        return PullResult(record=record, downloaded=0, already_present=True)

    config: dict[str, Any] = {}
    if str(config_desc.get("mediaType")) in MODEL_CONFIG_TYPES and config_desc.get("digest"):
        config, _, _ = client.get_json(f"blobs/{config_desc['digest']}", "*/*", str(config_desc["digest"]))

    files = []
    for layer in layers:
        if layer.get("mediaType") not in FILE_TYPES:
            continue
        title = (layer.get("annotations") or {}).get("org.opencontainers.image.title", "")
        files.append(
            ModelFile(
                digest=str(layer["digest"]),
                size=int(layer.get("size", 0)),
                media_type=str(layer["mediaType"]),
                name=str(title),
            )
        )
    reporter.overall_total = sum(f.size for f in files)
    downloaded = 0
    raw = config.get("config")
    inner: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    # The lease keeps committed layers from prune/purge/rm until the manifest names them.
    with store.lease(f.digest for f in files):
        for entry in files:
            label = entry.name or _LABELS.get(entry.media_type) or short_id(entry.digest)

            def fetcher(writer: HashingWriter, digest: str = entry.digest, size: int = entry.size) -> None:
                client.fetch_to(digest, writer, size)

            downloaded += fetch_blob(store, entry.digest, entry.size, fetcher, reporter, label)
        record = store.create_model(
            [ref],
            files,
            config=inner,
            source=f"{client.base}/{ref.repository}@{digest}",
            model_id=digest,
            created=created_of(config),
        )
    reporter.emit("done", f"Pulled {name} ({record.short_id})")
    return PullResult(record=record, downloaded=downloaded, already_present=False)
