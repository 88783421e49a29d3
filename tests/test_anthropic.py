"""Anthropic's Messages API, driven by the real `anthropic` SDK; the client's own test runs against both hosts
(`serve()` and a real `jupyter server` with the extension)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anthropic
import httpx
import pytest
from test_api_support import MODEL, NEVER, REPLY, ServerProcess, serving
from test_protocol_support import ANSWER_REPLY, ANSWERER, GENERIC, HERMES, PARALLEL, THINKER, weather

ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
WEATHER = {
    "name": "get_weather",
    "description": "The weather in a city",
    "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
}


pytest_plugins = ["test_protocol_support"]  # protocol_home / protocol_server, shared by the protocol tests


@pytest.fixture
def server(protocol_server: ServerProcess) -> ServerProcess:
    return protocol_server


def client(server: ServerProcess, root: str = "anthropic") -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.url + root, api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("root", ["", "anthropic"])
def test_messages_under_both_roots(server: ServerProcess, root: str) -> None:
    message = client(server, root).messages.create(
        model=MODEL, max_tokens=64, system="Be brief.", messages=ASK, extra_body={"temperature": 0.2, "top_k": 20}
    )
    assert message.id.startswith("msg_") and message.role == "assistant" and message.model == MODEL
    assert [block.type for block in message.content] == ["text"]
    assert message.content[0].text == REPLY  # type: ignore[union-attr]
    assert message.stop_reason == "end_turn" and message.stop_sequence is None
    assert message.usage.input_tokens > 0 and message.usage.output_tokens > 0


def test_system_blocks_max_tokens_and_stop_sequences(server: ServerProcess) -> None:
    c = client(server)
    blocks = c.messages.create(model=MODEL, max_tokens=64, system=[{"type": "text", "text": "Be brief."}], messages=ASK)
    assert blocks.content[0].text == REPLY  # type: ignore[union-attr]
    cut = c.messages.create(model=NEVER, max_tokens=5, messages=ASK)
    assert cut.stop_reason == "max_tokens" and cut.usage.output_tokens == 5
    stopped = c.messages.create(model=MODEL, max_tokens=64, messages=ASK, stop_sequences=["tiny", "zebra"])
    assert stopped.content[0].text == REPLY.split("tiny")[0]  # type: ignore[union-attr]
    assert stopped.stop_reason == "stop_sequence" and stopped.stop_sequence == "tiny"
    whole = c.messages.create(model=MODEL, max_tokens=64, messages=ASK)
    # The engine matched the stop string and stopped generating there (its token counts say so).
    assert 0 < stopped.usage.output_tokens < whole.usage.output_tokens
    endless = c.messages.create(model=NEVER, max_tokens=200, messages=ASK, stop_sequences=["la la la"])
    assert endless.stop_reason == "stop_sequence" and endless.stop_sequence == "la la la"
    assert endless.usage.output_tokens < 10
    with c.messages.stream(model=MODEL, max_tokens=64, messages=ASK, stop_sequences=["model"]) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert text == REPLY.split("model")[0] and final.stop_reason == "stop_sequence" and final.stop_sequence == "model"
    assert 0 < final.usage.output_tokens <= whole.usage.output_tokens


def test_streaming_event_sequence(server: ServerProcess) -> None:
    with client(server).messages.stream(model=MODEL, max_tokens=64, messages=ASK) as stream:
        assert "".join(stream.text_stream) == REPLY
        final = stream.get_final_message()
    assert final.content[0].text == REPLY and final.stop_reason == "end_turn"  # type: ignore[union-attr]
    assert final.usage.output_tokens > 0 and final.usage.input_tokens > 0
    body = {"model": MODEL, "max_tokens": 64, "messages": ASK, "stream": True}
    with httpx.stream("POST", server.url + "v1/messages", json=body, timeout=60) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = list(response.iter_lines())
    names = [line.removeprefix("event: ") for line in lines if line.startswith("event: ")]
    start = json.loads(next(line for line in lines if line.startswith("data: ")).removeprefix("data: "))
    # message_start already knows the prompt's length: the same count as count_tokens and the final usage.
    counted = client(server).messages.count_tokens(model=MODEL, messages=ASK).input_tokens
    assert start["message"]["usage"]["input_tokens"] == counted == final.usage.input_tokens
    deltas = names.count("content_block_delta")
    assert deltas >= 1
    expected = ["message_start", "ping", "content_block_start"] + ["content_block_delta"] * deltas
    assert names == [*expected, "content_block_stop", "message_delta", "message_stop"]


def test_tool_use_whole_and_streamed(server: ServerProcess) -> None:
    c = client(server)
    message = c.messages.create(model=HERMES, max_tokens=128, messages=ASK, tools=[WEATHER])  # type: ignore[list-item]
    (block,) = message.content
    assert block.type == "tool_use" and block.name == "get_weather" and block.input == {"city": "Paris"}
    assert block.id.startswith("toolu_") and message.stop_reason == "tool_use"
    with c.messages.stream(model=PARALLEL, max_tokens=128, messages=ASK, tools=[WEATHER]) as stream:  # type: ignore[list-item]
        final = stream.get_final_message()
    assert [b.type for b in final.content] == ["text", "tool_use", "tool_use"]
    assert [b.input for b in final.content if b.type == "tool_use"] == [{"city": "Paris"}, {"city": "London"}]
    one = c.messages.create(
        model=PARALLEL,
        max_tokens=128,
        messages=ASK,
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice={"type": "auto", "disable_parallel_tool_use": True},
    )
    assert [b.type for b in one.content].count("tool_use") == 1
    # The round trip: the tool_use block and its tool_result go back through the model's template.
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in message.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": block.id, "content": "sunny"}]},
    ]
    answer = c.messages.create(model=MODEL, max_tokens=64, messages=history, tools=[WEATHER])  # type: ignore[list-item]
    assert answer.content[0].text == REPLY  # type: ignore[union-attr]


@pytest.mark.parametrize("choice", [{"type": "any"}, {"type": "tool", "name": "get_weather"}])
def test_tool_choice_any_and_named(server: ServerProcess, choice: Any) -> None:
    message = client(server).messages.create(
        model=GENERIC,
        max_tokens=128,
        messages=ASK,
        tools=[WEATHER],
        tool_choice=choice,  # type: ignore[list-item]
    )
    assert message.content[-1].type == "tool_use" and message.content[-1].input == {"city": "Paris"}


def test_thinking_blocks(server: ServerProcess) -> None:
    c = client(server)
    thinking: Any = {"type": "enabled", "budget_tokens": 1024}
    message = c.messages.create(model=THINKER, max_tokens=256, messages=ASK, thinking=thinking)
    assert [b.type for b in message.content] == ["thinking", "text"]
    assert message.content[0].thinking == "The user greets me."  # type: ignore[union-attr]
    assert message.content[1].text == "Hello there!"  # type: ignore[union-attr]
    plain = c.messages.create(model=THINKER, max_tokens=256, messages=ASK)
    assert [b.type for b in plain.content] == ["text"] and plain.content[0].text == "Hello there!"  # type: ignore[union-attr]
    with c.messages.stream(model=THINKER, max_tokens=256, messages=ASK, thinking=thinking) as stream:
        kinds = [event.type for event in stream]
        final = stream.get_final_message()
    assert "thinking" in kinds and final.content[0].thinking == "The user greets me."  # type: ignore[union-attr]


def test_count_tokens(server: ServerProcess) -> None:
    c = client(server)
    short = c.messages.count_tokens(model=MODEL, messages=ASK)
    longer = c.messages.count_tokens(model=MODEL, messages=ASK, system="You answer questions about the weather.")
    assert 0 < short.input_tokens < longer.input_tokens
    created = c.messages.create(model=MODEL, max_tokens=8, messages=ASK)
    assert created.usage.input_tokens == short.input_tokens


def test_errors_in_anthropic_shape(server: ServerProcess) -> None:
    c = client(server)
    with pytest.raises(anthropic.NotFoundError) as missing:
        c.messages.create(model="ai/absent", max_tokens=8, messages=ASK)
    assert missing.value.body["type"] == "error"  # type: ignore[index]
    assert missing.value.body["error"]["type"] == "not_found_error"  # type: ignore[index]
    url = server.url + "v1/messages"
    one = {"model": MODEL, "max_tokens": 8}
    cases = [
        ({"model": MODEL, "messages": ASK}, "max_tokens"),
        ({**one, "messages": []}, "messages"),
        ({**one, "messages": [{"role": "system", "content": "x"}]}, "role"),
        ({**one, "messages": ASK, "tool_choice": {"type": "tool", "name": "nope"}}, "tool_choice"),
        ({**one, "messages": ASK, "tools": [{"type": "web_search_20250305"}]}, "server tools"),
        ({**one, "messages": [{"role": "user", "content": [{"type": "image"}]}]}, "image"),
        ({**one, "messages": [{"role": "user"}]}, "content"),
        ({**one, "messages": ASK, "system": 5}, "system"),
        (
            {
                **one,
                "messages": [{"role": "user", "content": [{"type": "tool_result", "content": [{"type": "image"}]}]}],
            },
            "text blocks",
        ),
    ]
    for body, word in cases:
        answer = httpx.post(url, json=body, timeout=30)
        assert answer.status_code == 400, body
        error = answer.json()
        assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
        assert word in error["error"]["message"], error


def test_x_api_key_on_a_keyed_server(tmp_path: Path) -> None:
    with serving(ServerProcess(tmp_path / "keyed", env={"MR_NOTEBOOK_API_KEY": "s3cret"})) as keyed:
        wrong = anthropic.Anthropic(base_url=keyed.url, api_key="nope", max_retries=0, timeout=30)
        with pytest.raises(anthropic.AuthenticationError) as refused:
            wrong.messages.create(model=MODEL, max_tokens=8, messages=ASK)
        assert refused.value.body["error"]["type"] == "authentication_error"  # type: ignore[index]
        right = anthropic.Anthropic(base_url=keyed.url, api_key="s3cret", max_retries=0, timeout=30)
        with pytest.raises(anthropic.NotFoundError):  # past the key: the keyed store is empty
            right.messages.create(model=MODEL, max_tokens=8, messages=ASK)


# ------------------------------------------------------------------------------------------------ both hosts


def test_anthropic_sdk_on_both_hosts(host: ServerProcess) -> None:
    # The key travels as x-api-key (the Jupyter token under Jupyter).
    c = anthropic.Anthropic(base_url=host.url + "anthropic", api_key=host.key, max_retries=0, timeout=60)
    assert c.messages.create(model=MODEL, max_tokens=64, messages=ASK).content[0].text == REPLY  # type: ignore[union-attr]
    with c.messages.stream(model=MODEL, max_tokens=64, messages=ASK) as stream:
        assert "".join(stream.text_stream) == REPLY
    # A full tool round trip, the call streamed: tool_use, then tool_result back, then the answer.
    with c.messages.stream(model=HERMES, max_tokens=128, messages=ASK, tools=[WEATHER]) as stream:  # type: ignore[list-item]
        asked = stream.get_final_message()
    (use,) = asked.content
    assert use.type == "tool_use" and use.input == {"city": "Paris"} and asked.stop_reason == "tool_use"
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": [b.model_dump() for b in asked.content]},
        {"role": "user", "content": [{"type": "tool_result", "tool_use_id": use.id, "content": weather("Paris")}]},
    ]
    final = c.messages.create(model=ANSWERER, max_tokens=64, messages=history, tools=[WEATHER])  # type: ignore[list-item]
    assert final.content[0].text == ANSWER_REPLY and final.stop_reason == "end_turn"  # type: ignore[union-attr]
    if host.name == "jupyter":
        wrong = anthropic.Anthropic(base_url=host.url + "anthropic", api_key="not-the-token", max_retries=0)
        with pytest.raises(anthropic.PermissionDeniedError) as refused:
            wrong.messages.create(model=MODEL, max_tokens=8, messages=ASK)
        assert refused.value.body["error"]["type"] == "permission_error"  # type: ignore[index]
