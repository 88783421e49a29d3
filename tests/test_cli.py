"""`mr-notebook` store commands, run as a real subprocess like a user would."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil

from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory
from mr_notebook.testing.registry import LocalRegistry, free_port


def mr(*args: str, home: Path, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "mr_notebook.cli", "--home", str(home), *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=60,
        check=False,
    )


def test_package_list_inspect_tag_rm(store_home: Path, tiny_model: Path) -> None:
    done = mr("package", "--gguf", str(tiny_model), "ai/tiny:v1", home=store_home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("Model ai/tiny:v1 added (")

    table = mr("list", home=store_home).stdout.splitlines()
    assert table[0].split("   ")[0] == "MODEL NAME"
    for column in ("PARAMETERS", "QUANTIZATION", "ARCHITECTURE", "MODEL ID", "CREATED", "CONTEXT", "SIZE"):
        assert column in table[0]
    assert table[1].startswith("ai/tiny:v1") and "F16" in table[1] and "llama" in table[1] and "512" in table[1]

    listed = json.loads(mr("list", "--json", home=store_home).stdout)
    assert list(listed[0]) == ["id", "tags", "created", "config"]
    assert listed[0]["tags"] == ["ai/tiny:v1"]
    assert listed[0]["config"]["architecture"] == "llama"
    assert mr("ls", "-q", home=store_home).stdout.strip() == listed[0]["id"][7:19]

    inspected = json.loads(mr("inspect", "tiny:v1", home=store_home).stdout)
    assert inspected["id"] == listed[0]["id"] and inspected["config"]["quantization"] == "F16"

    assert mr("tag", "ai/tiny:v1", "tiny:copy", home=store_home).returncode == 0
    assert json.loads(mr("inspect", "ai/tiny:copy", home=store_home).stdout)["id"] == listed[0]["id"]
    removed = mr("rm", "ai/tiny:v1", "tiny:copy", home=store_home)
    assert removed.returncode == 0
    assert "Deleted: " + listed[0]["id"] in removed.stdout
    assert mr("list", "-q", home=store_home).stdout == ""


def test_unknown_model_exits_1_and_says_how_to_get_it(store_home: Path) -> None:
    done = mr("inspect", "ai/nothing", home=store_home)
    assert done.returncode == 1
    assert "mr-notebook pull ai/nothing:latest" in done.stderr
    assert "Traceback" not in done.stderr


def test_usage_errors_exit_2(store_home: Path) -> None:
    assert mr("package", "x", home=store_home).returncode == 2  # --gguf missing
    assert mr("frobnicate", home=store_home).returncode == 2
    bad = mr("package", "--gguf", "/nonexistent.gguf", "Bad Name", home=store_home)
    assert bad.returncode == 1 and "Accepted forms" in bad.stderr


def test_corrupt_file_is_refused(store_home: Path, tmp_path: Path) -> None:
    junk = tmp_path / "junk.gguf"
    junk.write_bytes(b"PK\x03\x04 not a model")
    done = mr("package", "--gguf", str(junk), "junk", home=store_home)
    assert done.returncode == 1 and "not a GGUF model file" in done.stderr
    assert mr("list", "-q", home=store_home).stdout == ""


def test_df_prune_purge(store_home: Path, tiny_model_factory: TinyModelFactory) -> None:
    mr("package", "--gguf", str(tiny_model_factory()), "one", home=store_home)
    mr("package", "--gguf", str(tiny_model_factory(reply="Two.")), "two", home=store_home)
    partial = store_home / "blobs" / "sha256" / ("4" * 64 + ".incomplete")
    partial.write_bytes(b"z" * 2048)
    df = mr("df", home=store_home).stdout
    assert "Models" in df and "Partial downloads" in df and "2.00 KiB" in df
    assert "Removed 1 unused file(s), reclaimed 2.00 KiB" in mr("prune", home=store_home).stdout
    refused = mr("purge", home=store_home, stdin="")
    assert refused.returncode == 1 and "--force" in refused.stderr
    assert len(mr("list", "-q", home=store_home).stdout.split()) == 2
    assert "Deleted 2 model(s)" in mr("purge", "-f", home=store_home).stdout
    assert mr("list", "-q", home=store_home).stdout == ""


def test_pull_from_a_local_registry(store_home: Path, tiny_model: Path, local_registry: LocalRegistry) -> None:
    local_registry.push_model("ai/tiny", "1B-Q8_0", [tiny_model])
    name = f"{local_registry.host}/ai/tiny:1B-Q8_0"
    done = mr("pull", name, home=store_home)
    assert done.returncode == 0, done.stderr
    assert f"Pulled {name} (" in done.stdout
    assert "B/s" in done.stderr  # the progress bar (bytes, speed) goes to stderr
    row = mr("list", home=store_home).stdout.splitlines()[1]
    assert row.startswith(name) and "Q8_0" in row and "llama" in row
    again = mr("pull", name, home=store_home)
    assert again.returncode == 0 and "up to date" in again.stdout


def test_pull_of_a_missing_model_says_so(store_home: Path, local_registry: LocalRegistry) -> None:
    done = mr("pull", f"{local_registry.host}/ai/nothing:v1", home=store_home)
    assert done.returncode == 1
    assert "ai/nothing" in done.stderr and "Traceback" not in done.stderr


def test_run_with_a_prompt_in_process(store_home: Path, tiny_model: Path) -> None:
    mr("package", "--gguf", str(tiny_model), "ai/tiny", home=store_home)
    done = mr("run", "ai/tiny", "Say", "hello", home=store_home)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == DEFAULT_REPLY
    piped = mr("run", "tiny", home=store_home, stdin="A question from a pipe\n")
    assert piped.stdout.strip() == DEFAULT_REPLY
    missing = mr("run", "ai/absent", "hi", home=store_home)
    assert missing.returncode == 1 and "mr-notebook pull ai/absent:latest" in missing.stderr


def test_configure_and_status_in_process(store_home: Path, tiny_model: Path) -> None:
    mr("package", "--gguf", str(tiny_model), "ai/tiny", home=store_home)
    done = mr("configure", "ai/tiny", "--context-size", "256", "--keep-alive", "30s", home=store_home)
    assert done.returncode == 0, done.stderr
    assert json.loads(mr("inspect", "ai/tiny", home=store_home).stdout)["settings"] == {
        "context_size": 256,
        "keep_alive": 30.0,
    }
    bad = mr("configure", "ai/tiny", "--keep-alive", "soon", home=store_home)
    assert bad.returncode == 1 and "30s" in bad.stderr
    status = json.loads(mr("status", "--json", home=store_home).stdout)
    assert status["mode"] == "local"


def test_serve_is_shared_by_later_commands(store_home: Path, tiny_model: Path) -> None:
    """`mr-notebook serve` announces itself; run/ps/unload use it; SIGTERM ends it and its workers."""
    mr("package", "--gguf", str(tiny_model), "ai/tiny", home=store_home)
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "mr_notebook.cli", "--home", str(store_home), "serve", "--port", str(port)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        runtime = store_home / "run" / "server.json"
        deadline = time.monotonic() + 30
        while not runtime.exists() and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.1)
        assert json.loads(runtime.read_text())["url"] == f"http://127.0.0.1:{port}/"
        assert json.loads(mr("status", "--json", home=store_home).stdout)["mode"] == "remote"
        assert mr("run", "ai/tiny", "hi", home=store_home).stdout.strip() == DEFAULT_REPLY
        table = mr("ps", home=store_home).stdout.splitlines()
        assert table[0].startswith("MODEL NAME") and table[1].startswith("ai/tiny:latest")
        worker = int(table[1].split()[1])
        assert mr("unload", "--all", home=store_home).stdout.strip() == "Unloaded 1 model(s)"
        assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
        assert mr("ps", home=store_home).stdout.splitlines()[1:] == []
        assert mr("run", "ai/tiny", "again", home=store_home).returncode == 0
        worker = int(mr("ps", home=store_home).stdout.splitlines()[1].split()[1])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(timeout=30)
    assert server.returncode == 0, server.stderr.read()
    assert not runtime.exists()
    assert not psutil.pid_exists(worker) or psutil.Process(worker).status() == psutil.STATUS_ZOMBIE
