"""The on-disk store: packaging, metadata, names, removal, housekeeping, concurrency."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mr_notebook.errors import InvalidModelFile, LocalFileNotFound, ModelInUse, ModelNotFound, StoreLocked
from mr_notebook.store import Removal, Store, parse_ref, sha256_file
from mr_notebook.testing import TinyModelFactory


def test_package_reads_metadata_from_the_gguf_header(store: Store, tiny_model: Path) -> None:
    record = store.import_gguf(tiny_model, "ai/tiny:v1")
    assert record.tags == ["ai/tiny:v1"]
    config = record.config
    assert config["format"] == "gguf"
    assert config["architecture"] == "llama"
    assert config["quantization"] == "F16"
    assert config["context_size"] == 512
    assert config["parameters"].endswith("K")
    assert config["gguf"]["general.architecture"] == "llama"
    assert record.hints["n_layer"] == 2 and record.hints["n_embd"] == 64 and record.hints["has_chat_template"]
    assert record.size == tiny_model.stat().st_size
    assert store.paths(record) == [store.blob_path(sha256_file(tiny_model))]
    assert [r.id for r in store.list()] == [record.id]


def test_names_are_normalised_and_shared(store: Store, tiny_model: Path) -> None:
    store.import_gguf(tiny_model, "Tiny")
    assert store.get("ai/tiny:latest").tags == ["ai/tiny:latest"]
    assert store.get("tiny").id == store.get("AI/Tiny").id
    tagged = store.tag("tiny", "other/name:v2")
    assert tagged.tags == ["ai/tiny:latest", "other/name:v2"]
    assert len(list(store.blobs_dir.iterdir())) == 1  # one blob, two names
    assert store.get(tagged.short_id).id == tagged.id  # by id prefix
    assert store.get(f"ai/tiny@{tagged.files[0].digest}").id == tagged.id  # by digest


def test_same_file_twice_is_stored_once(store: Store, tiny_model: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy.gguf"
    copy.write_bytes(tiny_model.read_bytes())
    first = store.import_gguf(tiny_model, "a")
    second = store.import_gguf(copy, "b")
    assert first.id == second.id
    assert store.get("a").tags == ["ai/a:latest", "ai/b:latest"]
    assert store.df()["blobs"] == tiny_model.stat().st_size


def test_copy_when_linking_is_not_wanted(store: Store, tiny_model: Path) -> None:
    record = store.import_gguf(tiny_model, "tiny", link=False)
    blob = store.paths(record)[0]
    assert blob.stat().st_ino != tiny_model.stat().st_ino
    assert sha256_file(blob) == record.files[0].digest


def test_remove_untags_then_deletes_unused_blobs(store: Store, tiny_model_factory: TinyModelFactory) -> None:
    one = store.import_gguf(tiny_model_factory(), "one")
    store.tag("one", "alias")
    other = store.import_gguf(tiny_model_factory(reply="Another answer."), "two")
    assert store.remove(["one"]) == Removal(untagged=["ai/one:latest"], deleted=[])
    assert store.has_blob(one.files[0].digest)
    assert store.doomed(["alias"]) == [store.get("alias")]
    assert store.remove(["alias"]) == Removal(untagged=["ai/alias:latest"], deleted=[one.id])
    assert not store.has_blob(one.files[0].digest)
    assert store.has_blob(other.files[0].digest)
    with pytest.raises(ModelNotFound, match="mr-notebook pull ai/one:latest"):
        store.get("one")


def test_remove_by_id_with_several_names_needs_force(store: Store, tiny_model: Path) -> None:
    record = store.import_gguf(tiny_model, "one")
    store.tag("one", "two")
    with pytest.raises(ModelInUse, match="several names"):
        store.remove([record.short_id])
    with pytest.raises(ModelInUse, match="several names"):
        store.doomed([record.short_id])
    removal = store.remove([record.short_id], force=True)
    assert removal == Removal(untagged=["ai/one:latest", "ai/two:latest"], deleted=[record.id])
    assert store.list() == []


def test_retag_moves_a_name_and_drops_the_orphan(store: Store, tiny_model_factory: TinyModelFactory) -> None:
    old = store.import_gguf(tiny_model_factory(), "tiny")
    new = store.import_gguf(tiny_model_factory(reply="New reply."), "tiny")
    assert store.get("tiny").id == new.id
    assert not store.has_blob(old.files[0].digest)
    assert [r.id for r in store.list()] == [new.id]


def test_refuses_non_gguf_and_damaged_files(store: Store, tiny_model: Path, tmp_path: Path) -> None:
    text = tmp_path / "notes.gguf"
    text.write_text("just some text, not a model")
    with pytest.raises(InvalidModelFile, match="not a GGUF model file"):
        store.import_gguf(text, "bad")
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(tiny_model.read_bytes()[: tiny_model.stat().st_size // 2])
    with pytest.raises(InvalidModelFile, match=r"truncated|damaged"):
        store.import_gguf(truncated, "bad")
    with pytest.raises(LocalFileNotFound, match="No file at"):
        store.import_gguf(tmp_path / "missing.gguf", "bad")
    assert store.list() == []
    assert store.df()["total"] == 0


def test_df_prune_and_purge(store: Store, tiny_model: Path) -> None:
    record = store.import_gguf(tiny_model, "tiny")
    size = tiny_model.stat().st_size
    partial = store.partial_path("sha256:" + "1" * 64)
    partial.write_bytes(b"x" * 1000)
    orphan = store.blob_path("sha256:" + "2" * 64)
    orphan.write_bytes(b"y" * 500)
    usage = store.df()
    assert usage == {"blobs": size + 500, "partials": 1000, "total": size + 1500, "models": 1}
    assert store.prune() == {"files": 2, "bytes": 1500}
    assert store.df()["total"] == size
    assert store.get("tiny").id == record.id
    assert store.purge() == {"models": 1, "bytes": size}
    assert store.list() == [] and store.df()["total"] == 0


def test_prune_leaves_a_partial_that_a_pull_is_writing(store: Store) -> None:
    digest = "sha256:" + "3" * 64
    store.ensure()
    store.partial_path(digest).write_bytes(b"in progress")
    with store.blob_lock(digest):
        assert store.prune()["files"] == 0
    assert store.partial_path(digest).exists()


def test_configure_persists_settings(store: Store, tiny_model: Path) -> None:
    store.import_gguf(tiny_model, "tiny")
    store.configure("tiny", context_size=256, keep_alive=30.0)
    assert store.get("tiny").settings == {"context_size": 256, "keep_alive": 30.0}
    store.configure("tiny", keep_alive=None)
    assert store.get("tiny").to_json()["settings"] == {"context_size": 256}


def test_unreadable_index_says_what_to_do(store: Store, tiny_model: Path) -> None:
    store.import_gguf(tiny_model, "tiny")
    store.index_path.write_text("{ not json")
    with pytest.raises(OSError, match="purge"):
        store.list()


def _package(home: str, path: str, name: str) -> str:
    return Store(home).import_gguf(path, name).id


def test_two_processes_adding_one_file_leave_one_model(store: Store, tiny_model: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        ids = pool.starmap(
            _package,
            [(str(store.home), str(tiny_model), "tiny")] * 2 + [(str(store.home), str(tiny_model), "tiny:two")],
        )
    assert len(set(ids)) == 1
    assert store.get("tiny").tags == ["ai/tiny:latest", "ai/tiny:two"]
    assert [p.name for p in store.blobs_dir.iterdir()] == [sha256_file(tiny_model).removeprefix("sha256:")]
    assert json.loads(store.index_path.read_text())["tags"] == {"ai/tiny:latest": ids[0], "ai/tiny:two": ids[0]}


_names = st.text(alphabet="abcz09._-/:@ABC", min_size=1, max_size=40)


@given(name=_names)
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_name_addresses_a_path_outside_the_store(store: Store, tiny_model: Path, name: str) -> None:
    if not store.list():
        store.import_gguf(tiny_model, "base")
    try:
        ref = parse_ref(name)
    except ValueError:
        return
    if ref.digest is not None:
        return
    store.tag("base", name)
    inside = {p.resolve() for p in store.home.rglob("*")}
    assert all(str(p).startswith(str(store.home.resolve()) + os.sep) for p in inside)
    assert {p.parent.name for p in store.home.glob("models/*")} == {"models"}
    assert store.get(name).id == store.get("base").id


def test_a_held_index_lock_times_out_naming_its_holder(tmp_path: Path, tiny_model: Path) -> None:
    store = Store(tmp_path / "home", lock_timeout=0.5)
    store.import_gguf(tiny_model, "one")
    holder = subprocess.Popen(
        [sys.executable, "-m", "mr_notebook.testing.lock_holder", str(store.home), "60"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "held\n"
        with pytest.raises(StoreLocked, match=rf"process {holder.pid} \('lock_holder.py.*MR_NOTEBOOK_LOCK_TIMEOUT"):
            store.tag("one", "two")
        assert store.get("one").tags == ["ai/one:latest"]  # reading needs no lock
    finally:
        holder.communicate("go\n", timeout=30)
    assert store.tag("one", "two").tags == ["ai/one:latest", "ai/two:latest"]
