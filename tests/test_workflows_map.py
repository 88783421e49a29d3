"""``mr_notebook.map`` on real tiny models: in-kernel engine and server engine (real HTTP), list / Series /
DataFrame, schemas, cache, errors."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TypedDict

import pandas as pd
import pydantic
import pytest

from mr_notebook.client import ChatStream
from mr_notebook.client.local import LocalEngine
from mr_notebook.client.remote import RemoteEngine
from mr_notebook.errors import ContextLengthExceeded, InvalidRequest
from mr_notebook.store import Store
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory
from mr_notebook.workflows import MapResult, map

LABEL = '{"label": "positive", "score": 3}'
LABEL_SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string"}, "score": {"type": "integer"}},
    "required": ["label", "score"],
}


class Label(pydantic.BaseModel):
    label: str
    score: int


class LabelDict(TypedDict):
    label: str
    score: int


class Counting(LocalEngine):
    """The in-kernel engine, counting the chat requests it is asked to send (and their messages)."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.sent: list[list[dict[str, Any]]] = []
        self._count_lock = threading.Lock()

    def chat_stream(self, model: str, messages: list[dict[str, Any]], **params: Any) -> ChatStream:
        with self._count_lock:
            self.sent.append(messages)
        return super().chat_stream(model, messages, **params)


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Path:
    home = tmp_path_factory.mktemp("workflows") / "home"
    store = Store(home)
    store.import_gguf(tiny_model_factory(), "ai/tiny")
    store.import_gguf(tiny_model_factory(reply=LABEL), "ai/label")
    store.import_gguf(tiny_model_factory(context_length=64), "ai/short")
    return home


@pytest.fixture(scope="module")
def engine(home: Path) -> Iterator[Counting]:
    engine = Counting(Store(home))
    yield engine
    engine.close()


@pytest.fixture
def cache(tmp_path: Path) -> str:
    return str(tmp_path / "cache")


def test_list_template_and_rerun_sends_nothing(engine: Counting, cache: str) -> None:
    before = len(engine.sent)
    result = map("Say hi to {}", ["Ann", "Bob", "Cy"], model="ai/tiny", engine=engine, cache=cache, progress=False)
    assert isinstance(result, MapResult) and list(result) == [DEFAULT_REPLY] * 3
    sent = engine.sent[before:]
    assert sorted(m[-1]["content"] for m in sent) == ["Say hi to Ann", "Say hi to Bob", "Say hi to Cy"]
    assert result.errors == [] and result.stats["sent"] == 3 and result.stats["cached"] == 0
    prov = result.provenance
    assert prov["model"] == "ai/tiny" and prov["digest"] == engine.inspect("ai/tiny")["id"]
    assert prov["params"] == {"temperature": 0, "max_tokens": 256} and prov["seed"] is None
    assert prov["engine"]["mode"] == "local" and prov["engine"]["llama_cpp_python"] and prov["time"]

    again = map("Say hi to {}", ["Ann", "Bob", "Cy"], model="ai/tiny", engine=engine, cache=cache, progress=False)
    assert list(again) == list(result) and len(engine.sent) == before + 3  # nothing sent
    assert again.stats == {**again.stats, "sent": 0, "cached": 3}
    # A new item, or other parameters, miss the cache: only those are sent.
    map("Say hi to {}", ["Ann", "Dee"], model="ai/tiny", engine=engine, cache=cache, progress=False)
    assert [m[-1]["content"] for m in engine.sent[before + 3 :]] == ["Say hi to Dee"]
    map("Say hi to {}", ["Ann"], model="ai/tiny", engine=engine, cache=cache, progress=False, max_tokens=5)
    assert len(engine.sent) == before + 5


def test_cache_off_sends_every_time(engine: Counting) -> None:
    before = len(engine.sent)
    for _ in range(2):
        map("{}", ["x"], model="ai/tiny", engine=engine, cache=False, progress=False)
    assert len(engine.sent) == before + 2


def test_dict_items_callable_prompt_and_system(engine: Counting, cache: str) -> None:
    before = len(engine.sent)
    rows = [{"text": "good", "n": 1}, {"text": "bad", "n": 2}]
    map("Rate {text} ({n})", rows, model="ai/tiny", system="Be brief.", engine=engine, cache=cache, progress=False)
    sent = sorted(engine.sent[before:], key=lambda m: m[-1]["content"])
    assert sent[0] == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Rate bad (2)"}]
    map(lambda row: f"Upper {row['text'].upper()}", rows, model="ai/tiny", engine=engine, cache=cache, progress=False)
    assert sorted(m[-1]["content"] for m in engine.sent[before + 2 :]) == ["Upper BAD", "Upper GOOD"]
    # JSON braces in a template stay; a field the items lack is a clear error before anything is sent.
    map('Answer as {"x": 1} about {text}', rows[:1], model="ai/tiny", engine=engine, cache=cache, progress=False)
    assert engine.sent[-1][-1]["content"] == 'Answer as {"x": 1} about good'
    with pytest.raises(InvalidRequest, match=r"\{missing\}.*fields: text, n"):
        map("Rate {missing}", rows, model="ai/tiny", engine=engine, cache=cache, progress=False)
    with pytest.raises(InvalidRequest, match=r"no \{\}"):
        map("Rate this", ["a"], model="ai/tiny", engine=engine, cache=cache, progress=False)


