"""Split GGUF models (``model-00001-of-00003.gguf`` …): built, packaged, pulled, linked and run by llama.cpp."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import gguf
import llama_cpp
import numpy as np
import pytest

from mr_notebook.engine import GenerationParams, Runner, collect
from mr_notebook.errors import InvalidModelFile, LocalFileNotFound
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store, format_bytes, format_parameters, read_gguf_info, sha256_file
from mr_notebook.store.pull import pull
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory, build_tiny_model
from mr_notebook.testing.gguf_files import split_path
from mr_notebook.testing.hub import LocalHub
from mr_notebook.testing.registry import LocalRegistry

HI = [{"role": "user", "content": "hi"}]
SPLIT_KEYS = {"split.no", "split.count", "split.tensors.count"}


def parts_of(first: Path) -> list[Path]:
    count = int(first.name.rsplit("-of-", 1)[1].removesuffix(".gguf"))
    stem = first.name.removesuffix(f"-00001-of-{count:05d}.gguf")
    return [split_path(first.with_name(f"{stem}.gguf"), i, count) for i in range(1, count + 1)]


def keys(reader: gguf.GGUFReader) -> dict[str, object]:
    return {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}


def mr(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mr_notebook.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


async def chat_reply(store: Store, name: str) -> str:
    runner = Runner(store, EngineSettings(keep_alive=30))
    try:
        return (await collect(runner.chat(name, HI, GenerationParams.from_request({})))).text
    finally:
        await runner.close()


@pytest.fixture(scope="module")
def split3(tiny_model_factory: TinyModelFactory) -> Path:
    return tiny_model_factory(splits=3)


# ---------------------------------------------------------------- the tiny split model


def test_split_tiny_model_is_laid_out_like_gguf_split(tmp_path: Path) -> None:
    whole = build_tiny_model(tmp_path / "whole.gguf", seed=5)
    first = build_tiny_model(tmp_path / "m.gguf", seed=5, splits=3)
    assert first == tmp_path / "m-00001-of-00003.gguf"
    parts = parts_of(first)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["whole.gguf", *(p.name for p in parts)])

    readers = [gguf.GGUFReader(p) for p in parts]
    whole_reader = gguf.GGUFReader(whole)
    n_tensors = len(whole_reader.tensors)
    for number, reader in enumerate(readers):
        assert keys(reader)["split.no"] == number
        assert keys(reader)["split.count"] == 3
        assert keys(reader)["split.tensors.count"] == n_tensors
        assert len(reader.tensors) in (n_tensors // 3, n_tensors // 3 + 1)
    # Part 1 holds every metadata key and the tokenizer; the others only the split keys, as gguf-split writes.
    assert set(keys(readers[0])) == set(keys(whole_reader)) | SPLIT_KEYS
    assert all(set(keys(r)) == SPLIT_KEYS for r in readers[1:])
    split_tensors = {t.name: np.array(t.data) for r in readers for t in r.tensors}
    whole_tensors = {t.name: np.array(t.data) for t in whole_reader.tensors}
    assert list(split_tensors) == list(whole_tensors)
    assert all(np.array_equal(split_tensors[name], whole_tensors[name]) for name in whole_tensors)

    again = tmp_path / "again"
    again.mkdir()
    rebuilt = parts_of(build_tiny_model(again / "m.gguf", seed=5, splits=3))
    assert [p.read_bytes() for p in rebuilt] == [p.read_bytes() for p in parts]
    for bad in (0, n_tensors + 1):
        with pytest.raises(ValueError, match="splits"):
            build_tiny_model(tmp_path / "bad.gguf", splits=bad)
    assert not list(tmp_path.glob("*bad*")) and not list(tmp_path.glob(".*"))


def _llama(path: Path) -> Iterator[llama_cpp.Llama]:
    llm = llama_cpp.Llama(model_path=str(path), verbose=False, n_threads=1, n_threads_batch=1, n_ctx=256)
    try:
        yield llm
    finally:
        llm.close()


def test_llama_cpp_loads_the_split_model_from_part_1_and_replies_the_same(
    tiny_model_factory: TinyModelFactory, tiny_model: Path
) -> None:
    answers = []
    for path in (tiny_model, tiny_model_factory(splits=3), tiny_model_factory(splits=21)):
        for llm in _llama(path):
            chat = llm.create_chat_completion(HI, max_tokens=32)  # type: ignore[arg-type]
            text = llm.create_completion("Once upon a time", max_tokens=32)
            answers.append(
                (
                    chat["choices"][0]["message"]["content"],  # type: ignore[index]
                    text["choices"][0]["text"],  # type: ignore[index]
                    llm.tokenize(b"hello tiny world"),
                    llama_cpp.llama_model_n_params(llm.model),
                    llm.metadata["general.name"],
                )
            )
    assert answers[0][0] == answers[0][1] == DEFAULT_REPLY
    assert answers[1] == answers[0] and answers[2] == answers[0]


# ---------------------------------------------------------------- the store


def test_package_split_model_and_link_its_parts(store: Store, split3: Path, tiny_model: Path) -> None:
    parts = parts_of(split3)
    record = store.import_gguf(split3, "ai/split")
    whole = store.import_gguf(tiny_model, "ai/whole")
    assert [f.name for f in record.files] == [p.name for p in parts]
    assert [f.digest for f in record.files] == [sha256_file(p) for p in parts]
    size = sum(p.stat().st_size for p in parts)
    assert record.size == record.hints["size_bytes"] == size
    assert record.config["size"] == format_bytes(size)
    assert record.hints["parameters"] == whole.hints["parameters"]
    assert record.config["parameters"] == whole.config["parameters"] == format_parameters(whole.hints["parameters"])
    assert record.config["gguf"]["split.count"] == 3

    path = store.model_file(record)
    folder = store.links_dir / record.id.removeprefix("sha256:")
    assert path == folder / "model-00001-of-00003.gguf"
    links = sorted(folder.iterdir())
    assert [p.name for p in links] == [f"model-{i:05d}-of-00003.gguf" for i in (1, 2, 3)]
    for link, blob in zip(links, store.paths(record), strict=True):
        assert link.is_symlink() and not link.readlink().is_absolute()  # relative: the store may move
        assert link.samefile(blob)
    inode = folder.stat().st_ino
    assert store.model_file(record) == path and folder.stat().st_ino == inode  # built once

    assert store.model_file(whole) == store.paths(whole)[0]  # one file: the blob itself, no folder
    assert [p.name for p in store.links_dir.iterdir()] == [folder.name]

    links[1].unlink()  # damaged by hand: rebuilt whole on the next load
    assert store.model_file(record) == path and len(list(folder.iterdir())) == 3
    assert not [p for p in store.links_dir.iterdir() if p.name.startswith(".")]

    store.remove(["ai/split"])
    assert not folder.exists()
    assert not any(b.exists() for b in store.paths(record))
    assert store.model_file(store.get("ai/whole")).is_file()


def test_prune_and_purge_remove_link_folders(store: Store, split3: Path) -> None:
    record = store.import_gguf(split3, "ai/split")
    folder = store.model_file(record).parent
    stray = store.links_dir / ("ab" * 32)
    stray.mkdir()
    (stray / "model-00001-of-00002.gguf").symlink_to("../../blobs/sha256/gone")
    half_built = store.links_dir / f".{folder.name}.0123.tmp"
    half_built.mkdir()
    store.prune()
    assert sorted(store.links_dir.iterdir()) == [folder]
    store.purge()
    assert not store.links_dir.exists() and store.list() == []


def test_package_needs_every_part_beside_part_1(store: Store, split3: Path, tmp_path: Path) -> None:
    loose = tmp_path / "loose"
    loose.mkdir()
    for number, part in enumerate(parts_of(split3), 1):
        shutil.copyfile(part, loose / f"big-{number:05d}-of-00003.gguf")
    first, second, third = sorted(loose.iterdir())
    assert first.name == "big-00001-of-00003.gguf"

    with pytest.raises(InvalidModelFile, match=r"part 2 of a 3-part split model.*big-00001-of-00003\.gguf"):
        store.import_gguf(second, "ai/split")
    renamed = tmp_path / "renamed.gguf"
    shutil.copyfile(first, renamed)
    with pytest.raises(InvalidModelFile, match=r"-00001-of-00003\.gguf"):
        store.import_gguf(renamed, "ai/split")
    third.unlink()
    with pytest.raises(LocalFileNotFound, match=r"Part 3 .* no file at .*big-00003-of-00003\.gguf") as info:
        store.import_gguf(first, "ai/split")
    assert isinstance(info.value, FileNotFoundError)
    assert store.list() == [] and not store.blobs_dir.exists()  # refused before anything was copied


def test_header_reading_refuses_parts_out_of_order(split3: Path, tiny_model: Path) -> None:
    one, two, three = parts_of(split3)
    info = read_gguf_info([one, two, three])
    assert info.size == sum(p.stat().st_size for p in (one, two, three))
    assert info.parameters == read_gguf_info([tiny_model]).parameters
    with pytest.raises(InvalidModelFile, match="should be part 1 of 3"):
        read_gguf_info([two, one, three])
    with pytest.raises(InvalidModelFile, match="the model has 2 part"):
        read_gguf_info([one, two])
    with pytest.raises(InvalidModelFile, match="whole model, not part 1"):
        read_gguf_info([tiny_model, tiny_model])


# ---------------------------------------------------------------- end to end: package, pull, run


async def test_cli_packages_a_split_model_and_the_runner_chats_with_it(store_home: Path, split3: Path) -> None:
    done = mr("package", "--gguf", str(split3), "ai/split:v1", home=store_home)
    assert done.returncode == 0, done.stderr
    assert "Model ai/split:v1 added" in done.stdout
    store = Store(store_home)
    assert len(store.get("ai/split:v1").files) == 3
    assert await chat_reply(store, "ai/split:v1") == DEFAULT_REPLY


async def test_pull_split_model_from_registry_and_chat(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model_factory: TinyModelFactory, tiny_model: Path
) -> None:
    reply = "Three parts, one model."
    parts = parts_of(tiny_model_factory(splits=3, reply=reply))
    # No size or parameters in the registry's config: what list/inspect show comes from the three headers.
    local_registry.push_model("ai/split", "v1", parts, config={"parameters": "", "size": ""})
    home = tmp_path / "home"
    name = f"{local_registry.host}/ai/split:v1"
    record = pull(Store(home), name).record
    assert [f.name for f in record.files] == [p.name for p in parts]
    assert await chat_reply(Store(home), name) == reply

    size = sum(p.stat().st_size for p in parts)
    whole = read_gguf_info([tiny_model_factory(reply=reply)])
    listed = json.loads(mr("list", "--json", home=home).stdout)
    inspected = json.loads(mr("inspect", name, home=home).stdout)
    for shown in (listed[0], inspected):
        assert shown["config"]["size"] == format_bytes(size)
        assert shown["config"]["parameters"] == format_parameters(whole.parameters)
    assert Store(home).get(name).hints["parameters"] == whole.parameters
    table = mr("list", home=home).stdout.splitlines()
    assert format_bytes(size) in table[1] and format_parameters(whole.parameters) in table[1]


async def test_pull_split_model_from_hugging_face_and_chat(
    local_hub: LocalHub, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    reply = "Split on the Hub."
    parts = parts_of(tiny_model_factory(splits=2, reply=reply))
    local_hub.add_repo("test/split-GGUF", {f"split-F16-0000{i}-of-00002.gguf": p for i, p in enumerate(parts, 1)})
    store = Store(tmp_path / "home")
    record = pull(store, "hf.co/test/split-GGUF:F16", env={"HF_ENDPOINT": local_hub.url}).record
    assert [f.name for f in record.files] == ["split-F16-00001-of-00002.gguf", "split-F16-00002-of-00002.gguf"]
    assert store.model_file(record).name == "model-00001-of-00002.gguf"
    assert await chat_reply(store, "hf.co/test/split-GGUF:F16") == reply
