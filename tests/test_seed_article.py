"""The seed article's examples, run as written against `serve()`: only the host changes, and the model
`ai/llama3.2:1B-Q8_0` is a tiny test model (so the answers are its fixed reply)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import httpx
import pytest
from test_api_support import REPLY, ServerProcess

pytest_plugins = ["test_api_support"]  # its api_home / api_server fixtures

ARTICLE_HOST = "http://localhost:12434/"
NODE_DIR = Path(__file__).parent / "node"

CURL_COMMAND = """curl http://localhost:12434/engines/ai/llama3.2:1B-Q8_0/v1/chat/completions \\
  -H "Content-Type: application/json" \\
  -d '{
    "model": "ai/llama3.2:1B-Q8_0",
    "messages": [
      {"role": "system", "content": "You are a helpful assistant."},
      {"role": "user", "content": "Explain Docker volumes in 3 sentences."}
    ],
    "temperature": 0.7,
    "max_tokens": 256
  }'"""

APP_PY = """
# app.py - Using a local Docker model with the OpenAI Python client
from openai import OpenAI

# Point the client to the local Docker Model Runner endpoint
client = OpenAI(
    base_url="http://localhost:12434/engines/ai/llama3.2:1B-Q8_0/v1",
    api_key="not-needed"  # Local models do not require an API key
)

# Send a chat completion request
response = client.chat.completions.create(
    model="ai/llama3.2:1B-Q8_0",
    messages=[
        {"role": "system", "content": "You are a helpful DevOps assistant."},
        {"role": "user", "content": "Write a Dockerfile for a Python Flask app."}
    ],
    temperature=0.7,
    max_tokens=1024
)

print(response.choices[0].message.content)
"""

STREAM_EXAMPLE_PY = """
# stream_example.py - Stream responses from a local Docker model
from openai import OpenAI

client = OpenAI(
    base_url="http://localhost:12434/engines/ai/llama3.2:1B-Q8_0/v1",
    api_key="not-needed"
)

# Enable streaming for real-time output
stream = client.chat.completions.create(
    model="ai/llama3.2:1B-Q8_0",
    messages=[
        {"role": "user", "content": "Write a comprehensive guide to Docker networking."}
    ],
    stream=True
)

# Print tokens as they arrive
for chunk in stream:
    if chunk.choices[0].delta.content:
        print(chunk.choices[0].delta.content, end="", flush=True)
"""


def on_server(text: str, server: ServerProcess) -> str:
    assert ARTICLE_HOST in text
    return text.replace(ARTICLE_HOST, server.url)


def run_python(code: str, tmp_path: Path, name: str) -> str:
    script = tmp_path / name
    script.write_text(textwrap.dedent(code))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_curl_chat_request(api_server: ServerProcess) -> None:
    curl = shutil.which("curl")
    assert curl is not None, "the curl binary is needed (apt-get install curl)"
    done = subprocess.run(
        ["bash", "-c", on_server(CURL_COMMAND, api_server)], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["object"] == "chat.completion" and answer["model"] == "ai/llama3.2:1B-Q8_0"
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": REPLY, "refusal": None}
    assert answer["choices"][0]["finish_reason"] == "stop"


def test_openai_client_with_the_model_in_base_url(api_server: ServerProcess, tmp_path: Path) -> None:
    assert run_python(on_server(APP_PY, api_server), tmp_path, "app.py") == REPLY + "\n"


def test_streaming_loop(api_server: ServerProcess, tmp_path: Path) -> None:
    assert run_python(on_server(STREAM_EXAMPLE_PY, api_server), tmp_path, "stream_example.py") == REPLY


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="session")
def summarizer_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/node with Express installed from npm (into a temp copy: the source tree stays clean)."""
    npm = shutil.which("npm")
    assert npm is not None and shutil.which("node") is not None, "Node.js 20 and npm are needed"
    folder = tmp_path_factory.mktemp("summarizer")
    for name in ("package.json", "summarizer.js"):
        shutil.copy(NODE_DIR / name, folder / name)
    done = subprocess.run(
        [npm, "install", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=folder, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return folder


def test_node_summarizer(api_server: ServerProcess, summarizer_dir: Path) -> None:
    port = free_port()
    env = {
        **os.environ,
        "AI_API_URL": api_server.url + "engines/ai/llama3.2:1B-Q8_0/v1",  # as the article's Compose file sets it
        "PORT": str(port),
    }
    app = subprocess.Popen(["node", "summarizer.js"], cwd=summarizer_dir, env=env, stdout=subprocess.PIPE, text=True)
    try:
        assert app.stdout is not None and "Summarizer running" in app.stdout.readline()
        deadline = time.monotonic() + 30
        while True:  # the log line comes from listen's callback, but be patient with a busy machine
            try:
                response = httpx.post(
                    f"http://127.0.0.1:{port}/api/summarize",
                    json={"text": "Docker volumes keep data outside containers."},
                    timeout=60,
                )
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        assert response.status_code == 200
        assert response.json() == {"summary": REPLY}
    finally:
        app.terminate()
        app.wait(30)
