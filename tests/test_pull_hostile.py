"""Registries that lie: bodies longer than declared, endless manifests. The store never writes past a
layer's declared size and never reads more than the manifest cap."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest

from mr_notebook.errors import DigestMismatch, PullError
from mr_notebook.store import Store
from mr_notebook.store.pull import PullProgress, pull
from mr_notebook.testing.hub import LocalHub
from mr_notebook.testing.lying_registry import Body, LyingRegistry, repeat

MiB = 1024 * 1024
FLOOD = 50 * MiB


def _sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.fixture(params=["http.client", "httpx"])
def transport(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Both blob paths: http.client (no proxy) and httpx (a proxy variable is set; 127.0.0.1 bypasses it)."""
    for name in ("HTTP_PROXY", "http_proxy", "HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    if request.param == "httpx":
        monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:9")  # only https goes through it: none here
    return str(request.param)


def test_a_layer_longer_than_declared_is_cut_at_the_declared_size(
    tmp_path: Path, tiny_model: Path, transport: str
) -> None:
    model = tiny_model.read_bytes()
    store = Store(tmp_path)
    events: list[PullProgress] = []
    with LyingRegistry() as registry:
        body = registry.model("ai/liar", "v1", _sha(model), len(model), Body(repeat(model, FLOOD), FLOOD))
        result = pull(store, f"{registry.host}/ai/liar:v1", progress=events.append)
        assert body.done.wait(30)
    assert store.paths(result.record)[0].read_bytes() == model
    assert body.sent < FLOOD // 2, f"the client read {body.sent} bytes of a {len(model)}-byte layer"
    assert all(e.completed <= e.total for e in events if e.status == "downloading")


def test_a_flood_instead_of_a_small_layer_is_refused_without_filling_the_disk(tmp_path: Path, transport: str) -> None:
    declared = os.urandom(1024)
    store = Store(tmp_path)
    events: list[PullProgress] = []
    with LyingRegistry() as registry:
        body = registry.model("ai/flood", "v1", _sha(declared), 1024, Body(repeat(b"", FLOOD), FLOOD))
        with pytest.raises(DigestMismatch, match="partial file was deleted"):
            pull(store, f"{registry.host}/ai/flood:v1", progress=events.append)
        assert body.done.wait(30)
    assert body.sent < FLOOD // 2
    assert max(e.completed for e in events if e.status == "downloading") <= 1024
    assert not store.partial_path(_sha(declared)).exists() and store.list() == []


def test_a_layer_streamed_without_length_stops_at_the_declared_size(tmp_path: Path, tiny_model: Path) -> None:
    model = tiny_model.read_bytes()
    store = Store(tmp_path)
    with LyingRegistry() as registry:
        body = registry.model("ai/unframed", "v1", _sha(model), len(model), Body(repeat(model, FLOOD), None))
        result = pull(store, f"{registry.host}/ai/unframed:v1")
        assert body.done.wait(30)
    assert store.paths(result.record)[0].read_bytes() == model and body.sent < FLOOD // 2


def test_a_hub_file_longer_than_its_metadata_is_cut_at_the_declared_size(tmp_path: Path, tiny_model: Path) -> None:
    """huggingface_hub pushes bytes into the store's writer: the writer refuses the rest and stops it."""
    store = Store(tmp_path)
    with LocalHub() as hub:
        hub.add_repo("test/liar-GGUF", {"liar-Q8_0.gguf": tiny_model}, flood={"liar-Q8_0.gguf": FLOOD})
        result = pull(store, "hf.co/test/liar-GGUF:Q8_0", env={"HF_ENDPOINT": hub.url})
        served = hub.served_bytes("liar-Q8_0.gguf")
    assert store.paths(result.record)[0].read_bytes() == tiny_model.read_bytes()
    assert served < FLOOD // 2, f"{served} bytes were read for a {tiny_model.stat().st_size}-byte file"


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "close-delimited"])
def test_an_endless_manifest_is_refused_while_it_is_read(tmp_path: Path, declared: bool) -> None:
    size = 64 * MiB
    with LyingRegistry() as registry:
        body = registry.route(
            "/v2/ai/endless/manifests/v1",
            Body(repeat(b'{"layers": [' + b" " * 1000, size), size if declared else None, "application/json"),
        )
        with pytest.raises(PullError, match="larger than a manifest can be"):
            pull(Store(tmp_path), f"{registry.host}/ai/endless:v1")
        assert body.done.wait(30)
    # The cap is 4 MiB; kernel socket buffers hold a few MiB more that the server counts as sent.
    assert body.sent < 24 * MiB, f"{body.sent} bytes of manifest were read"
    if declared:
        assert body.sent < 16 * MiB
