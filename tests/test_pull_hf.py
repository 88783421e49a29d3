"""Pulling GGUF files from a local Hugging Face Hub through the real huggingface_hub code (HF_ENDPOINT)."""

from __future__ import annotations

import hashlib
import os
import random
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from mr_notebook.errors import AuthenticationRequired, DigestMismatch, OfflineError
from mr_notebook.store import Store
from mr_notebook.store.pull import PullProgress, RemoteNotFound, pull
from mr_notebook.store.pull.hf import HubFile, choose_files
from mr_notebook.testing import TinyModelFactory
from mr_notebook.testing.hub import LocalHub
from mr_notebook.testing.pull_fixtures import pull_in_subprocess
from mr_notebook.testing.registry import free_port


def _sha(path: Path) -> str:
    return "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def local_hub() -> Iterator[LocalHub]:
    with LocalHub() as hub:
        yield hub


@pytest.fixture
def tiny_repo(local_hub: LocalHub, tiny_model_factory: TinyModelFactory) -> dict[str, Path]:
    files = {
        "tiny-GGUF-Q4_K_M.gguf": tiny_model_factory(reply="four bits"),
        "tiny-GGUF-Q8_0.gguf": tiny_model_factory(reply="eight bits"),
    }
    local_hub.add_repo("test/tiny-GGUF", {**files, "README.md": b"# tiny"})
    return files


def test_pull_selects_quantization(local_hub: LocalHub, tiny_repo: dict[str, Path], tmp_path: Path) -> None:
    store = Store(tmp_path)
    env = {"HF_ENDPOINT": local_hub.url}
    events: list[PullProgress] = []
    result = pull(store, "hf.co/test/tiny-GGUF:Q8_0", env=env, progress=events.append)
    q8 = tiny_repo["tiny-GGUF-Q8_0.gguf"]
    assert result.record.tags == ["hf.co/test/tiny-gguf:Q8_0"]
    assert result.record.files[0].digest == _sha(q8) and result.downloaded == q8.stat().st_size
    assert store.paths(result.record)[0].read_bytes() == q8.read_bytes()
    assert local_hub.url in result.record.source
    assert events[0].status == "resolving" and events[-1].status == "done"
    assert events[-1].overall_completed == events[-1].overall_total == q8.stat().st_size

    default = pull(store, "huggingface.co/test/tiny-GGUF", env=env).record
    assert default.tags == ["hf.co/test/tiny-gguf:latest"]
    assert default.files[0].digest == _sha(tiny_repo["tiny-GGUF-Q4_K_M.gguf"])
    assert pull(store, "hf.co/test/tiny-GGUF:q8_0", env=env).record.files[0].digest == _sha(q8)


def test_second_pull_is_a_no_op_and_offline_uses_the_store(
    local_hub: LocalHub, tiny_repo: dict[str, Path], tmp_path: Path
) -> None:
    store = Store(tmp_path)
    env = {"HF_ENDPOINT": local_hub.url}
    pull(store, "hf.co/test/tiny-GGUF:Q8_0", env=env)
    events: list[PullProgress] = []
    again = pull(store, "hf.co/test/tiny-GGUF:Q8_0", env=env, progress=events.append)
    assert again.already_present and again.downloaded == 0 and "up to date" in events[-1].message
    assert local_hub.served_bytes("tiny-GGUF-Q8_0.gguf") == tiny_repo["tiny-GGUF-Q8_0.gguf"].stat().st_size

    offline = {**env, "HF_HUB_OFFLINE": "1"}
    assert pull(store, "hf.co/test/tiny-GGUF:Q8_0", env=offline).already_present
    with pytest.raises(OfflineError, match="HF_HUB_OFFLINE"):
        pull(store, "hf.co/test/tiny-GGUF:Q4_K_M", env=offline)


def test_unknown_quantization_lists_the_available_ones(
    local_hub: LocalHub, tiny_repo: dict[str, Path], tmp_path: Path
) -> None:
    with pytest.raises(RemoteNotFound, match=r"Q5_K_M.*Q4_K_M, Q8_0"):
        pull(Store(tmp_path), "hf.co/test/tiny-GGUF:Q5_K_M", env={"HF_ENDPOINT": local_hub.url})


def test_only_gguf_and_split_selection() -> None:
    only = [HubFile("model.gguf", 1, "a"), HubFile("README.md", 1, "b")]
    assert choose_files(only, "Q4_K_M", asked=False) == [only[0]]
    split = [HubFile(f"Q8_0/big-Q8_0-0000{i}-of-00003.gguf", 1, str(i)) for i in (2, 3, 1)]
    chosen = choose_files([*split, HubFile("big-Q4_K_M.gguf", 1, "x")], "q8_0", asked=True)
    assert [f.path.rsplit("-", 3)[1] for f in chosen] == ["00001", "00002", "00003"]
    with pytest.raises(RemoteNotFound, match="Q4_K_M, Q8_0"):
        choose_files([*split, HubFile("big-Q4_K_M.gguf", 1, "x")], "Q2_K", asked=True)


