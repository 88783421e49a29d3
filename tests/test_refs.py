"""Model references: Docker Model Runner's normalisation, refusals, and parse/format stability."""

from __future__ import annotations

import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mr_notebook.errors import InvalidReference
from mr_notebook.store.refs import DEFAULT_HF_QUANT, ModelRef, parse_ref


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("llama3.2", "ai/llama3.2:latest"),
        ("llama3.2:1B-Q8_0", "ai/llama3.2:1B-Q8_0"),
        ("ai/llama3.2:1B-Q8_0", "ai/llama3.2:1B-Q8_0"),
        ("AI/Llama3.2:1B-Q8_0", "ai/llama3.2:1B-Q8_0"),
        ("docker.io/ai/smollm2", "ai/smollm2:latest"),
        ("registry-1.docker.io/ai/smollm2:360M", "ai/smollm2:360M"),
        ("hf.co/bartowski/Llama-3.2-1B-Instruct-GGUF:Q8_0", "hf.co/bartowski/llama-3.2-1b-instruct-gguf:Q8_0"),
        ("huggingface.co/org/repo", "hf.co/org/repo:latest"),
        ("127.0.0.1:5000/ai/tiny:v1", "127.0.0.1:5000/ai/tiny:v1"),
        ("localhost:5000/tiny", "localhost:5000/tiny:latest"),
        ("registry.example.com/team/sub/model:1", "registry.example.com/team/sub/model:1"),
        ("ai/tiny@sha256:" + "ab" * 32, "ai/tiny@sha256:" + "ab" * 32),
    ],
)
def test_normalisation(text: str, expected: str) -> None:
    assert str(parse_ref(text)) == expected


def test_same_model_with_and_without_namespace() -> None:
    assert parse_ref("ai/llama3.2:1B-Q8_0") == parse_ref("llama3.2:1B-Q8_0")


def test_hugging_face_quant_defaults() -> None:
    assert parse_ref("hf.co/org/repo").quant == DEFAULT_HF_QUANT
    assert parse_ref("hf.co/org/repo:q8_0").quant == "q8_0"
    assert parse_ref("hf.co/org/repo").is_huggingface


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "a/../b",
        "../etc/passwd",
        "a//b",
        "/abs",
        "trailing/",
        "a b",
        "tab\tname",
        "ai/tiny:\x00",
        "name:",
        "name:bad/tag",
        "x@sha256:1234",
        "x:tag@sha256:" + "0" * 64,
        "hf.co/only-one",
        "hf.co/a/b/c",
        "a\\b",
        "UPPER..dots",
        "-leading",
        "a" * 300,
        "ai/tiny:" + "t" * 200,
        "bad host!/a/b",
        "ai/ti\u00e9ny",
    ],
)
def test_invalid_references_show_accepted_forms(text: str) -> None:
    with pytest.raises(InvalidReference) as caught:
        parse_ref(text)
    assert "Accepted forms" in str(caught.value)
    assert isinstance(caught.value, ValueError)


_component = st.from_regex(r"\A[a-z0-9]{1,8}(?:[._-][a-z0-9]{1,8}){0,2}\Z")
_tag = st.from_regex(r"\A[A-Za-z0-9_][A-Za-z0-9._-]{0,20}\Z")
_host = st.sampled_from(["", "127.0.0.1:5000/", "localhost/", "registry.example.com/", "hf.co/", "docker.io/"])


@st.composite
def references(draw: st.DrawFn) -> str:
    host = draw(_host)
    count = 2 if host == "hf.co/" else draw(st.integers(1, 3))
    parts = [draw(_component) for _ in range(count)]
    if not host and count > 1:  # like Docker, a leading component with a dot would be read as a registry host
        parts[0] = parts[0].replace(".", "-")
    name = "/".join(parts)
    suffix = draw(st.one_of(st.just(""), _tag.map(lambda t: ":" + t)))
    return host + name + suffix


@given(references())
def test_parse_format_parse_is_stable(text: str) -> None:
    ref = parse_ref(text)
    assert parse_ref(str(ref)) == ref
    assert str(parse_ref(str(ref))) == str(ref)


@given(st.text(alphabet=string.printable + "éß\u202e/:.@", max_size=60))
@settings(max_examples=400)
def test_any_text_is_refused_or_canonical(text: str) -> None:
    try:
        ref = parse_ref(text)
    except InvalidReference:
        return
    canonical = str(ref)
    assert parse_ref(canonical) == ref
    assert ".." not in ref.repository and "\\" not in canonical
    assert not canonical.startswith("/") and "//" not in canonical
    assert all(c.isprintable() and not c.isspace() for c in canonical)
    assert isinstance(ref, ModelRef)
