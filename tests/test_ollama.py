"""Ollama's API, driven by the real `ollama` library (and LangChain's ChatOllama), with tiny models; the
clients' own tests run against both hosts (`serve()` and a real `jupyter server` with the extension)."""

from __future__ import annotations

import json
import os
import signal
from datetime import datetime
from pathlib import Path

import httpx
import ollama
import pytest
from test_api_support import EMBED, LONG, MODEL, NEVER, REPLY, ServerProcess, serving, wait_until
from test_protocol_support import (
    ANSWER_REPLY,
    ANSWERER,
    EFFORT,
    GENERIC,
    HERMES,
    QWEN3,
    THINKER,
    WEATHER_TOOL,
    weather,
)

from mr_notebook.testing.pull_fixtures import local_registry  # noqa: F401
from mr_notebook.testing.registry import LocalRegistry
from mr_notebook.testing.tiny_model import TinyModelFactory

ASK = [{"role": "user", "content": "Hello?"}]


pytest_plugins = ["test_protocol_support"]  # protocol_home / protocol_server, shared by the protocol tests


@pytest.fixture
def server(protocol_server: ServerProcess) -> ServerProcess:
    return protocol_server


def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.url, timeout=60)


def test_root_version_tags_show(server: ServerProcess) -> None:
    root = httpx.get(server.url, timeout=10)
    assert root.status_code == 200 and root.text == "Ollama is running"
    assert httpx.get(server.url + "api/version", timeout=10).json()["version"]
    c = client(server)
    names = {m.model for m in c.list().models}
    assert {MODEL, EMBED, HERMES} <= names
    row = next(m for m in c.list().models if m.model == MODEL)
    assert row.size and row.size > 0 and row.digest and row.details and row.details.format == "gguf"
    assert row.details.family == "llama" and row.modified_at is not None
    shown = c.show(MODEL)
    assert shown.capabilities == ["completion"]
    assert shown.modelinfo and shown.modelinfo["general.architecture"] == "llama"
    assert shown.modelinfo["llama.context_length"] == 512
    assert "<|im_start|>" in (shown.template or "")
    assert set(c.show(HERMES).capabilities or []) == {"completion", "tools"}
    assert set(c.show(THINKER).capabilities or []) == {"completion", "thinking"}
    assert c.show(EMBED).capabilities == ["embedding"]
    # Ollama's old field name, and a short name (no namespace means ai/).
    legacy = httpx.post(server.url + "api/show", json={"name": "llama3.2:1B-Q8_0"}, timeout=10)
    assert legacy.status_code == 200 and legacy.json()["details"]["family"] == "llama"


def test_chat_whole_and_streamed(server: ServerProcess) -> None:
    c = client(server)
    assert httpx.post(server.url + "engines/unload", json={"all": True}, timeout=30).status_code == 200
    cold = c.chat(model=MODEL, messages=ASK, stream=False)
    warm = c.chat(model=MODEL, messages=ASK, stream=False, keep_alive=0)
    assert cold.load_duration and cold.load_duration > 0 and warm.load_duration == 0
    # keep_alive 0: unloaded once answered
    wait_until(lambda: MODEL not in {m.model for m in c.ps().models}, message="the model to unload")
    answer = c.chat(model=MODEL, messages=ASK, stream=False, options={"temperature": 0.3, "seed": 7})
    assert answer.message.role == "assistant" and answer.message.content == REPLY
    assert answer.done and answer.done_reason == "stop"
    assert answer.eval_count and answer.eval_count > 0 and answer.prompt_eval_count and answer.prompt_eval_count > 0
    assert answer.total_duration and answer.total_duration >= (answer.eval_duration or 0) > 0  # nanoseconds
    assert datetime.fromisoformat(str(answer.created_at).replace("Z", "+00:00")).tzinfo is not None
    parts = list(c.chat(model="llama3.2:1B-Q8_0", messages=ASK, stream=True))
    assert "".join(p.message.content or "" for p in parts) == REPLY
    assert [p.done for p in parts].count(True) == 1 and parts[-1].done and parts[-1].done_reason == "stop"
    with httpx.stream("POST", server.url + "api/chat", json={"model": MODEL, "messages": ASK}, timeout=60) as raw:
        assert raw.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in raw.iter_lines() if line]
    assert len(lines) >= 2 and lines[-1]["done"] is True


