"""Models other tools downloaded (Ollama, the Hugging Face cache, Docker Model Runner, LM Studio, a folder):
imported with no download and no second copy, and run by llama.cpp."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from mr_notebook.engine import GenerationParams, Runner, collect
from mr_notebook.errors import InvalidModelFile, LocalFileNotFound, ModelNotFound, StoreError
from mr_notebook.settings import EngineSettings
from mr_notebook.store import CHAT_TEMPLATE_MEDIA_TYPE, Store
from mr_notebook.store.external import describe
from mr_notebook.store.imports import discover, import_models
from mr_notebook.store.records import MMPROJ_MEDIA_TYPE
from mr_notebook.testing import TinyModelFactory
from mr_notebook.testing.gguf_files import split_path
from mr_notebook.testing.tool_stores import hf_cache, lmstudio_folder, model_runner_store, ollama_store

HI = [{"role": "user", "content": "hi"}]
METADATA_ALLOWANCE = 64 * 1024  # index, manifests, adoption records: a few small JSON files


def _parts(first: Path) -> list[Path]:
    count = int(first.name.rsplit("-of-", 1)[1].removesuffix(".gguf"))
    stem = first.name.removesuffix(f"-00001-of-{count:05d}.gguf")
    return [split_path(first.with_name(f"{stem}.gguf"), i, count) for i in range(1, count + 1)]


def _files(root: Path) -> Iterator[Path]:
    for folder, _, names in os.walk(root):
        for name in names:
            yield Path(folder) / name


def new_bytes(store_home: Path, source: Path) -> int:
    """Disk the store uses beyond the source tool's files (hard links share their inodes: they cost nothing)."""
    theirs = {(p.lstat().st_dev, p.lstat().st_ino) for p in _files(source)}
    seen: set[tuple[int, int]] = set()
    total = 0
    for path in _files(store_home):
        stat = path.lstat()
        key = (stat.st_dev, stat.st_ino)
        if key not in theirs and key not in seen:
            seen.add(key)
            total += stat.st_blocks * 512
    return total


async def chat_reply(store: Store, name: str) -> str:
    runner = Runner(store, EngineSettings(keep_alive=30))
    try:
        return (await collect(runner.chat(name, HI, GenerationParams.from_request({})))).text
    finally:
        await runner.close()


@pytest.fixture
def user(tmp_path: Path) -> Path:
    """The home folder of a user who ran other tools (their stores live under it)."""
    home = tmp_path / "user"
    home.mkdir()
    return home


def env_of(user: Path) -> dict[str, str]:
    return {"HOME": str(user)}


def build(source: str, user: Path, factory: TinyModelFactory) -> tuple[str, Path, int]:
    """Write ``source``'s store under ``user``; (the name import gives the model, the store's root, model bytes)."""
    model = factory(reply=f"Imported from {source}.")
    if source == "ollama":
        root = user / ".ollama" / "models"
        ollama_store(root, "tiny", "latest", model, params={"num_ctx": 256, "temperature": 0.2, "stop": ["<|im_end|>"]})
        return "registry.ollama.ai/library/tiny:latest", root, model.stat().st_size
    if source == "huggingface":
        root = user / ".cache" / "huggingface" / "hub"
        mmproj = factory(reply="a projector stand-in", seed=7)
        hf_cache(root, "Test-Org/Tiny-GGUF", {"tiny-Q8_0.gguf": model, "mmproj-tiny-f16.gguf": mmproj})
        return "hf.co/test-org/tiny-gguf:Q8_0", root, model.stat().st_size + mmproj.stat().st_size
    if source == "model-runner":
        root = user / ".docker" / "models"
        model_runner_store(root, "docker.io/ai/tiny:latest", [model])  # how Model Runner writes tags today
        return "ai/tiny:latest", root, model.stat().st_size
    root = user / ".lmstudio" / "models"
    parts = _parts(factory(reply=f"Imported from {source}.", splits=2))
    lmstudio_folder(
        root,
        "lmstudio-community",
        "Tiny-GGUF",
        {f"tiny-Q4_K_M-0000{i}-of-00002.gguf": p for i, p in enumerate(parts, 1)},
    )
    return "hf.co/lmstudio-community/tiny-gguf:Q4_K_M", root, sum(p.stat().st_size for p in parts)