@pytest.mark.parametrize("schema", [LABEL_SCHEMA, Label, LabelDict], ids=["json-schema", "pydantic", "typeddict"])
def test_schema_constrains_and_parses(engine: Counting, cache: str, schema: Any) -> None:
    result = map(
        "Label: {}", ["great", "awful"], model="ai/label", schema=schema, engine=engine, cache=cache, progress=False
    )
    expected = Label(label="positive", score=3) if schema is Label else {"label": "positive", "score": 3}
    assert list(result) == [expected, expected] and result.errors == []
    assert result.provenance["params"]["response_format"]["type"] == "json_schema"


def test_series_and_dataframe_keep_the_index(engine: Counting, cache: str) -> None:
    series = pd.Series(["a", "b", "c"], index=[10, 20, 30], name="text")
    out = map("Say {}", series, model="ai/tiny", engine=engine, cache=cache, progress=False)
    assert isinstance(out, pd.Series) and list(out.index) == [10, 20, 30] and set(out) == {DEFAULT_REPLY}
    assert out.attrs["errors"] == [] and out.attrs["provenance"]["model"] == "ai/tiny"

    frame = pd.DataFrame({"text": ["fine", "meh"], "id": [1, 2]}, index=["r1", "r2"])
    texts = map("Rate {text} #{id}", frame, model="ai/tiny", engine=engine, cache=cache, progress=False)
    assert isinstance(texts, pd.Series) and list(texts.index) == ["r1", "r2"]
    assert engine.sent[-1][-1]["content"] in ("Rate fine #1", "Rate meh #2")
    fields = map("Rate {text}", frame, model="ai/label", schema=Label, engine=engine, cache=cache, progress=False)
    assert isinstance(fields, pd.DataFrame) and list(fields.columns) == ["label", "score"]
    joined = frame.join(fields)
    assert list(joined.columns) == ["text", "id", "label", "score"] and list(joined["score"]) == [3, 3]


def test_errors_keep_records_missing_values(engine: Counting, cache: str) -> None:
    items = ["short", "long " * 200, "short too"]
    result = map("{}", items, model="ai/short", engine=engine, cache=cache, progress=False)
    assert result[0] == DEFAULT_REPLY and result[1] is None and result[2] == DEFAULT_REPLY
    assert [(e.position, e.label, e.error) for e in result.errors] == [(1, 1, "ContextLengthExceeded")]
    assert "context" in result.errors[0].message.lower()
    with pytest.raises(ContextLengthExceeded):
        map("{}", items, model="ai/short", engine=engine, cache=cache, progress=False, errors="raise", concurrency=1)


def test_reply_that_does_not_parse_is_an_error_not_a_crash(engine: Counting, cache: str) -> None:
    # Two tokens cannot hold the object: the reply is cut off and does not parse.
    result = map("{}", ["a"], model="ai/label", schema=Label, max_tokens=2, engine=engine, cache=cache, progress=False)
    assert result == [None] and [e.error for e in result.errors] == ["ReplyNotJSON"]


def test_progress_bar_is_injected(engine: Counting, cache: str) -> None:
    bars: list[Any] = []

    class Bar:
        def __init__(self, total: int, initial: int, desc: str, unit: str) -> None:
            self.total, self.n, self.desc, self.closed = total, initial, desc, False
            bars.append(self)

        def update(self, n: int) -> None:
            self.n += n

        def close(self) -> None:
            self.closed = True

    map("{}", ["p", "q"], model="ai/tiny", engine=engine, cache=cache, progress=Bar)
    map("{}", ["p", "q", "r"], model="ai/tiny", engine=engine, cache=cache, progress=Bar)
    assert [(b.total, b.n, b.closed) for b in bars] == [(2, 2, True), (3, 3, True)]


def test_server_engine(home: Path, cache: str) -> None:
    local = LocalEngine(Store(home))
    try:
        url = local.serve()
        remote = RemoteEngine(url)
        result = map("Say {}", ["a", "b"], model="ai/label", schema=Label, engine=remote, cache=cache, progress=False)
        assert list(result) == [Label(label="positive", score=3)] * 2
        assert result.provenance["engine"]["mode"] == "remote"
        assert result.provenance["digest"] == local.inspect("ai/label")["id"]
        served = [row["model"] for row in local.ps()]
        assert "ai/label" in served or "ai/label:latest" in served
        again = map("Say {}", ["a", "b"], model="ai/label", schema=Label, engine=remote, cache=cache, progress=False)
        assert again.stats["sent"] == 0 and list(again) == list(result)
        # n choices of one request, split by choices[].index (what %%chat -n uses).
        streams = remote.chat_choices("ai/tiny", [{"role": "user", "content": "hi"}], 3, seed=5, temperature=0.7)
        assert [s.text() for s in streams] == [DEFAULT_REPLY] * 3
        assert [s.finish_reason for s in streams] == ["stop"] * 3 and all(s.usage["completion_tokens"] for s in streams)
        remote.close()
    finally:
        local.close()