def test_generate_options_and_format(server: ServerProcess) -> None:
    c = client(server)
    assert c.generate(model=MODEL, prompt="Hi", stream=False).response == REPLY
    assert "".join(p.response for p in c.generate(model=MODEL, prompt="Hi", stream=True)) == REPLY
    cut = c.generate(model=NEVER, prompt="sing", options={"num_predict": 3}, stream=False)
    assert cut.done_reason == "length" and cut.eval_count == 3
    raw = c.generate(model=MODEL, prompt="Once upon a time", raw=True, stream=False)
    assert raw.response == REPLY
    schema = {"type": "object", "properties": {"name": {"type": "string"}, "arguments": {"type": "object"}}}
    for fmt in ("json", schema):
        reply = c.chat(model=GENERIC, messages=ASK, format=fmt, stream=False)  # type: ignore[arg-type]
        assert json.loads(reply.message.content or "")["name"] == "get_weather"
    with pytest.raises(ollama.ResponseError) as bad:
        c.generate(model=MODEL, prompt="x", options={"num_predict": "lots"})  # type: ignore[dict-item]
    assert bad.value.status_code == 400 and "num_predict" in bad.value.error
    with pytest.raises(ollama.ResponseError) as fim:
        c.generate(model=MODEL, prompt="def f(", suffix="return 1", stream=False)
    assert fim.value.status_code == 400 and "fill-in-the-middle" in fim.value.error


def test_empty_prompt_loads_and_keep_alive_zero_unloads(server: ServerProcess) -> None:
    c = client(server)
    loaded = c.generate(model=EMBED, prompt="", keep_alive="10m")
    assert loaded.done and loaded.done_reason == "load"
    running = {m.model: m for m in c.ps().models}
    assert EMBED in running and running[EMBED].context_length and running[EMBED].size
    assert running[EMBED].expires_at is not None
    unloaded = c.generate(model=EMBED, prompt="", keep_alive=0)
    assert unloaded.done_reason == "unload"
    assert EMBED not in {m.model for m in c.ps().models}
    chat_load = httpx.post(server.url + "api/chat", json={"model": EMBED, "messages": []}, timeout=60).json()
    assert chat_load["done_reason"] == "load" and chat_load["message"]["content"] == ""


def test_num_ctx_reloads_the_model_with_that_context(server: ServerProcess) -> None:
    c = client(server)

    def worker() -> tuple[object, object]:
        (row,) = [r for r in server.ps() if r["model"] == EFFORT]
        return row["pid"], row["context_size"]

    assert c.chat(model=EFFORT, messages=ASK, options={"num_ctx": 512}).message.content
    pid, size = worker()
    assert size == 512 and {m.model: m for m in c.ps().models}[EFFORT].context_length == 512
    c.generate(model=EFFORT, prompt="Hi", options={"num_ctx": 1024})
    reloaded, size = worker()
    assert reloaded != pid and size == 1024  # another context: a fresh worker, as Ollama reloads
    c.chat(model=EFFORT, messages=ASK)
    c.chat(model=EFFORT, messages=ASK, options={"num_ctx": 1024})
    assert worker() == (reloaded, 1024)  # no num_ctx, or the same one: the loaded model serves
    for wrong in ("big", 8, 1 << 40):
        with pytest.raises(ollama.ResponseError) as bad:
            c.chat(model=EFFORT, messages=ASK, options={"num_ctx": wrong})
        assert bad.value.status_code == 400 and "num_ctx" in bad.value.error
    # More than the memory budget holds: a clear 507 (the model loads again with what fits afterwards).
    with pytest.raises(ollama.ResponseError) as huge:
        c.chat(model=EFFORT, messages=ASK, options={"num_ctx": 1 << 24})
    assert huge.value.status_code == 507 and "context" in huge.value.error
    assert c.chat(model=EFFORT, messages=ASK).message.content


def test_embed_and_legacy_embeddings(server: ServerProcess) -> None:
    c = client(server)
    result = c.embed(model=EMBED, input=["hello world", "something else"])
    assert len(result.embeddings) == 2 and len(result.embeddings[0]) == 64
    assert result.embeddings[0] != result.embeddings[1] and result.prompt_eval_count
    legacy = c.embeddings(model=EMBED, prompt="hello world")
    assert legacy.embedding == pytest.approx(list(result.embeddings[0]), abs=1e-5)


