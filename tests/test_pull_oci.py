"""Pulling Docker Model Runner artifacts from a real local registry (Debian's docker-registry)."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tqdm import tqdm

from mr_notebook.errors import (
    AuthenticationRequired,
    Cancelled,
    DigestMismatch,
    OfflineError,
    PullError,
    StoreError,
)
from mr_notebook.store import CHAT_TEMPLATE_MEDIA_TYPE, Store
from mr_notebook.store.pull import PullProgress, RemoteNotFound, pull
from mr_notebook.testing import TinyModelFactory
from mr_notebook.testing.pull_fixtures import pull_in_subprocess
from mr_notebook.testing.registry import OCI_MANIFEST, AuthProxy, LocalRegistry, free_port

OCI_INDEX = "application/vnd.oci.image.index.v1+json"


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


def _wait_for(predicate, timeout: float = 30.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def _served_206(registry: LocalRegistry, digest: str) -> list[int]:
    return [e["written"] for e in registry.requests() if e["status"] == 206 and e["uri"].endswith(f"/blobs/{digest}")]


def _size(registry: LocalRegistry, repository: str, digest: str) -> int:
    response = httpx.get(f"{registry.url}/v2/{repository}/manifests/{digest}", headers={"Accept": OCI_MANIFEST})
    return len(response.content)


class _Bar(tqdm):  # type: ignore[type-arg]
    def __init__(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)


def test_pull_stores_model_with_registry_metadata(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path
) -> None:
    manifest_digest = local_registry.push_model("ai/tiny", "1B-Q8_0", [tiny_model], chat_template="{{ x }}")
    store = Store(tmp_path)
    events: list[PullProgress] = []
    result = pull(store, f"{local_registry.host}/ai/tiny:1B-Q8_0", progress=events.append, tqdm_class=_Bar)

    record = result.record
    assert not result.already_present
    assert record.id == manifest_digest
    assert record.tags == [f"{local_registry.host}/ai/tiny:1B-Q8_0"]
    assert record.config["parameters"] == "1B" and record.config["context_size"] == 512
    assert record.config["architecture"] == "llama" and record.config["format"] == "gguf"
    assert record.created == 1740830400
    assert store.paths(record)[0].read_bytes() == tiny_model.read_bytes()
    assert store.paths(record, CHAT_TEMPLATE_MEDIA_TYPE)[0].read_text() == "{{ x }}"
    assert result.downloaded == tiny_model.stat().st_size + len("{{ x }}")
    assert store.get(f"{local_registry.host}/ai/tiny:1B-Q8_0").id == manifest_digest

    assert events[0].status == "resolving" and events[-1].status == "done"
    assert "Pulled" in events[-1].message
    downloads = [e for e in events if e.status == "downloading" and e.digest == record.files[0].digest]
    assert downloads[-1].completed == downloads[-1].total == tiny_model.stat().st_size
    assert [e.completed for e in downloads] == sorted(e.completed for e in downloads)
    overall = [e.overall_completed for e in events]
    assert overall == sorted(overall) and overall[-1] == events[-1].overall_total == result.downloaded
    assert {"resolving", "downloading", "verifying", "done"} <= {e.status for e in events}


def test_second_pull_is_a_no_op(local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path) -> None:
    local_registry.push_model("ai/again", "v1", [tiny_model])
    store = Store(tmp_path)
    pull(store, f"{local_registry.host}/ai/again:v1")
    before = len(local_registry.requests())
    events: list[PullProgress] = []
    result = pull(store, f"{local_registry.host}/ai/again:v1", progress=events.append)
    assert result.already_present and result.downloaded == 0
    assert "up to date" in events[-1].message
    assert [e["uri"] for e in local_registry.requests()[before:]] == ["/v2/ai/again/manifests/v1"]


def test_second_name_for_stored_blob_downloads_nothing(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path
) -> None:
    local_registry.push_model("ai/first", "v1", [tiny_model])
    local_registry.push_model("ai/second", "v1", [tiny_model], config={"parameters": "2B"})
    store = Store(tmp_path)
    layer = pull(store, f"{local_registry.host}/ai/first:v1").record.files[0].digest
    served = local_registry.served_bytes(layer)
    events: list[PullProgress] = []
    result = pull(store, f"{local_registry.host}/ai/second:v1", progress=events.append)
    assert result.downloaded == 0 and not result.already_present
    assert local_registry.served_bytes(layer) == served
    assert any(e.status == "exists" for e in events)
    assert len({p for r in store.list() for p in store.paths(r)}) == 1


def test_resume_after_killed_pull_fetches_only_missing_bytes(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    model = tiny_model_factory(reply="resume me please")
    local_registry.push_model("ai/resume", "v1", [model])
    size = model.stat().st_size
    store = Store(tmp_path / "home")
    with AuthProxy(local_registry.host, rate=size / 4) as proxy:
        reference = f"{proxy.host}/ai/resume:v1"
        child = pull_in_subprocess(store.home, reference, os.environ)
        digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
        partial = store.partial_path(digest)
        _wait_for(lambda: partial.exists() and partial.stat().st_size >= size // 3)
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
        kept = partial.stat().st_size
        assert 0 < kept < size and not store.has_blob(digest)

        proxy.rate = None
        result = pull(store, reference)
    assert result.downloaded == size - kept
    assert store.paths(result.record)[0].read_bytes() == model.read_bytes()
    _wait_for(lambda: len(_served_206(local_registry, digest)) == 1)
    assert _served_206(local_registry, digest) == [size - kept]


def test_three_processes_pull_once(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    model = tiny_model_factory(reply="three at once")
    local_registry.push_model("ai/shared", "v1", [model])
    size = model.stat().st_size
    store = Store(tmp_path / "home")
    with AuthProxy(local_registry.host, rate=size * 2) as proxy:
        children = [pull_in_subprocess(store.home, f"{proxy.host}/ai/shared:v1", os.environ) for _ in range(3)]
        outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], outputs
    downloaded = sorted(int(out.split()[0]) for out, _ in outputs)
    assert downloaded == [0, 0, size]
    record = store.get(f"{proxy.host}/ai/shared:v1")
    assert local_registry.served_bytes(record.files[0].digest) == size


def test_corrupt_blob_is_refused_and_deleted(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    model = tiny_model_factory(reply="corrupted on the server")
    local_registry.push_model("ai/corrupt", "v1", [model])
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    data_file = local_registry.blob_data_path(digest)
    data = bytearray(data_file.read_bytes())
    data[len(data) // 2] ^= 0xFF
    data_file.write_bytes(bytes(data))
    store = Store(tmp_path)
    with pytest.raises(DigestMismatch, match="partial file was deleted"):
        pull(store, f"{local_registry.host}/ai/corrupt:v1")
    assert store.list() == []
    assert not store.partial_path(digest).exists() and not store.has_blob(digest)


def test_unknown_repository_and_tag(local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path) -> None:
    local_registry.push_model("ai/known", "v1", [tiny_model])
    for name in ("ai/nothing-here:v1", "ai/known:v2"):
        with pytest.raises(RemoteNotFound, match=f"{local_registry.host}/{name}.*not found") as info:
            pull(Store(tmp_path), f"{local_registry.host}/{name}")
        assert info.value.http_status == 404 and isinstance(info.value, LookupError)
    assert Store(tmp_path).list() == []


def test_token_auth(local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path) -> None:
    local_registry.push_model("ai/private", "v1", [tiny_model])
    with AuthProxy(local_registry.host, users={"ci": "s3cret"}, anonymous=False) as proxy:
        reference = f"{proxy.host}/ai/private:v1"
        with pytest.raises(AuthenticationRequired, match="MR_NOTEBOOK_REGISTRY_AUTH"):
            pull(Store(tmp_path / "a"), reference, env={"HOME": str(tmp_path)})
        with pytest.raises(AuthenticationRequired):
            pull(Store(tmp_path / "a"), reference, env={"MR_NOTEBOOK_REGISTRY_AUTH": f"{proxy.host}=ci:wrong"})
        assert Store(tmp_path / "a").list() == []

        result = pull(
            Store(tmp_path / "b"), reference, env={"MR_NOTEBOOK_REGISTRY_AUTH": f"other.io=x:y,{proxy.host}=ci:s3cret"}
        )
        assert not result.already_present

        docker = tmp_path / "home" / ".docker"
        docker.mkdir(parents=True)
        auth = base64.b64encode(b"ci:s3cret").decode()
        (docker / "config.json").write_text(json.dumps({"auths": {proxy.host: {"auth": auth}}}))
        assert pull(Store(tmp_path / "c"), reference, env={"HOME": str(tmp_path / "home")}).record.tags


def test_retry_after_is_honoured(local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path) -> None:
    local_registry.push_model("ai/busy", "v1", [tiny_model])
    with AuthProxy(local_registry.host) as proxy:
        proxy.retry_after_once = 0.2
        result = pull(Store(tmp_path), f"{proxy.host}/ai/busy:v1")
    assert result.record.tags and any(status == 429 for _, _, status in proxy.log)


def test_image_index_selects_the_model_manifest(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path
) -> None:
    digest = local_registry.push_model("ai/indexed", "model", [tiny_model])
    other = local_registry.push_blob("ai/indexed", b"{}")
    image = local_registry.push_manifest(
        "ai/indexed",
        "image",
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **other},
            "layers": [],
        },
    )
    local_registry.push_manifest(
        "ai/indexed",
        "v1",
        {
            "schemaVersion": 2,
            "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": image, "size": _size(local_registry, "ai/indexed", image)},
                {
                    "mediaType": OCI_MANIFEST,
                    "digest": digest,
                    "size": _size(local_registry, "ai/indexed", digest),
                    "artifactType": "application/vnd.docker.ai.model.config.v0.1+json",
                },
            ],
        },
        OCI_INDEX,
    )
    assert pull(Store(tmp_path), f"{local_registry.host}/ai/indexed:v1").record.id == digest


def test_non_gguf_artifact_is_refused(local_registry: LocalRegistry, tmp_path: Path) -> None:
    local_registry.push_model("ai/safetensors", "v1", [b"not gguf"], layer_type="application/vnd.docker.ai.safetensors")
    with pytest.raises(PullError, match=r"not a GGUF model.*application/vnd\.docker\.ai\.safetensors"):
        pull(Store(tmp_path), f"{local_registry.host}/ai/safetensors:v1")
    assert Store(tmp_path).list() == []


def test_unreachable_registry_says_so(tmp_path: Path) -> None:
    with pytest.raises(OfflineError, match=r"unreachable.*package --gguf PATH NAME"):
        pull(Store(tmp_path), f"127.0.0.1:{free_port()}/ai/tiny:v1")


def test_layer_larger_than_the_free_disk_is_refused(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model: Path
) -> None:
    layer = local_registry.push_blob("ai/huge", tiny_model.read_bytes())
    config = local_registry.push_blob("ai/huge", b'{"config": {}}')
    local_registry.push_manifest(
        "ai/huge",
        "v1",
        {
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.docker.ai.model.config.v0.1+json", **config},
            "layers": [{"mediaType": "application/vnd.docker.ai.gguf.v3", "digest": layer["digest"], "size": 1 << 60}],
        },
    )
    with pytest.raises(StoreError, match="Not enough disk space"):
        pull(Store(tmp_path), f"{local_registry.host}/ai/huge:v1")


def test_disk_full_while_writing(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    model = tiny_model_factory(reply="no room for me")
    local_registry.push_model("ai/full", "v1", [model])
    store = Store(tmp_path)
    store.ensure()
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    # /dev/full answers every write with ENOSPC, exactly what a full disk does.
    store.partial_path(digest).symlink_to("/dev/full")
    with pytest.raises(StoreError, match="disk is full"):
        pull(store, f"{local_registry.host}/ai/full:v1")
    assert store.list() == []


def test_cancel_keeps_the_partial_file(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    model = tiny_model_factory(reply="cancel this pull")
    local_registry.push_model("ai/cancel", "v1", [model])
    store = Store(tmp_path)
    cancel = threading.Event()

    def on_progress(event: PullProgress) -> None:
        if event.status == "downloading" and event.completed > 0:
            cancel.set()

    with AuthProxy(local_registry.host, rate=model.stat().st_size / 2) as proxy, pytest.raises(Cancelled):
        pull(store, f"{proxy.host}/ai/cancel:v1", progress=on_progress, cancel=cancel)
    digest = "sha256:" + hashlib.sha256(model.read_bytes()).hexdigest()
    assert store.partial_path(digest).stat().st_size > 0 and store.list() == []