@pytest.mark.parametrize("source", ["ollama", "huggingface", "model-runner", "lmstudio"])
async def test_import_writes_no_model_bytes_and_the_model_runs(
    source: str, user: Path, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    name, root, size = build(source, user, tiny_model_factory)
    store = Store(tmp_path / "store")
    found = {f.name: f for f in discover(env_of(user))}
    assert set(found) == {name} and found[name].source == source and found[name].size == size

    [imported] = import_models(store, source, env=env_of(user))
    assert imported.how == "hard link" and imported.record.tags == [name]
    assert new_bytes(store.home, root) < METADATA_ALLOWANCE < size
    for entry in imported.record.files:
        blob = store.blob_path(entry.digest)
        assert (not blob.is_symlink() and blob.stat().st_nlink >= 2) or entry.media_type == CHAT_TEMPLATE_MEDIA_TYPE
    kinds = [f.media_type for f in imported.record.files]
    assert kinds.count(MMPROJ_MEDIA_TYPE) == (source == "huggingface")  # the repository's projector comes along
    assert await chat_reply(store, name) == f"Imported from {source}."
    again = import_models(store, source, env=env_of(user))  # nothing new: same model, same files
    assert again[0].record.id == imported.record.id and again[0].how == "already stored"


def test_ollama_template_and_parameters_translate(user: Path, tmp_path: Path, tiny_model: Path) -> None:
    root = user / ".ollama" / "models"
    ollama_store(root, "tiny", "q8", tiny_model, params={"num_ctx": 256, "num_gpu": 0, "stop": ["<|im_end|>"]})
    store = Store(tmp_path / "store")
    [imported] = import_models(store, "ollama", ["tiny:q8"], env=env_of(user))  # Ollama's short name works
    record = imported.record
    assert record.settings == {"context_size": 256, "gpu_layers": 0}
    assert record.config["ollama_parameters"] == {"stop": ["<|im_end|>"]}  # no per-model sampling defaults here
    [template] = store.paths(record, CHAT_TEMPLATE_MEDIA_TYPE)
    conversation = [
        {"role": "system", "content": "S"},
        {"role": "user", "content": "U1"},
        {"role": "assistant", "content": "A1"},
        {"role": "user", "content": "U2"},
    ]
    assert renders(template.read_text(), conversation) == {
        "<|im_start|>system\nS<|im_end|>\n<|im_start|>user\nU1<|im_end|>\n<|im_start|>assistant\nA1<|im_end|>\n"
        "<|im_start|>user\nU2<|im_end|>\n<|im_start|>assistant\n"
    }
    assert any(f.media_type.endswith("license") for f in record.files)


def test_a_reference_is_read_only_and_rechecked_before_load(
    user: Path, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    model = tiny_model_factory(reply="kept where it was")
    folder = lmstudio_folder(user / "models", "pub", "repo-GGUF", {"repo-F16.gguf": model})
    source = folder / "repo-F16.gguf"
    store = Store(tmp_path / "store")
    [imported] = import_models(store, str(folder), link=False)  # --reference
    assert imported.how == "reference" and imported.record.tags == ["local/repo:F16"]
    record = imported.record
    assert store.blob_path(record.files[0].digest).is_symlink()
    assert store.model_file(record).read_bytes() == model.read_bytes()
    assert new_bytes(store.home, folder) < METADATA_ALLOWANCE

    stat = source.stat()
    os.utime(source, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched, same bytes: re-hashed, fine
    assert store.model_file(record).exists()
    with open(source, "r+b") as handle:  # the other tool rewrites a byte of the weights in place
        handle.seek(-10, os.SEEK_END)
        byte = handle.read(1)
        handle.seek(-10, os.SEEK_END)
        handle.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(InvalidModelFile, match="changed since it was imported"):
        store.model_file(record)

    store.remove(["local/repo:F16"])
    store.prune()
    store.purge()
    assert source.stat().st_size == model.stat().st_size  # the store never deletes or writes another's file
    [again] = import_models(store, str(folder), link=False)
    kept = source.read_bytes()
    source.unlink()
    with pytest.raises(LocalFileNotFound, match="which is gone"):
        store.model_file(again.record)

    # The same bytes packaged again: the broken link is replaced by the store's own file, and forgotten.
    (tmp_path / "copy.gguf").write_bytes(kept)
    record = store.import_gguf(tmp_path / "copy.gguf", "local/repo:F16", link=False)
    assert describe(store, record.files[0].digest) is None
    assert not store.blob_path(record.files[0].digest).is_symlink()
    assert store.model_file(record).read_bytes() == kept


def test_a_file_on_another_filesystem_is_referenced(tmp_path: Path, tiny_model: Path) -> None:
    other = Path("/dev/shm") / f"mr-notebook-{os.getpid()}-{tmp_path.name}"
    folder = lmstudio_folder(other, "pub", "repo-GGUF", {"repo-F16.gguf": tiny_model})
    try:
        store = Store(tmp_path / "store")
        [imported] = import_models(store, str(folder))
        # /dev/shm is a tmpfs: another filesystem than the store's, unless the temporary folder is one too.
        linkable = other.stat().st_dev == store.home.stat().st_dev
        assert imported.how == ("hard link" if linkable else "reference")
        assert store.model_file(imported.record).read_bytes() == tiny_model.read_bytes()
    finally:
        shutil.rmtree(other, ignore_errors=True)


def test_ollama_names_follow_its_manifest_paths(
    user: Path, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    root = user / "ollama-models"
    ollama_store(root, "tiny", "latest", tiny_model_factory(reply="library"))
    ollama_store(root, "me", "v1", tiny_model_factory(reply="user namespace"), namespace="someone")
    hub = tiny_model_factory(reply="from the hub")
    ollama_store(root, "Tiny-GGUF", "Q8_0", hub, registry="hf.co", namespace="Test-Org", template=None)
    env = {"HOME": str(user), "OLLAMA_MODELS": str(root)}
    found = {f.name: f.aliases for f in discover(env)}
    assert found == {
        "registry.ollama.ai/library/tiny:latest": ["tiny:latest"],
        "registry.ollama.ai/someone/me:v1": ["someone/me:v1"],
        "hf.co/test-org/tiny-gguf:Q8_0": ["hf.co/Test-Org/Tiny-GGUF:Q8_0"],
    }
    store = Store(tmp_path / "store")
    [imported] = import_models(store, "ollama", ["someone/me:v1"], env=env)
    assert imported.record.tags == ["registry.ollama.ai/someone/me:v1"]
    [imported] = import_models(store, "ollama", ["hf.co/test-org/tiny-gguf:Q8_0"], env=env)
    assert store.model_file(imported.record).read_bytes() == hub.read_bytes()  # the same name a pull would give


def test_hf_cache_files_of_every_revision(user: Path, tmp_path: Path, tiny_model_factory: TinyModelFactory) -> None:
    cache = user / "hf"
    old, new = tiny_model_factory(reply="older commit"), tiny_model_factory(reply="newer commit")
    hf_cache(cache, "org/Tiny-GGUF", {"tiny-Q8_0.gguf": old, "tiny-Q4_K_M.gguf": old}, commit="1" * 40)
    hf_cache(cache, "org/Tiny-GGUF", {"tiny-Q4_K_M.gguf": new}, commit="2" * 40)  # refs/main moves here
    env = {"HOME": str(user), "HF_HUB_CACHE": str(cache)}
    found = {f.name: f for f in discover(env)}
    assert sorted(found) == ["hf.co/org/tiny-gguf:Q4_K_M", "hf.co/org/tiny-gguf:Q8_0"]
    store = Store(tmp_path / "store")
    import_models(store, "hf", env=env)
    record = store.get("hf.co/org/tiny-gguf:Q4_K_M")
    assert store.model_file(record).read_bytes() == new.read_bytes()  # main's copy of a file cached twice
    assert store.model_file(store.get("hf.co/org/tiny-gguf:Q8_0")).read_bytes() == old.read_bytes()


def test_a_changed_or_mismatching_file_is_refused(user: Path, tmp_path: Path, tiny_model: Path) -> None:
    root = user / ".ollama" / "models"
    paths = ollama_store(root, "tiny", "latest", tiny_model)
    data = bytearray(paths["model"].read_bytes())
    data[-1] ^= 0xFF
    paths["model"].write_bytes(bytes(data))  # no longer the file its digest names
    store = Store(tmp_path / "store")
    with pytest.raises(StoreError, match="does not match the digest its tool recorded"):
        import_models(store, "ollama", env=env_of(user))
    assert store.list() == [] and store.df()["total"] == 0
    with pytest.raises(ModelNotFound, match=r"it holds: registry\.ollama\.ai/library/tiny:latest"):
        import_models(store, "ollama", ["llama3.2:1b"], env=env_of(user))


def test_model_runner_keeps_names_ids_and_config(user: Path, tmp_path: Path, tiny_model: Path) -> None:
    root = user / "dmr"
    model_id = model_runner_store(root, "index.docker.io/ai/tiny:1B-F16", [tiny_model], {"parameters": "1B"})
    model_runner_store(root, "ai/other:latest", [tiny_model])
    store = Store(tmp_path / "store")
    imported = import_models(store, "model-runner", env={"HOME": str(user), "MODELS_PATH": str(root)})
    assert sorted(i.record.name for i in imported) == ["ai/other:latest", "ai/tiny:1B-F16"]
    record = store.get("ai/tiny:1B-F16")
    assert record.id == model_id and record.config["parameters"] == "1B" and record.created == 1746093600
    assert len({store.blob_path(f.digest) for r in store.list() for f in r.files}) == 1


def test_cli_lists_then_imports(user: Path, tmp_path: Path, tiny_model_factory: TinyModelFactory) -> None:
    for source in ("ollama", "huggingface", "model-runner", "lmstudio"):
        build(source, user, tiny_model_factory)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OLLAMA_", "HF_", "MODELS_PATH", "XDG_"))}
    env["HOME"] = str(user)

    def mr(*args: str) -> str:
        done = subprocess.run(
            [sys.executable, "-m", "mr_notebook.cli", "--home", str(tmp_path / "store"), *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    listing = mr("import")
    for source in ("ollama", "huggingface", "model-runner", "lmstudio"):
        assert source in listing
    assert str(user / ".ollama" / "models" / "manifests") in listing
    assert "Imported registry.ollama.ai/library/tiny:latest from ollama (hard link" in mr("import", "--from", "ollama")
    out = mr("import", "--from", str(user / ".lmstudio" / "models"), "--name", "ai/studio:v1")
    assert "Imported ai/studio:v1 from path (hard link" in out
    record = Store(tmp_path / "store").get("ai/studio:v1")
    assert [f.name for f in record.files] == ["tiny-Q4_K_M-00001-of-00002.gguf", "tiny-Q4_K_M-00002-of-00002.gguf"]


PHI3 = "{{- range .Messages }}<|{{ .Role }}|>\n{{ .Content }}<|end|>\n{{ end }}<|assistant|>\n"
WITH_TOOLS = (
    "{{- if .Tools }}{{ range .Tools }}{{ json . }}{{ end }}{{ end }}"
    "{{- range $i, $_ := .Messages }}{{ .Content }}{{ end }}"
)


def renders(jinja: str, messages: list[dict[str, str]]) -> set[str]:
    """What a template gives with Jinja's defaults and with the engine's (trim_blocks, lstrip_blocks)."""
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    return {
        ImmutableSandboxedEnvironment(trim_blocks=trim, lstrip_blocks=trim).from_string(jinja).render(messages=messages)
        for trim in (False, True)
    }


def test_go_templates_translate_or_say_they_do_not() -> None:
    from mr_notebook.store.imports.gotemplate import translate

    jinja = translate(PHI3)
    assert jinja is not None
    conversation = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert renders(jinja, conversation) == {"<|system|>\nS<|end|>\n<|user|>\nU<|end|>\n<|assistant|>\n"}
    assert translate(WITH_TOOLS) is None  # functions and variables: the GGUF's own template is used
    assert translate("{{ if .System }}unclosed") is None


def test_magic_lists_and_imports(
    user: Path, tmp_path: Path, tiny_model_factory: TinyModelFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from IPython import get_ipython
    from IPython.testing.globalipapp import start_ipython
    from IPython.utils.capture import capture_output

    from mr_notebook.client.local import LocalEngine
    from mr_notebook.kernel import kernel_state

    for source in ("ollama", "lmstudio"):
        build(source, user, tiny_model_factory)
    for name in ("OLLAMA_MODELS", "HF_HUB_CACHE", "HF_HOME", "MODELS_PATH", "XDG_CACHE_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(user))
    ip = start_ipython() or get_ipython()
    ip.run_line_magic("load_ext", "mr_notebook")
    store = Store(tmp_path / "store")
    kernel_state(ip).use(LocalEngine(store))
    try:
        listing = ip.run_line_magic("model", "import")
        assert sorted(row["SOURCE"] for row in listing.rows) == ["lmstudio", "ollama"]
        assert "registry.ollama.ai/library/tiny:latest" in repr(listing)
        with capture_output() as captured:
            ip.run_line_magic("model", "import --from lmstudio")
        assert "Imported hf.co/lmstudio-community/tiny-gguf:Q4_K_M from lmstudio (hard link" in captured.stdout
        assert store.get("hf.co/lmstudio-community/tiny-gguf:Q4_K_M").tags
    finally:
        ip.run_line_magic("unload_ext", "mr_notebook")


async def test_the_engine_refuses_to_load_a_changed_reference(user: Path, tmp_path: Path, tiny_model: Path) -> None:
    folder = lmstudio_folder(user / "models", "pub", "repo-GGUF", {"repo-F16.gguf": tiny_model})
    store = Store(tmp_path / "store")
    [imported] = import_models(store, str(folder), link=False)
    assert await chat_reply(store, imported.record.name)  # loads and answers while unchanged
    source = folder / "repo-F16.gguf"
    data = bytearray(source.read_bytes())
    data[-10] ^= 0xFF  # rewritten in place by the other tool: same size, other bytes
    source.write_bytes(bytes(data))
    with pytest.raises(InvalidModelFile, match="changed since it was imported"):
        await chat_reply(store, imported.record.name)