def test_tools_and_thinking(server: ServerProcess) -> None:
    c = client(server)
    for model in (HERMES, QWEN3):
        answer = c.chat(model=model, messages=ASK, tools=[WEATHER_TOOL], stream=False)
        (call,) = answer.message.tool_calls or []
        assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    streamed = [p for p in c.chat(model=HERMES, messages=ASK, tools=[WEATHER_TOOL], stream=True)]
    calls = [call for p in streamed for call in (p.message.tool_calls or [])]
    assert [call.function.arguments for call in calls] == [{"city": "Paris"}]
    # The tool round trip: the call and its result go back in the history.
    call = {"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}
    history = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "sunny", "tool_name": "get_weather"},
    ]
    assert c.chat(model=MODEL, messages=history, tools=[WEATHER_TOOL]).message.content == REPLY
    thought = c.chat(model=THINKER, messages=ASK, think=True, stream=False)
    assert thought.message.thinking == "The user greets me." and thought.message.content == "Hello there!"
    quiet = c.chat(model=THINKER, messages=ASK, think=False, stream=False)
    assert not quiet.message.thinking and quiet.message.content == "Hello there!"
    pieces = list(c.generate(model=THINKER, prompt="Hi", think=True, stream=True))
    assert "".join(p.thinking or "" for p in pieces) == "The user greets me."
    # A think level reaches the template as reasoning_effort (what gpt-oss templates read).
    plain, high = c.chat(model=EFFORT, messages=ASK), c.chat(model=EFFORT, messages=ASK, think="high")
    assert plain.prompt_eval_count and high.prompt_eval_count and high.prompt_eval_count > plain.prompt_eval_count


def test_pull_copy_delete(
    server: ServerProcess,
    local_registry: LocalRegistry,  # noqa: F811
    tiny_model_factory: TinyModelFactory,
) -> None:
    gguf = tiny_model_factory(reply="Pulled by Ollama.", seed=11)
    local_registry.push_model("ai/ollamapull", "v1", [gguf])
    reference = f"{local_registry.host}/ai/ollamapull:v1"
    c = client(server)
    statuses = list(c.pull(reference, stream=True))
    names = [s.status for s in statuses]
    assert names[0] == "pulling manifest" and names[-3:] == ["verifying sha256 digest", "writing manifest", "success"]
    layers = [s for s in statuses if (s.status or "").startswith("pulling sha") or s.digest]
    assert layers and layers[-1].total == gguf.stat().st_size and layers[-1].completed == layers[-1].total
    assert c.pull(reference, stream=False).status == "success"
    assert c.chat(model=reference, messages=ASK).message.content == "Pulled by Ollama."
    c.copy(reference, "ai/ollamacopy:mine")
    assert c.chat(model="ollamacopy:mine", messages=ASK).message.content == "Pulled by Ollama."
    c.delete("ai/ollamacopy:mine")
    assert "ai/ollamacopy:mine" not in {m.model for m in c.list().models}
    with pytest.raises(ollama.ResponseError) as missing:
        c.delete("ai/ollamacopy:mine")
    assert missing.value.status_code == 404
    with pytest.raises(ollama.ResponseError) as absent:
        list(c.pull(f"{local_registry.host}/ai/absent:v1"))
    assert absent.value.status_code == 404


def test_errors_in_ollama_shape(server: ServerProcess) -> None:
    c = client(server)
    with pytest.raises(ollama.ResponseError) as missing:
        c.chat(model="ai/absent", messages=ASK)
    assert missing.value.status_code == 404 and "absent" in missing.value.error
    json_type = {"Content-Type": "application/json"}
    answer = httpx.post(server.url + "api/chat", content=b"{oops", headers=json_type, timeout=10)
    assert answer.status_code == 400 and set(answer.json()) == {"error"}
    not_json = httpx.post(server.url + "api/chat", content=b"{}", headers={"Content-Type": "text/plain"}, timeout=10)
    assert not_json.status_code == 415 and set(not_json.json()) == {"error"}
    images = httpx.post(
        server.url + "api/chat", json={"model": MODEL, "messages": [{**ASK[0], "images": ["aGk="]}]}, timeout=10
    )
    assert images.status_code == 400 and "images" in images.json()["error"]
    # Hostile shapes are a 400 that names the field, never a 500.
    for extra in (
        {"messages": [{**ASK[0], "tool_calls": "x"}]},
        {"messages": [{**ASK[0], "tool_calls": [{"function": "get_weather"}]}]},
        {"messages": [{**ASK[0], "tool_calls": 7}]},
        {"messages": ASK, "keep_alive": [1]},
        {"messages": [], "keep_alive": {"m": 5}},
        {"messages": ASK, "options": "fast"},
        {"messages": ASK, "format": 5},
        {"messages": ASK, "stream": "yes"},
        {"messages": ASK, "think": 3},
    ):
        answer = httpx.post(server.url + "api/chat", json={"model": MODEL, **extra}, timeout=30)
        assert answer.status_code == 400, (extra, answer.text)
        assert set(answer.json()) == {"error"}
    embed = httpx.post(server.url + "api/embed", json={"model": EMBED, "input": "x", "keep_alive": [1]}, timeout=30)
    assert embed.status_code == 400 and "keep_alive" in embed.json()["error"]


