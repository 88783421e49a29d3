"""Garbage collection never takes what is still wanted: in-flight pulls hold a lease that prune, purge and
rm respect, and a name that moves is written to the index before the model it left is deleted."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mr_notebook.store import Store, sha256_file
from mr_notebook.testing import TinyModelFactory
from mr_notebook.testing.gguf_files import split_path
from mr_notebook.testing.pull_fixtures import pull_in_subprocess
from mr_notebook.testing.registry import AuthProxy, LocalRegistry


@pytest.fixture(scope="module")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


def _wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def _parts(first: Path) -> list[Path]:
    count = int(first.name.rsplit("-of-", 1)[1].removesuffix(".gguf"))
    stem = first.name.removesuffix(f"-00001-of-{count:05d}.gguf")
    return [split_path(first.with_name(f"{stem}.gguf"), i, count) for i in range(1, count + 1)]


def _present(store: Store, digest: str) -> bool:
    """Being written, or (a moment later) committed."""
    return store.partial_path(digest).exists() or store.has_blob(digest)


def test_prune_and_purge_during_a_pull_keep_its_parts(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    parts = _parts(tiny_model_factory(splits=3, reply="kept while pulling"))
    local_registry.push_model("ai/inflight", "v1", parts)
    digests = [sha256_file(p) for p in parts]
    store = Store(tmp_path / "home")
    # Each part takes about a second and a half: part 1 is committed while part 2 is being written.
    with AuthProxy(local_registry.host, rate=max(p.stat().st_size for p in parts) / 1.5) as proxy:
        reference = f"{proxy.host}/ai/inflight:v1"
        child = pull_in_subprocess(store.home, reference, os.environ)
        try:
            _wait_for(
                lambda: store.has_blob(digests[0]) and store.partial_path(digests[1]).exists(),
                "part 1 committed and part 2 being written",
            )
            assert store.prune() == {"files": 0, "bytes": 0}
            assert store.has_blob(digests[0]) and _present(store, digests[1])
            store.purge()
            assert store.has_blob(digests[0]) and _present(store, digests[1])
            _, err = child.communicate(timeout=120)
        finally:
            if child.poll() is None:
                child.kill()
    assert child.returncode == 0, err
    record = store.get(reference)
    assert [p.read_bytes() for p in store.paths(record)] == [p.read_bytes() for p in parts]
    assert list(store.leases_dir.iterdir()) == []


def test_rm_keeps_a_shared_blob_that_a_pull_is_about_to_name(
    local_registry: LocalRegistry, tmp_path: Path, tiny_model_factory: TinyModelFactory
) -> None:
    shared = tiny_model_factory(reply="one file, two models")
    store = Store(tmp_path / "home")
    first = store.import_gguf(shared, "first")
    with store.lease(f.digest for f in first.files):  # what a pull of another name for this file holds
        store.remove(["first"])
        assert store.has_blob(first.files[0].digest)
        second = store.create_model(["second"], first.files)
    assert store.model_file(second).read_bytes() == shared.read_bytes()


def test_a_lease_of_a_killed_process_is_dropped_by_prune(tmp_path: Path, tiny_model: Path) -> None:
    store = Store(tmp_path / "home")
    store.ensure()
    digest = sha256_file(tiny_model)
    blob = store.blob_path(digest)
    blob.write_bytes(tiny_model.read_bytes())  # committed by a pull that never named it
    code = textwrap.dedent(f"""
        import sys, time
        from mr_notebook.store import Store
        with Store({str(store.home)!r}).lease([{digest!r}]):
            print("leased", flush=True)
            time.sleep(60)
    """)
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "leased"
        assert store.prune()["files"] == 0 and blob.exists()
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    assert store.prune() == {"files": 1, "bytes": tiny_model.stat().st_size}
    assert not blob.exists() and list(store.leases_dir.iterdir()) == []


# ---------------------------------------------------------------- index first, then garbage

_FAIL_INDEX_WRITE = """
import errno, sys
from mr_notebook.errors import StoreError
from mr_notebook.store import Store

def refuse_index(event, args):
    # The rename that publishes a new index.json fails, as it would on a full or failing disk.
    if event == "os.rename" and str(args[1]).endswith("index.json"):
        raise OSError(errno.EIO, "Input/output error (injected)")

store = Store(sys.argv[1])
sys.addaudithook(refuse_index)
try:
    {operation}
except StoreError as exc:
    print("refused:", exc)
"""


def _fail_index_write(home: Path, operation: str) -> str:
    code = _FAIL_INDEX_WRITE.format(operation=operation)
    done = subprocess.run([sys.executable, "-c", code, str(home)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("move", ["tag", "create"])
def test_a_failed_index_write_loses_neither_model(
    tmp_path: Path, tiny_model_factory: TinyModelFactory, move: str
) -> None:
    old_file, new_file = tiny_model_factory(reply="the old one"), tiny_model_factory(reply="the new one")
    store = Store(tmp_path / "home")
    old = store.import_gguf(old_file, "ai/tiny:v1")
    if move == "tag":
        store.import_gguf(new_file, "ai/other:v1")
        operation = 'store.tag("ai/other:v1", "ai/tiny:v1")'
    else:
        operation = f'store.import_gguf({str(new_file)!r}, "ai/tiny:v1")'

    assert "refused:" in _fail_index_write(store.home, operation)
    kept = store.get("ai/tiny:v1")
    assert kept.id == old.id
    assert store.model_file(kept).read_bytes() == old_file.read_bytes()

    # The same move on a healthy disk: the name moves, then the old model goes.
    if move == "tag":
        store.tag("ai/other:v1", "ai/tiny:v1")
    else:
        store.import_gguf(new_file, "ai/tiny:v1")
    assert store.model_file(store.get("ai/tiny:v1")).read_bytes() == new_file.read_bytes()
    assert not store.has_blob(old.files[0].digest)
