"""The tiny GGUF model builder, checked against real llama-cpp-python."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from mr_notebook.testing import (
    CHATML_TEMPLATE,
    DEFAULT_REPLY,
    MAX_REPLY_PIECES,
    TinyModelFactory,
    build_tiny_model,
    reply_pieces,
)

MESSAGES: list[dict[str, str]] = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France? Hello from the tiny model!"},
]


def _load(path: Path, **kwargs: Any) -> Iterator[llama_cpp.Llama]:
    llm = llama_cpp.Llama(model_path=str(path), verbose=False, n_threads=1, n_threads_batch=1, **kwargs)
    try:
        yield llm
    finally:
        llm.close()


@pytest.fixture(scope="module")
def llm(tiny_model: Path) -> Iterator[llama_cpp.Llama]:
    yield from _load(tiny_model)


@pytest.fixture(scope="module")
def endless_llm(tiny_model_factory: TinyModelFactory) -> Iterator[llama_cpp.Llama]:
    yield from _load(tiny_model_factory(never_stop=True))


def test_file_is_small_and_byte_identical(tmp_path: Path) -> None:
    first = build_tiny_model(tmp_path / "a.gguf", reply="Same bytes twice.", seed=7)
    second = build_tiny_model(tmp_path / "b.gguf", reply="Same bytes twice.", seed=7)
    other_seed = build_tiny_model(tmp_path / "c.gguf", reply="Same bytes twice.", seed=8)
    assert first.read_bytes() == second.read_bytes()
    assert first.read_bytes() != other_seed.read_bytes()
    assert first.stat().st_size < 400_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gguf", "b.gguf", "c.gguf"]


def test_factory_caches_by_options(tiny_model_factory: TinyModelFactory, tiny_model: Path) -> None:
    assert tiny_model_factory() == tiny_model
    assert tiny_model_factory(reply=DEFAULT_REPLY) == tiny_model
    assert tiny_model_factory(seed=1) != tiny_model


def test_metadata(llm: llama_cpp.Llama) -> None:
    meta = llm.metadata
    assert meta["general.architecture"] == "llama"
    assert meta["general.name"] == "tiny"
    assert meta["general.file_type"] == "1"  # LLAMA_FTYPE_MOSTLY_F16
    assert meta["llama.context_length"] == "512"
    assert meta["tokenizer.chat_template"] == CHATML_TEMPLATE
    assert llm.n_embd() == 64
    assert llm.token_eos() == llm.tokenize(b"<|im_end|>", add_bos=False, special=True)[0]


def test_completion_returns_reply(llm: llama_cpp.Llama) -> None:
    out = llm.create_completion("Once upon a time", max_tokens=64)
    assert out["choices"][0]["text"] == DEFAULT_REPLY
    assert out["choices"][0]["finish_reason"] == "stop"
    assert out["usage"]["completion_tokens"] == len(reply_pieces(DEFAULT_REPLY))  # eos not counted


@pytest.mark.parametrize(
    "sampling",
    [
        {"temperature": 0.0},
        {"temperature": 1.5, "seed": 1234},
        {"temperature": 2.0, "seed": 5, "top_p": 0.3, "top_k": 3, "min_p": 0.2},
        {"temperature": 1.0, "seed": 9, "repeat_penalty": 2.0, "presence_penalty": 2.0},
        {"temperature": 0.7, "frequency_penalty": 2.0, "presence_penalty": -2.0},
    ],
)
def test_chat_returns_exact_reply(llm: llama_cpp.Llama, sampling: dict[str, Any]) -> None:
    out = llm.create_chat_completion(messages=MESSAGES, max_tokens=64, **sampling)
    choice = out["choices"][0]
    assert choice["message"]["content"] == DEFAULT_REPLY
    assert choice["finish_reason"] == "stop"


def test_chat_stream_deltas_concatenate_to_reply(llm: llama_cpp.Llama) -> None:
    chunks = list(llm.create_chat_completion(messages=MESSAGES, max_tokens=64, stream=True))
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks)
    assert text == DEFAULT_REPLY
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_never_stop_hits_length(endless_llm: llama_cpp.Llama) -> None:
    out = endless_llm.create_completion("Count:", max_tokens=3)
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["choices"][0]["text"] == "Hello from the"
    long = endless_llm.create_completion("Count:", max_tokens=40, temperature=1.0, seed=3)
    assert long["choices"][0]["finish_reason"] == "length"
    assert long["choices"][0]["text"].startswith(DEFAULT_REPLY + DEFAULT_REPLY)


@pytest.mark.parametrize(
    "reply",
    [
        "Beep boop. The answer is 42, and the answer is 42!",
        " Leading space, trailing space ",
        "Ünïcödé ✓ works 🙂\nacross lines.",
        "a a a a a a",
        "Supercalifragilisticexpialidocious-and-then-some-more-characters",
        "",
    ],
)
def test_custom_reply(tiny_model_factory: TinyModelFactory, reply: str) -> None:
    for llm in _load(tiny_model_factory(reply=reply)):
        chat = llm.create_chat_completion(messages=MESSAGES, max_tokens=80)
        assert chat["choices"][0]["message"]["content"] == reply
        completion = llm.create_completion("Tell me something", max_tokens=80, temperature=1.2, seed=2)
        assert completion["choices"][0]["text"] == reply
        assert completion["choices"][0]["finish_reason"] == "stop"


def test_longest_reply(tiny_model_factory: TinyModelFactory) -> None:
    reply = " ".join(f"w{i}" for i in range(MAX_REPLY_PIECES))
    assert len(reply_pieces(reply)) == MAX_REPLY_PIECES
    for llm in _load(tiny_model_factory(reply=reply)):
        out = llm.create_completion("Go", max_tokens=100, temperature=1.0, seed=4)
        assert out["choices"][0]["text"] == reply
        assert out["choices"][0]["finish_reason"] == "stop"


def test_invalid_arguments(tmp_path: Path) -> None:
    too_long = " ".join(f"w{i}" for i in range(MAX_REPLY_PIECES + 1))
    with pytest.raises(ValueError, match="at most 63"):
        build_tiny_model(tmp_path / "x.gguf", reply=too_long)
    with pytest.raises(ValueError, match="pooling"):
        build_tiny_model(tmp_path / "x.gguf", pooling="max")
    with pytest.raises(ValueError, match="never_stop"):
        build_tiny_model(tmp_path / "x.gguf", reply="", never_stop=True)
    assert list(tmp_path.iterdir()) == []


def test_custom_chat_template(tiny_model_factory: TinyModelFactory) -> None:
    template = "{% for m in messages %}[{{ m['role'] }}] {{ m['content'] }}\n{% endfor %}[assistant] "
    for llm in _load(tiny_model_factory(chat_template=template, name="custom")):
        assert llm.metadata["tokenizer.chat_template"] == template
        assert llm.metadata["general.name"] == "custom"
        out = llm.create_chat_completion(messages=MESSAGES, max_tokens=64)
        assert out["choices"][0]["message"]["content"] == DEFAULT_REPLY


@pytest.mark.parametrize("pooling", ["mean", "last"])
def test_embeddings(tiny_model_factory: TinyModelFactory, pooling: str) -> None:
    path = tiny_model_factory(pooling=pooling)
    for llm in _load(path, embedding=True):
        assert llm.metadata["llama.pooling_type"] == {"mean": "1", "last": "3"}[pooling]
        first = llm.embed("some text")
        second = llm.embed("completely different words")
        assert isinstance(first, list)
        assert len(first) == 64
        assert all(isinstance(x, float) for x in first)
        assert first != second
        assert first == llm.embed("some text")