def test_error_inside_a_stream_is_one_error_line(server: ServerProcess) -> None:
    body = {"model": LONG, "messages": ASK}
    with httpx.stream("POST", server.url + "api/chat", json=body, timeout=60) as response:
        lines = response.iter_lines()
        first = json.loads(next(line for line in lines if line))
        assert first["done"] is False
        (running,) = [m for m in httpx.get(server.url + "engines/ps", timeout=10).json() if m["model_name"] == LONG]
        os.kill(int(running["pid"]), signal.SIGKILL)  # the worker dies mid-answer
        rest = [json.loads(line) for line in lines if line]
    assert set(rest[-1]) == {"error"} and "worker" in rest[-1]["error"]
    assert all("error" not in line for line in rest[:-1])


def test_bearer_key_on_a_keyed_server(tmp_path: Path) -> None:
    with serving(ServerProcess(tmp_path / "keyed", env={"MR_NOTEBOOK_API_KEY": "s3cret"})) as keyed:
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=keyed.url, timeout=30).list()
        assert refused.value.status_code == 401
        good = ollama.Client(host=keyed.url, headers=keyed.headers, timeout=30)
        assert good.list().models == []


# ------------------------------------------------------------------------------------------------ both hosts


def test_ollama_library_on_both_hosts(host: ServerProcess) -> None:
    # OLLAMA_HOST may carry our path prefix; the bearer token carries the key (Jupyter's token there).
    c = ollama.Client(host=host.url, headers=host.headers, timeout=60)
    assert MODEL in {m.model for m in c.list().models}
    assert c.chat(model=MODEL, messages=ASK).message.content == REPLY
    assert "".join(p.message.content or "" for p in c.chat(model=MODEL, messages=ASK, stream=True)) == REPLY
    # A full tool round trip (streamed call; the tool's result goes back; the model answers).
    parts = list(c.chat(model=HERMES, messages=ASK, tools=[WEATHER_TOOL], stream=True))
    (call,) = [call for p in parts for call in (p.message.tool_calls or [])]
    assert call.function.name == "get_weather" and call.function.arguments == {"city": "Paris"}
    history = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [call.model_dump()]},
        {"role": "tool", "content": weather(**call.function.arguments), "tool_name": call.function.name},
    ]
    final = c.chat(model=ANSWERER, messages=history, tools=[WEATHER_TOOL])
    assert final.message.content == ANSWER_REPLY and final.done_reason == "stop"
    assert len(c.embed(model=EMBED, input="hi").embeddings[0]) == 64
    if host.name == "jupyter":
        with pytest.raises(ollama.ResponseError) as refused:
            ollama.Client(host=host.url, timeout=30).list()  # no token: refused
        assert refused.value.status_code == 403
        assert httpx.get(host.url, headers=host.headers, timeout=10).text == "Ollama is running"


def test_langchain_chat_ollama_on_both_hosts(host: ServerProcess) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_ollama import ChatOllama

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return weather(city)

    def llm(model: str) -> ChatOllama:
        return ChatOllama(model=model, base_url=host.url, client_kwargs={"headers": host.headers})

    question = HumanMessage("Weather in Paris?")
    asked = llm(HERMES).bind_tools([get_weather]).invoke([question])
    assert [(c["name"], c["args"]) for c in asked.tool_calls] == [("get_weather", {"city": "Paris"})]
    streamed = None
    for part in llm(HERMES).bind_tools([get_weather]).stream([question]):
        streamed = part if streamed is None else streamed + part
    assert streamed is not None and streamed.tool_calls[0]["args"] == {"city": "Paris"}  # type: ignore[attr-defined]
    result = get_weather.invoke(asked.tool_calls[0])  # a ToolMessage answering that call
    final = llm(ANSWERER).bind_tools([get_weather]).invoke([question, asked, result])
    assert final.content == ANSWER_REPLY and not final.tool_calls
    assert llm(MODEL).invoke("Hi").content == REPLY
