"""The OpenAI Python SDK against `serve()` (a real server in a subprocess, real workers, tiny models)."""

from __future__ import annotations

import asyncio
import math

import httpx
import openai
import pytest
from test_api_support import EMBED, MODEL, NEVER, REPLY, ServerProcess

PREFIXES = ["v1", "engines/v1", "engines/llama.cpp/v1", f"engines/{MODEL}/v1"]

pytest_plugins = ["test_api_support"]  # its api_home / api_server fixtures


def client(server: ServerProcess, prefix: str = "v1") -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + prefix, api_key="not-needed", max_retries=0, timeout=60)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_chat_under_every_prefix(api_server: ServerProcess, prefix: str) -> None:
    response = client(api_server, prefix).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Hi"}], temperature=0.7, max_tokens=64
    )
    assert response.choices[0].message.content == REPLY
    assert response.choices[0].message.role == "assistant"
    assert response.choices[0].finish_reason == "stop"
    assert response.model == MODEL
    assert response.usage is not None and response.usage.completion_tokens > 0
    assert response.usage.total_tokens == response.usage.prompt_tokens + response.usage.completion_tokens


def test_model_in_path_without_model_in_body(api_server: ServerProcess) -> None:
    body = {"messages": [{"role": "user", "content": "Hi"}]}
    answer = httpx.post(api_server.url + f"engines/{MODEL}/v1/chat/completions", json=body, timeout=60).json()
    assert answer["choices"][0]["message"]["content"] == REPLY
    # The body's model wins over the path's.
    body["model"] = NEVER
    answer = httpx.post(
        api_server.url + f"engines/{MODEL}/v1/chat/completions", json={**body, "max_tokens": 3}, timeout=60
    ).json()
    assert answer["model"] == NEVER and answer["choices"][0]["finish_reason"] == "length"


def test_streaming_chunks_as_the_sdk_expects(api_server: ServerProcess) -> None:
    stream = client(api_server).chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Hi"}],
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == REPLY
    with_choices = [c for c in chunks if c.choices]
    assert with_choices[-1].choices[0].finish_reason == "stop"
    assert all(c.choices[0].finish_reason is None for c in with_choices[:-1])
    assert len({c.id for c in chunks}) == 1
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    # A delta carries one token or more (the engine may merge tokens that arrive together).
    assert chunks[-1].usage.completion_tokens >= len(with_choices) - 2 > 0


def test_streaming_raw_sse_format(api_server: ServerProcess) -> None:
    with httpx.stream(
        "POST",
        api_server.url + "v1/chat/completions",
        json={"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "x"}]},
        timeout=60,
    ) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert '"usage"' not in "".join(lines)  # only with stream_options.include_usage


def test_length_finish_and_max_completion_tokens(api_server: ServerProcess) -> None:
    response = client(api_server).chat.completions.create(
        model=NEVER, messages=[{"role": "user", "content": "sing"}], max_completion_tokens=7
    )
    assert response.choices[0].finish_reason == "length"
    assert response.usage is not None and response.usage.completion_tokens == 7


def test_text_completions(api_server: ServerProcess) -> None:
    c = client(api_server)
    response = c.completions.create(model=MODEL, prompt="Once upon a time", max_tokens=32)
    assert response.choices[0].text == REPLY and response.choices[0].finish_reason == "stop"
    streamed = list(c.completions.create(model=NEVER, prompt="x", max_tokens=5, stream=True))
    assert streamed[-1].choices[0].finish_reason == "length"
    assert "".join(s.choices[0].text for s in streamed).startswith("la")


def test_embeddings_float_and_base64(api_server: ServerProcess) -> None:
    c = client(api_server)
    # The SDK asks for base64 by default and decodes it.
    one = c.embeddings.create(model=EMBED, input="hello world")
    vector = one.data[0].embedding
    assert len(vector) == 64 and math.isclose(sum(v * v for v in vector), 1.0, rel_tol=1e-3)
    many = c.embeddings.create(model=EMBED, input=["hello world", "something else"], encoding_format="float")
    assert [d.index for d in many.data] == [0, 1]
    assert many.data[0].embedding == pytest.approx(vector, abs=1e-5)
    assert many.data[0].embedding != pytest.approx(many.data[1].embedding, abs=1e-3)
    assert many.usage.prompt_tokens > one.usage.prompt_tokens


def test_embeddings_of_token_arrays(api_server: ServerProcess) -> None:
    text_vec = httpx.post(api_server.url + "v1/embeddings", json={"model": EMBED, "input": "hello"}, timeout=60)
    tokens = httpx.post(api_server.url + "v1/embeddings", json={"model": EMBED, "input": [[104, 101]]}, timeout=60)
    assert text_vec.status_code == 200 and tokens.status_code == 200
    assert len(tokens.json()["data"][0]["embedding"]) == 64


def test_models_list_and_retrieve(api_server: ServerProcess) -> None:
    c = client(api_server)
    ids = {m.id for m in c.models.list()}
    assert {MODEL, NEVER, EMBED} <= ids
    model = c.models.retrieve(MODEL)
    assert model.id == MODEL and model.object == "model"
    in_path = client(api_server, f"engines/{MODEL}/v1").models.retrieve("llama3.2:1B-Q8_0")
    assert in_path.id == MODEL
    with pytest.raises(openai.NotFoundError) as info:
        c.models.retrieve("ai/nothing-here")
    assert "pull" in str(info.value)


def test_unknown_model_through_sdk(api_server: ServerProcess) -> None:
    with pytest.raises(openai.NotFoundError) as info:
        client(api_server).chat.completions.create(model="ai/missing:7B", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    assert "mr-notebook pull ai/missing:7B" in info.value.message


def test_async_client_concurrent_requests(api_server: ServerProcess) -> None:
    async def main() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=api_server.url + "v1", api_key="x", max_retries=0, timeout=60)
        async with aclient:

            async def one(i: int) -> str:
                stream = await aclient.chat.completions.create(
                    model=MODEL, messages=[{"role": "user", "content": f"n{i}"}], stream=True
                )
                return "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])

            plain = await aclient.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "a"}])
            streamed = await asyncio.gather(*(one(i) for i in range(4)))
            return [plain.choices[0].message.content or "", *streamed]

    # Four concurrent streams on one model queue in arrival order: none is cut off or empty.
    assert asyncio.run(main()) == [REPLY] * 5


def test_logprobs(api_server: ServerProcess) -> None:
    response = client(api_server).chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "x"}], logprobs=True, top_logprobs=2
    )
    assert response.choices[0].logprobs is not None
    content = response.choices[0].logprobs.content
    assert content and "".join(entry.token for entry in content) == REPLY