@pytest.fixture(scope="module")
def big_model(tiny_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A valid GGUF of 24 MiB: huggingface_hub writes in 10 MiB chunks, so a resume needs a bigger file."""
    path = tmp_path_factory.mktemp("big") / "big-Q8_0.gguf"
    path.write_bytes(tiny_model.read_bytes() + random.Random(0).randbytes(24 << 20))
    return path


def test_resume_after_killed_pull(local_hub: LocalHub, big_model: Path, tmp_path: Path) -> None:
    local_hub.add_repo("test/tiny-GGUF", {"tiny-GGUF-Q8_0.gguf": big_model})
    q8 = big_model
    size = q8.stat().st_size
    store = Store(tmp_path / "home")
    local_hub.rate = size / 4
    child = pull_in_subprocess(store.home, "hf.co/test/tiny-GGUF:Q8_0", {**os.environ, "HF_ENDPOINT": local_hub.url})
    partial = store.partial_path(_sha(q8))
    deadline = time.monotonic() + 60
    while not (partial.exists() and partial.stat().st_size >= size // 3):
        assert time.monotonic() < deadline and child.poll() is None, child.communicate()
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.wait(timeout=30)
    kept = partial.stat().st_size
    assert 0 < kept < size

    local_hub.rate = None
    first = local_hub.served_bytes("tiny-GGUF-Q8_0.gguf")
    result = pull(store, "hf.co/test/tiny-GGUF:Q8_0", env={"HF_ENDPOINT": local_hub.url})
    assert result.downloaded == size - kept
    assert local_hub.served_bytes("tiny-GGUF-Q8_0.gguf") - first == size - kept
    assert store.paths(result.record)[0].read_bytes() == q8.read_bytes()


def test_three_processes_download_once(local_hub: LocalHub, tiny_repo: dict[str, Path], tmp_path: Path) -> None:
    q8 = tiny_repo["tiny-GGUF-Q8_0.gguf"]
    local_hub.rate = q8.stat().st_size * 2
    store = Store(tmp_path / "home")
    env = {**os.environ, "HF_ENDPOINT": local_hub.url}
    children = [pull_in_subprocess(store.home, "hf.co/test/tiny-GGUF:Q8_0", env) for _ in range(3)]
    outputs = [child.communicate(timeout=120) for child in children]
    assert [child.returncode for child in children] == [0, 0, 0], outputs
    assert sorted(int(out.split()[0]) for out, _ in outputs) == [0, 0, q8.stat().st_size]
    assert local_hub.served_bytes("tiny-GGUF-Q8_0.gguf") == q8.stat().st_size


def test_same_file_in_another_repo_downloads_nothing(
    local_hub: LocalHub, tiny_repo: dict[str, Path], tmp_path: Path
) -> None:
    q8 = tiny_repo["tiny-GGUF-Q8_0.gguf"]
    local_hub.add_repo("mirror/tiny-GGUF", {"copy.Q8_0.gguf": q8})
    store = Store(tmp_path)
    pull(store, "hf.co/test/tiny-GGUF:Q8_0", env={"HF_ENDPOINT": local_hub.url})
    result = pull(store, "hf.co/mirror/tiny-GGUF:Q8_0", env={"HF_ENDPOINT": local_hub.url})
    assert result.downloaded == 0 and local_hub.served_bytes("copy.Q8_0.gguf") == 0
    assert [r.tags for r in store.list()] == [["hf.co/mirror/tiny-gguf:Q8_0", "hf.co/test/tiny-gguf:Q8_0"]]


def test_altered_bytes_are_refused(local_hub: LocalHub, tiny_model: Path, tmp_path: Path) -> None:
    local_hub.add_repo("test/bad-GGUF", {"bad-Q8_0.gguf": tiny_model}, corrupt={"bad-Q8_0.gguf"})
    store = Store(tmp_path)
    with pytest.raises(DigestMismatch, match="partial file was deleted"):
        pull(store, "hf.co/test/bad-GGUF:Q8_0", env={"HF_ENDPOINT": local_hub.url})
    assert store.list() == [] and not store.partial_path(_sha(tiny_model)).exists()


def test_errors_name_what_was_tried(local_hub: LocalHub, tiny_model: Path, tmp_path: Path) -> None:
    env = {"HF_ENDPOINT": local_hub.url}
    with pytest.raises(RemoteNotFound, match=r"hf\.co/test/missing:Q8_0"):
        pull(Store(tmp_path), "hf.co/test/missing:Q8_0", env=env)
    local_hub.add_repo("test/private-GGUF", {"p-Q8_0.gguf": tiny_model}, token="hf_secret")
    with pytest.raises(AuthenticationRequired, match="HF_TOKEN"):
        pull(Store(tmp_path), "hf.co/test/private-GGUF:Q8_0", env=env)
    result = pull(Store(tmp_path), "hf.co/test/private-GGUF:Q8_0", env={**env, "HF_TOKEN": "hf_secret"})
    assert result.record.tags == ["hf.co/test/private-gguf:Q8_0"]
    with pytest.raises(OfflineError, match=r"unreachable.*package --gguf"):
        pull(Store(tmp_path), "hf.co/test/x:Q8_0", env={"HF_ENDPOINT": f"http://127.0.0.1:{free_port()}"})
