"""Hostile HTTP against the keyless server: cross-site pages, wrong content types, malformed JSON, bad
durations, oversized bodies, keys on the command line. Each answer is a 4xx in OpenAI's shape.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from test_api_errors import error_of
from test_api_support import MODEL, ServerProcess, chat_body, wait_until

from mr_notebook.api.standalone import start_in_thread
from mr_notebook.cli import main
from mr_notebook.engine import SyncRunner
from mr_notebook.errors import InvalidRequest
from mr_notebook.settings import EngineSettings, parse_duration
from mr_notebook.store import Store
from mr_notebook.testing.tiny_model import TinyModelFactory

pytest_plugins = ["test_api_support"]  # its api_home fixture

ALLOWED = "https://app.example.com, http://*.trusted.test"
EVIL = "https://evil.example"


@pytest.fixture(scope="module")
def server(api_home: Path) -> Iterator[ServerProcess]:
    process = ServerProcess(api_home, env={"MR_NOTEBOOK_ORIGINS": ALLOWED})
    yield process
    process.stop()


def port_of(server: ServerProcess) -> int:
    return int(server.url.rstrip("/").rsplit(":", 1)[1])


def strict_json(text: str) -> Any:
    def refuse(name: str) -> Any:
        raise ValueError(f"{name} in JSON")

    return json.loads(text, parse_constant=refuse)


# ---------------------------------------------------------------------- cross-site requests


def test_simple_cross_site_posts_are_refused_and_do_nothing(server: ServerProcess) -> None:
    loaded = httpx.post(server.url + "v1/chat/completions", json=chat_body(max_tokens=2), timeout=60)
    assert loaded.status_code == 200
    body = json.dumps({"all": True})
    # What a web page can send without a preflight: text/plain, a form, and the same with JSON's type.
    for content_type in ("text/plain", "application/x-www-form-urlencoded", "application/json"):
        refused = httpx.post(
            server.url + "engines/unload",
            content=body,
            headers={"Origin": EVIL, "Content-Type": content_type, "Sec-Fetch-Site": "cross-site"},
            timeout=30,
        )
        error = error_of(refused, 403)
        assert "MR_NOTEBOOK_ORIGINS" in error["message"] and EVIL in error["message"]
        assert "Access-Control-Allow-Origin" not in refused.headers
    assert [row["model"] for row in server.ps()] == [MODEL]  # still loaded
    reading = httpx.get(server.url + "engines/ps", headers={"Origin": EVIL}, timeout=30)
    error_of(reading, 403)


def test_cross_site_fetch_metadata_without_origin_is_refused(server: ServerProcess) -> None:
    # e.g. <img src> or a navigation: the browser says cross-site but sends no Origin.
    error = error_of(httpx.get(server.url + "v1/models", headers={"Sec-Fetch-Site": "cross-site"}, timeout=30), 403)
    assert "--allowed-origins" in error["message"]


def test_programs_without_origin_and_the_servers_own_origins_work(server: ServerProcess) -> None:
    port = port_of(server)
    assert httpx.get(server.url + "v1/models", timeout=30).status_code == 200
    for origin in (f"http://127.0.0.1:{port}", f"http://localhost:{port}", f"http://[::1]:{port}"):
        response = httpx.get(
            server.url + "v1/models", headers={"Origin": origin, "Sec-Fetch-Site": "same-origin"}, timeout=30
        )
        assert response.status_code == 200, (origin, response.text)
    # Another port on localhost is another site's page (a dev server, another app): refused.
    error_of(httpx.get(server.url + "v1/models", headers={"Origin": f"http://localhost:{port + 1}"}, timeout=30), 403)
    error_of(httpx.get(server.url + "v1/models", headers={"Origin": "null"}, timeout=30), 403)


def test_allowed_origins_get_cors_headers_and_preflights(server: ServerProcess) -> None:
    for origin in ("https://app.example.com", "http://notebook.trusted.test"):
        response = httpx.post(
            server.url + "v1/chat/completions",
            json=chat_body(max_tokens=2),
            headers={"Origin": origin, "Sec-Fetch-Site": "cross-site"},
            timeout=60,
        )
        assert response.status_code == 200, response.text
        assert response.headers["Access-Control-Allow-Origin"] == origin
        preflight = httpx.options(
            server.url + "v1/chat/completions",
            headers={
                "Origin": origin,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization, content-type",
                "Access-Control-Request-Private-Network": "true",
            },
            timeout=30,
        )
        assert preflight.status_code == 204
        assert preflight.headers["Access-Control-Allow-Private-Network"] == "true"
        assert preflight.headers["Access-Control-Allow-Origin"] == origin
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert preflight.headers["Access-Control-Allow-Headers"] == "authorization, content-type"
    # Errors carry the header too, so the page can read them.
    missing = httpx.get(server.url + "v1/models/ai/absent", headers={"Origin": "https://app.example.com"}, timeout=30)
    assert missing.status_code == 404 and missing.headers["Access-Control-Allow-Origin"] == "https://app.example.com"
    refused = httpx.options(
        server.url + "v1/chat/completions", headers={"Origin": EVIL, "Access-Control-Request-Method": "POST"}
    )
    error_of(refused, 403)
    # The wildcard stands for one host part, not for any suffix an attacker can register.
    error_of(httpx.get(server.url + "v1/models", headers={"Origin": "http://x.trusted.test.evil.example"}), 403)


def test_in_kernel_server_checks_origins(tmp_path: Path, tiny_model_factory: TinyModelFactory) -> None:
    store = Store(tmp_path / "home")
    store.import_gguf(tiny_model_factory(), MODEL)
    runner = SyncRunner(store)
    try:
        handle = start_in_thread(runner, store, origins="https://lab.example.org")
        try:
            assert httpx.get(handle.url + "v1/models", timeout=30).status_code == 200
            error_of(httpx.get(handle.url + "v1/models", headers={"Origin": EVIL}, timeout=30), 403)
            allowed = httpx.get(handle.url + "v1/models", headers={"Origin": "https://lab.example.org"}, timeout=30)
            assert allowed.status_code == 200
        finally:
            handle.stop()
    finally:
        runner.close()


# ---------------------------------------------------------------------- bodies


@pytest.mark.parametrize(
    "content_type", [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"]
)
def test_json_bodies_need_the_json_content_type(server: ServerProcess, content_type: str | None) -> None:
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = httpx.post(
        server.url + "v1/chat/completions", content=json.dumps(chat_body()), headers=headers, timeout=30
    )
    error = error_of(response, 415)
    assert error["code"] == "unsupported_media_type" and "Content-Type: application/json" in error["message"]


def test_json_with_a_charset_is_accepted(server: ServerProcess) -> None:
    response = httpx.post(
        server.url + "v1/chat/completions",
        content=json.dumps(chat_body(max_tokens=2)).encode(),
        headers={"Content-Type": "Application/JSON; charset=utf-8"},
        timeout=60,
    )
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        ("[" * 100_000, "nested more than 64 levels"),
        ('{"model": "x", "chat_template_kwargs": {"a": ' + "[" * 600 + "]" * 600 + "}}", "nested more than 64"),
        ('{"model": "x", "response_format": ' + '{"a": ' * 65 + "1" + "}" * 66, "nested more than 64"),
        ('{"model": "x", "seed": ' + "9" * 5000 + "}", "over 4300 digits"),
        ('{"model": "x", "max_tokens": ' + "1" * 30 + "}", "30 digits"),
        ('{"model": "x", "temperature": NaN}', "NaN is not valid JSON"),
        ('{"model": "x", "temperature": -Infinity}', "Infinity is not valid JSON"),
        ('{"model": "x", "temperature": 1e999}', "out of range"),
        ('{"model": "x", "logit_bias": {"1": -1e400}}', "out of range"),
        ('{"model": "x", "stop": [' + "[" * 63 + "]" * 63 + "]}", "nested more than 64"),
    ],
)
def test_hostile_json_is_a_400(server: ServerProcess, content: str, fragment: str) -> None:
    response = httpx.post(
        server.url + "v1/chat/completions",
        content=content,
        headers={"Content-Type": "application/json"},
        timeout=30,
    )
    error = error_of(response, 400)
    assert error["code"] == "invalid_json" and fragment in error["message"], error
    assert httpx.get(server.url + "health", timeout=10).status_code == 200


def _raw_request(url: str, head: str) -> socket.socket:
    host, port = url.split("//")[1].rstrip("/").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=30)
    sock.sendall(head.encode())
    return sock


def _read_response(sock: socket.socket) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data.decode("latin-1")


def test_declared_oversize_body_is_refused_before_it_is_sent(server: ServerProcess) -> None:
    # 200 MB announced, nothing sent: the answer must come from the headers alone.
    sock = _raw_request(
        server.url,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Content-Length: 200000000\r\n\r\n",
    )
    with sock:
        sock.settimeout(10)
        answer = _read_response(sock)
    assert answer.startswith("HTTP/1.1 413"), answer[:200]
    assert "request_too_large" in answer or "Content-Length" in answer or "413" in answer


def test_chunked_oversize_body_is_not_buffered(server: ServerProcess) -> None:
    """64 MiB chunked (no Content-Length) against the 16 MiB limit: the server stops reading at the limit."""
    sock = _raw_request(
        server.url,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
    )
    chunk = b"x" * (1024 * 1024)
    sent = 0
    with sock, pytest.raises(OSError):  # BrokenPipe / ConnectionReset once the server has closed
        sock.settimeout(30)
        for _ in range(64):
            sock.sendall(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
        sock.sendall(b"0\r\n\r\n")
        if not sock.recv(1):  # the server read everything: fail below with the count
            raise OSError("closed after reading")
        pytest.fail(f"the server accepted {sent} bytes")
    assert sent < 40 * 1024 * 1024, f"the server read {sent} bytes before closing"
    assert httpx.get(server.url + "health", timeout=10).status_code == 200


# ---------------------------------------------------------------------- durations


@pytest.mark.parametrize("value", [1e300, -5, -0.5, 400 * 86400, "99999999999d", "9" * 400, "-1m", "nan", "inf"])
def test_bad_keep_alive_is_refused_by_the_api(server: ServerProcess, value: object) -> None:
    chat = httpx.post(server.url + "v1/chat/completions", json=chat_body(keep_alive=value, max_tokens=2), timeout=60)
    assert error_of(chat, 400)["param"] == "keep_alive"
    configure = httpx.post(server.url + "engines/_configure", json={"model": MODEL, "keep_alive": value}, timeout=30)
    assert error_of(configure, 400)["param"] == "keep_alive"
    rows = strict_json(httpx.get(server.url + "engines/ps", timeout=30).text)
    assert all(row["keep_alive"] == -1 or 0 <= row["keep_alive"] <= 365 * 86400 for row in rows)


def test_forever_and_ordinary_keep_alive_still_work(server: ServerProcess) -> None:
    for value in (-1, "-1", "10m", 30, "0.5h"):
        chat = httpx.post(server.url + "v1/chat/completions", json=chat_body(keep_alive=value, max_tokens=2))
        assert chat.status_code == 200, chat.text
        rows = strict_json(httpx.get(server.url + "engines/ps", timeout=30).text)
        assert rows and rows[0]["keep_alive"] == parse_duration(value)


@pytest.mark.parametrize("value", ["-5", "99999999999d", "9" * 400, "-1m"])
def test_bad_keep_alive_is_refused_by_the_cli(value: str, store_home: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["configure", MODEL, f"--keep-alive={value}"]) == 1
    assert "keep_alive" in capsys.readouterr().err


@pytest.mark.parametrize("value", ["-5", "99999999999d", "nan", "1e300"])
def test_bad_keep_alive_is_refused_by_settings(value: str) -> None:
    with pytest.raises(InvalidRequest, match="keep_alive"):
        EngineSettings.from_env({"MR_NOTEBOOK_KEEP_ALIVE": value})


def test_bad_keep_alive_is_refused_by_the_magics(store_home: Path) -> None:
    from IPython.core.error import UsageError
    from IPython.testing.globalipapp import start_ipython
    from IPython.utils.capture import capture_output

    ip = start_ipython() or __import__("IPython").get_ipython()
    assert ip is not None
    ip.run_line_magic("load_ext", "mr_notebook")
    try:
        for line in (f"configure {MODEL} --keep-alive -5", f"run {MODEL} --keep-alive 99999999999d"):
            with capture_output() as captured:
                result = ip.run_cell(f"%model {line}", store_history=False)
            assert isinstance(result.error_in_exec, UsageError), (line, result.error_in_exec)
            assert "keep_alive" in str(result.error_in_exec) or "keep_alive" in captured.stderr
    finally:
        ip.run_line_magic("unload_ext", "mr_notebook")


# ---------------------------------------------------------------------- API keys


def _serve(home: Path, *args: str, env: dict[str, str] | None = None) -> tuple[subprocess.Popen[bytes], str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MR_NOTEBOOK_")}
    full_env.update({"MR_NOTEBOOK_HOME": str(home), **(env or {})})
    log = home / "cli-serve.log"
    home.mkdir(parents=True, exist_ok=True)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mr_notebook.cli", "serve", "--port", "0", *args],
            env=full_env,
            stdout=out,
            stderr=out,
        )
    runtime = home / "run" / "server.json"

    def up() -> bool:
        if proc.poll() is not None:
            raise AssertionError(log.read_text())
        try:
            return bool(json.loads(runtime.read_text())["pid"] == proc.pid)
        except (OSError, ValueError, KeyError):
            return False

    wait_until(up, 60, "mr-notebook serve")
    return proc, str(json.loads(runtime.read_text())["url"])


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("how", ["file", "env", "flag"])
def test_api_key_from_a_file_or_the_environment(tmp_path: Path, how: str) -> None:
    key = "s3cret-key-for-tests"
    key_file = tmp_path / "key"
    key_file.write_text(key + "\n")
    key_file.chmod(0o600)
    args = {"file": ("--api-key-file", str(key_file)), "env": (), "flag": ("--api-key", key)}[how]
    env = {"MR_NOTEBOOK_API_KEY": key} if how == "env" else None
    proc, url = _serve(tmp_path / "home", *args, env=env)
    try:
        assert error_of(httpx.get(url + "v1/models", timeout=30), 401)["code"] == "invalid_api_key"
        good = httpx.get(url + "v1/models", headers={"Authorization": f"Bearer {key}"}, timeout=30)
        assert good.status_code == 200
        cmdline = Path(f"/proc/{proc.pid}/cmdline").read_bytes()
        assert (key.encode() in cmdline) == (how == "flag")
    finally:
        _stop(proc)
    log = (tmp_path / "home" / "cli-serve.log").read_text()
    assert ("--api-key is visible" in log) == (how == "flag")
    assert key not in log


def test_api_key_file_errors_say_what_to_do(
    tmp_path: Path, store_home: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["serve", "--port", "0", "--api-key-file", str(tmp_path / "absent")]) == 1
    assert "Cannot read the API key" in capsys.readouterr().err
    (tmp_path / "empty").write_text("\n")
    assert main(["serve", "--port", "0", "--api-key-file", str(tmp_path / "empty")]) == 1
    assert "empty" in capsys.readouterr().err
    assert main(["serve", "--allowed-origins", "not an origin!"]) == 1
    assert "Invalid origin" in capsys.readouterr().err


def test_strict_json_limits_are_exact() -> None:
    from mr_notebook.api.jsonbody import MAX_JSON_DEPTH, InvalidJSON, parse_json

    assert parse_json(("[" * MAX_JSON_DEPTH + "]" * MAX_JSON_DEPTH).encode()) is not None
    with pytest.raises(InvalidJSON, match="nested"):
        parse_json(("[" * (MAX_JSON_DEPTH + 1) + "]" * (MAX_JSON_DEPTH + 1)).encode())
    deep_dicts = '{"a": ' * MAX_JSON_DEPTH + "1" + "}" * MAX_JSON_DEPTH
    assert parse_json(deep_dicts.encode())
    twenty_digits = b'{"seed": 18446744073709551615, "n": -99999999999999999999, "t": true, "s": "'
    assert parse_json(twenty_digits + b"9" * 50 + b'"}')
    with pytest.raises(InvalidJSON, match="21 digits"):
        parse_json(b'{"a": [1, {"b": [100000000000000000000]}]}')
    assert parse_json(b'{"x": 1.5e300, "y": [0.1, -2]}') == {"x": 1.5e300, "y": [0.1, -2]}
