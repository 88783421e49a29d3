"""Tool calling and reasoning on /v1/chat/completions: the parsers, then the OpenAI SDK and LangChain against
`serve()` with tiny models whose fixed reply is a tool call in each family's format."""

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest
from test_api_support import MODEL, REPLY, ServerProcess
from test_protocol_support import (
    ANSWER_REPLY,
    ANSWERER,
    EFFORT,
    GENERIC,
    GPT_OSS,
    GPT_OSS_CALL,
    GPT_OSS_REPLY,
    GPT_OSS_TOOLS,
    HARMONY_TEMPLATE,
    HERMES,
    HERMES_REPLY,
    LLAMA3,
    LLAMA3_TAG,
    MISSPELLED,
    MISTRAL,
    MISTRAL_TAG,
    PARALLEL,
    PING_TOOL,
    QWEN3,
    THINK_REPLY,
    THINK_TEMPLATE,
    THINK_TOOLS,
    THINKER,
    TIME_TOOL,
    TOOL_MODELS,
    TRIGGER_TRAPS,
    WEATHER_TOOL,
    weather,
)

from mr_notebook.api.harmony import HarmonySplitter
from mr_notebook.api.tool_choice import call_format, parse_tool_choice, parse_tools
from mr_notebook.api.tools import (
    Splitter,
    detect_family,
    parse_calls,
    template_opens_think,
    template_thinks,
)
from mr_notebook.errors import InvalidRequest
from mr_notebook.testing.tiny_model import CHATML_TEMPLATE

TOOLS = parse_tools([WEATHER_TOOL, TIME_TOOL])
ASK = [{"role": "user", "content": "What is the weather in Paris?"}]


def split(text: str, family: str | None, step: int, **options: object) -> tuple[str, str, list[tuple[str, dict]]]:
    """Feed ``text`` in pieces of ``step`` characters; (content, reasoning, calls)."""
    splitter = Splitter(family=family, tools=TOOLS, **options)  # type: ignore[arg-type]
    pieces = []
    for i in range(0, len(text), step):
        pieces += splitter.feed(text[i : i + step])
    rest, calls = splitter.finish()
    pieces += rest
    content = "".join(t for kind, t in pieces if kind == "content")
    reasoning = "".join(t for kind, t in pieces if kind == "reasoning")
    return content, reasoning, [(c.name, c.arguments) for c in calls]


# ------------------------------------------------------------------------------------------------ parsers


@pytest.mark.parametrize("name", list(TOOL_MODELS))
@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_every_family_parses_its_calls_however_the_text_is_cut(name: str, step: int) -> None:
    reply, template = TOOL_MODELS[name]
    content, reasoning, calls = split(reply, detect_family(template), step)
    assert calls[0] == ("get_weather", {"city": "Paris"})
    assert reasoning == ""
    if name == PARALLEL:
        assert content.strip() == "Checking." and calls[1] == ("get_weather", {"city": "London"})
    else:
        assert content == "" and len(calls) == 1


def test_family_detection() -> None:
    assert [detect_family(TOOL_MODELS[n][1]) for n in (HERMES, QWEN3, LLAMA3, MISTRAL, GENERIC)] == [
        "hermes",
        "qwen3_xml",
        "llama3",
        "mistral",
        "generic",
    ]


def test_plain_text_and_bad_calls_stay_content() -> None:
    assert split("Hello <b>there</b>", "hermes", 3) == ("Hello <b>there</b>", "", [])
    # A marker with a body that does not parse is the model talking, not a call.
    broken = "<tool_call>{not json}</tool_call>"
    assert split(broken, "hermes", 4) == (broken, "", [])
    # A JSON answer that names no offered tool is an answer in JSON.
    answer = '{"name": "Paris", "arguments": {}}'
    assert split(answer, "generic", 5) == (answer, "", [])
    # Without tools nothing is parsed, even in a tool family.
    assert Splitter(family=None).feed(HERMES_REPLY) == [("content", HERMES_REPLY)]


def test_calls_whose_marker_is_a_hidden_control_token() -> None:
    # Detokenizers may drop control tokens such as [TOOL_CALLS] and <|python_tag|>: the JSON after them still counts.
    assert split('[{"name": "get_time", "arguments": {"city": "Oslo"}}]', "mistral", 3)[2] == [
        ("get_time", {"city": "Oslo"})
    ]
    assert split('{"name": "get_time", "parameters": {"city": "Rome"}}', "llama3", 4)[2] == [
        ("get_time", {"city": "Rome"})
    ]


def test_other_call_shapes() -> None:
    # A raw control character inside a string (a grammar lets it through; strict JSON would refuse it).
    tabbed = '<tool_call>{"name": "get_time", "arguments": {"city": "O\tslo"}}</tool_call>'
    calls, _ = parse_calls(tabbed, "hermes", TOOLS)
    assert calls[0].arguments == {"city": "O\tslo"}
    calls, rest = parse_calls('[TOOL_CALLS]get_time[ARGS]{"city": "Oslo"}', "mistral", TOOLS)
    assert [(c.name, c.arguments) for c in calls] == [("get_time", {"city": "Oslo"})] and rest == ""
    calls, _ = parse_calls('<|python_tag|>{"name": "get_time", "parameters": {"city": "Rome"}}', "llama3", TOOLS)
    assert calls[0].arguments == {"city": "Rome"}
    calls, _ = parse_calls(
        '{"tool_calls": [{"name": "get_time", "arguments": "{\\"city\\": \\"Bern\\"}"}]}', "x", TOOLS
    )
    assert calls[0].arguments == {"city": "Bern"} and calls[0].id.startswith("call_")
    # Qwen 3 XML values follow the declared type: numbers parse unless the schema says string.
    xml = "<tool_call><function=f><parameter=n>\n42\n</parameter><parameter=s>\n42\n</parameter></function>"
    (call,), _ = parse_calls(xml, "qwen3_xml", {"f": {"properties": {"s": {"type": "string"}}}})
    assert call.arguments == {"n": 42, "s": "42"}


@pytest.mark.parametrize("step", [1, 3, 50])
def test_reasoning_split(step: int) -> None:
    assert split(THINK_REPLY, None, step) == ("Hello there!", "The user greets me.", [])
    assert split(THINK_REPLY, None, step, reasoning=False) == (THINK_REPLY, "", [])
    # R1 distills open the block in the prompt: the reply starts as reasoning and only closes it.
    assert split("hmm</think>\n\nYes.", None, step, think_open=True) == ("Yes.", "hmm", [])
    assert split("<think>unfinished", None, step) == ("", "unfinished", [])
    # Reasoning, then a call.
    assert split("<think>use a tool</think>" + HERMES_REPLY, "hermes", step)[1:] == (
        "use a tool",
        [("get_weather", {"city": "Paris"})],
    )


@pytest.mark.parametrize("step", [1, 2, 7, 1000])
def test_gpt_oss_channels_split(step: int) -> None:
    def run(text: str, tools: dict[str, dict[str, object]] | None) -> tuple[str, str, list[tuple[str, dict]]]:
        splitter = HarmonySplitter(tools)  # type: ignore[arg-type]
        pieces = [p for i in range(0, len(text), step) for p in splitter.feed(text[i : i + step])]
        rest, calls = splitter.finish()
        pieces += rest
        kinds = {k: "".join(t for kind, t in pieces if kind == k) for k in ("content", "reasoning")}
        return kinds["content"], kinds["reasoning"], [(c.name, c.arguments) for c in calls]

    assert run(GPT_OSS_REPLY, None) == ("It is sunny in Paris.", "The user wants the weather.", [])
    assert run(GPT_OSS_CALL, TOOLS) == ("", "I need the weather tool.", [("get_weather", {"city": "Paris"})])
    # Without tools offered, or with arguments that do not parse, a commentary body is content, never an error.
    assert run(GPT_OSS_CALL, None)[0] == '{"city": "Paris"}'
    assert run(GPT_OSS_CALL.replace('"Paris"}', '"Par'), TOOLS)[0] == '{"city": "Par'
    assert run("Just text, no channels.", None) == ("Just text, no channels.", "", [])
    # The recipient may come first, and the <|end|> control token may be missing (llama.cpp hides it).
    call = 'to=functions.get_time<|channel|>commentary json<|message|>{"city": "Oslo"}'
    analysis = "<|channel|>analysis<|message|>Time, then.<|start|>assistant "
    assert run(analysis + call, TOOLS) == ("", "Time, then.", [("get_time", {"city": "Oslo"})])
    assert run(" " + call, TOOLS) == ("", "", [("get_time", {"city": "Oslo"})])
    assert detect_family(HARMONY_TEMPLATE) == "gpt_oss" and template_thinks(HARMONY_TEMPLATE)


def test_thinking_templates() -> None:
    assert not template_opens_think(THINK_TEMPLATE)  # Qwen 3 style: only the closed, empty block
    assert template_opens_think("{% if add_generation_prompt %}<｜Assistant｜><think>\n{% endif %}")
    assert not template_opens_think(CHATML_TEMPLATE)


def test_tool_choice_and_tools_validation() -> None:
    assert parse_tool_choice(None, TOOLS) == ("auto", None)
    assert parse_tool_choice(None, {}) == ("none", None)
    assert parse_tool_choice({"type": "function", "function": {"name": "get_time"}}, TOOLS) == ("required", "get_time")
    for bad in ("sometimes", {"type": "function", "function": {"name": "nope"}}):
        with pytest.raises(InvalidRequest, match="tool_choice"):
            parse_tool_choice(bad, TOOLS)
    with pytest.raises(InvalidRequest, match="required"):
        parse_tool_choice("required", {})
    for bad_tools in ({"name": "x"}, [{"type": "function"}], [{"function": {"name": "bad name!"}}]):
        with pytest.raises(InvalidRequest, match="tools"):
            parse_tools(bad_tools)
    named = call_format(TOOLS, "get_time", True)["json_schema"]["schema"]
    assert named["properties"]["name"] == {"const": "get_time"}


# ------------------------------------------------------------------------------------------------ over HTTP


pytest_plugins = ["test_protocol_support"]  # protocol_home / protocol_server, shared by the protocol tests


@pytest.fixture
def server(protocol_server: ServerProcess) -> ServerProcess:
    return protocol_server


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=server.url + "v1", api_key="unused", max_retries=0, timeout=60)


@pytest.mark.parametrize("model", [HERMES, QWEN3, LLAMA3, MISTRAL, GENERIC])
def test_openai_sdk_gets_tool_calls_from_every_family(server: ServerProcess, model: str) -> None:
    response = client(server).chat.completions.create(model=model, messages=ASK, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    choice = response.choices[0]
    assert choice.finish_reason == "tool_calls"
    (call,) = choice.message.tool_calls or []
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert not choice.message.content


def test_streamed_tool_calls_in_openai_chunk_shape(server: ServerProcess) -> None:
    stream = client(server).chat.completions.create(
        model=PARALLEL,
        messages=ASK,
        tools=[WEATHER_TOOL],
        stream=True,  # type: ignore[list-item]
    )
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert content.strip() == "Checking."  # text before a call streams as content
    deltas = [d for c in chunks for d in (c.choices[0].delta.tool_calls or [])]
    firsts = [d for d in deltas if d.id]
    assert [d.index for d in firsts] == [0, 1] and all(d.function and d.function.name == "get_weather" for d in firsts)
    arguments = {0: "", 1: ""}
    for d in deltas:
        arguments[d.index] += (d.function.arguments or "") if d.function else ""
    assert [json.loads(a)["city"] for a in arguments.values()] == ["Paris", "London"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_parallel_tool_calls_false_keeps_one(server: ServerProcess) -> None:
    response = client(server).chat.completions.create(
        model=PARALLEL,
        messages=ASK,
        tools=[WEATHER_TOOL],
        parallel_tool_calls=False,  # type: ignore[list-item]
    )
    assert len(response.choices[0].message.tool_calls or []) == 1


def test_plain_reply_under_auto_and_tool_choice_none(server: ServerProcess) -> None:
    plain = client(server).chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert plain.choices[0].message.content == REPLY and not plain.choices[0].message.tool_calls
    assert plain.choices[0].finish_reason == "stop"
    none = client(server).chat.completions.create(
        model=HERMES,
        messages=ASK,
        tools=[WEATHER_TOOL],
        tool_choice="none",  # type: ignore[list-item]
    )
    assert none.choices[0].message.content == HERMES_REPLY and not none.choices[0].message.tool_calls


@pytest.mark.parametrize(
    "choice", ["required", {"type": "function", "function": {"name": "get_weather"}}], ids=["required", "named"]
)
def test_required_and_named_choices_are_constrained_by_a_grammar(server: ServerProcess, choice: object) -> None:
    response = client(server).chat.completions.create(
        model=GENERIC,
        messages=ASK,
        tools=[WEATHER_TOOL, TIME_TOOL],
        tool_choice=choice,  # type: ignore[arg-type, list-item]
    )
    (call,) = response.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    # The grammar holds a model to the tools: one that would answer in prose must still produce a call.
    forced = client(server).chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=[TIME_TOOL],  # type: ignore[list-item]
        tool_choice={"type": "function", "function": {"name": "get_time"}},
        max_tokens=60,
        temperature=0,
    )
    message = forced.choices[0].message
    if message.tool_calls:  # the tiny model's grammar-allowed tokens can end in a complete call …
        assert message.tool_calls[0].function.name == "get_time"
    else:  # … or run out of tokens inside one; it is never the prose reply
        assert forced.choices[0].finish_reason == "length"
        assert (message.content or "").replace(" ", "").startswith('{"name":"get_time","arguments":{')


@pytest.mark.parametrize("model", [LLAMA3_TAG, MISTRAL_TAG])
def test_control_token_markers_are_kept_while_tools_are_offered(server: ServerProcess, model: str) -> None:
    c = client(server)
    # The marker (<|python_tag|>, [TOOL_CALLS]) is a control token after some text: only with it visible can
    # the parser tell the call from the text (llama.cpp's server keeps such "preserved tokens" too).
    answer = c.chat.completions.create(model=model, messages=ASK, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls" and (message.content or "").strip() in (
        "Let me check.",
        "Sure.",
    )
    (call,) = message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    streamed = list(c.chat.completions.create(model=model, messages=ASK, tools=[WEATHER_TOOL], stream=True))  # type: ignore[list-item]
    assert streamed[-1].choices[0].finish_reason == "tool_calls"
    # Without tools the control token stays hidden, as for any answer.
    plain = c.chat.completions.create(model=model, messages=ASK).choices[0].message.content or ""
    assert "<|python_tag|>" not in plain and "[TOOL_CALLS]" not in plain and '"get_weather"' in plain


def test_auto_calls_are_held_to_the_offered_tools_by_a_lazy_grammar(server: ServerProcess) -> None:
    c = client(server)
    # The model's own reply calls "pong", a tool nobody offered: without tools it comes out as written …
    free = c.chat.completions.create(model=MISSPELLED, messages=ASK).choices[0].message.content or ""
    assert '"pong"' in free
    # … under tool_choice auto the text before <tool_call> is free, and from the marker on only calls of the
    # offered tools can be written, so the call parses (llama.cpp's lazy grammar). Greedy: the tiny model's
    # path through the grammar is then fixed.
    options: dict[str, Any] = {"tools": [PING_TOOL], "temperature": 0, "parallel_tool_calls": False}
    answer = c.chat.completions.create(model=MISSPELLED, messages=ASK, **options)
    message = answer.choices[0].message
    assert answer.choices[0].finish_reason == "tool_calls" and (message.content or "").strip() == "Sure."
    assert [(t.function.name, json.loads(t.function.arguments)) for t in message.tool_calls or []] == [("ping", {})]
    chunks = list(c.chat.completions.create(model=MISSPELLED, messages=ASK, stream=True, **options))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices).strip() == "Sure."
    assert chunks[-1].choices[0].finish_reason == "tool_calls"
    # Every family's calls still come out exactly as the model writes them (test_openai_sdk_gets_tool_calls…).
    # A model that reasons: a call written inside <think> … </think> does not switch the grammar on.
    thought = c.chat.completions.create(model=THINK_TOOLS, messages=ASK, **options)
    assert thought.choices[0].finish_reason == "stop" and thought.choices[0].message.content == "Hello there!"
    assert '"pong"' in (thought.choices[0].message.model_extra or {})["reasoning_content"]


def test_gpt_oss_channels_over_the_apis(server: ServerProcess) -> None:
    c = client(server)
    # The channel markers are control tokens: the engine keeps them for a harmony template, the API splits them.
    answer = c.chat.completions.create(model=GPT_OSS, messages=ASK).choices[0].message
    assert answer.content == "It is sunny in Paris."
    assert (answer.model_extra or {}).get("reasoning_content") == "The user wants the weather."
    chunks = list(c.chat.completions.create(model=GPT_OSS, messages=ASK, stream=True))
    deltas = [ch.choices[0].delta for ch in chunks if ch.choices]
    assert "".join(d.content or "" for d in deltas) == "It is sunny in Paris."
    assert (
        "".join((d.model_extra or {}).get("reasoning_content") or "" for d in deltas) == "The user wants the weather."
    )
    called = c.chat.completions.create(model=GPT_OSS_TOOLS, messages=ASK, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    assert called.choices[0].finish_reason == "tool_calls" and not called.choices[0].message.content
    (call,) = called.choices[0].message.tool_calls or []
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    thinking = httpx.post(
        server.url + "api/chat", json={"model": GPT_OSS, "messages": ASK, "stream": False}, timeout=60
    )
    assert thinking.json()["message"] == {
        "role": "assistant",
        "content": "It is sunny in Paris.",
        "thinking": "The user wants the weather.",
    }
    raw = c.chat.completions.create(model=GPT_OSS, messages=ASK, extra_body={"reasoning_format": "none"})
    assert raw.choices[0].message.content == GPT_OSS_REPLY  # reasoning_format none: the text as generated


@pytest.mark.parametrize("model", list(TRIGGER_TRAPS))
def test_hostile_replies_around_the_grammar_trigger_never_break_the_worker(server: ServerProcess, model: str) -> None:
    # llama.cpp aborts the process if its lazy grammar is handed text it cannot take; every trigger pattern
    # captures only the marker and what the grammar accepts after it, whatever the model writes around it.
    c = client(server)
    for temperature in (0.0, 1.0):
        answer = c.chat.completions.create(
            model=model, messages=ASK, tools=[WEATHER_TOOL], max_tokens=48, temperature=temperature
        )
        assert answer.choices[0].finish_reason in ("stop", "length", "tool_calls")
    (row,) = [r for r in server.ps() if r["model"] == model]
    again = c.chat.completions.create(model=model, messages=ASK, tools=[WEATHER_TOOL], max_tokens=48)
    assert again.choices[0].finish_reason in ("stop", "length", "tool_calls")
    assert [r["pid"] for r in server.ps() if r["model"] == model] == [row["pid"]]  # the same worker serves


def test_two_step_tool_loop(server: ServerProcess) -> None:
    c = client(server)
    first = c.chat.completions.create(model=HERMES, messages=ASK, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    call = (first.choices[0].message.tool_calls or [])[0]
    history = [
        *ASK,
        first.choices[0].message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": json.dumps({"forecast": "sunny"})},
    ]
    # The history (assistant tool_calls, tool result) renders through the model's template; a plain model answers.
    second = c.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER_TOOL])  # type: ignore[arg-type, list-item]
    assert second.choices[0].message.content == REPLY
    again = c.chat.completions.create(model=HERMES, messages=history, tools=[WEATHER_TOOL])  # type: ignore[arg-type, list-item]
    assert again.choices[0].finish_reason == "tool_calls"


def test_bad_tool_requests_are_400(server: ServerProcess) -> None:
    url = server.url + "v1/chat/completions"
    cases = [
        ({"tools": [{"type": "function"}]}, "tools"),
        ({"tools": [WEATHER_TOOL], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"parallel_tool_calls": "yes"}, "parallel_tool_calls"),
        ({"reasoning_format": "sideways"}, "reasoning_format"),
    ]
    for extra, param in cases:
        answer = httpx.post(url, json={"model": HERMES, "messages": ASK, **extra}, timeout=30)
        assert answer.status_code == 400, extra
        assert answer.json()["error"]["param"] == param
    # A history whose tool-call arguments are not JSON gets a message saying what to send.
    broken = [*ASK, {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
              "function": {"name": "get_weather", "arguments": "{oops"}}]}]  # fmt: skip
    answer = httpx.post(url, json={"model": HERMES, "messages": broken}, timeout=30)
    assert answer.status_code == 400 and "arguments" in answer.json()["error"]["message"]
    # Half a surrogate pair is valid JSON but not Unicode: a 400 wherever it is, never a 500.
    half = "a\ud800b"
    tool = {"type": "function", "function": {"name": "get_weather", "parameters": {"properties": {half: {}}}}}
    schema = {"type": "json_schema", "json_schema": {"name": "x", "schema": {"properties": {half: {}}}}}
    for extra in ({"tools": [tool]}, {"messages": [{"role": "user", "content": half}]}, {"response_format": schema}):
        raw = json.dumps({"model": HERMES, "messages": ASK, **extra})  # ASCII JSON: "\ud800" as an escape
        answer = httpx.post(url, content=raw, headers={"Content-Type": "application/json"}, timeout=30)
        if "response_format" in extra:  # the grammar converter writes it as an escape: answered
            assert answer.status_code == 200
        else:
            assert answer.status_code == 400 and "surrogate" in answer.json()["error"]["message"], extra


def test_reasoning_content_and_the_switch(server: ServerProcess) -> None:
    c = client(server)
    split_answer = c.chat.completions.create(model=THINKER, messages=ASK)
    message = split_answer.choices[0].message
    assert message.content == "Hello there!"
    assert message.model_extra and message.model_extra["reasoning_content"] == "The user greets me."
    raw = c.chat.completions.create(model=THINKER, messages=ASK, extra_body={"reasoning_format": "none"})
    assert raw.choices[0].message.content == THINK_REPLY
    chunks = list(c.chat.completions.create(model=THINKER, messages=ASK, stream=True))
    reasoning = "".join((ch.choices[0].delta.model_extra or {}).get("reasoning_content") or "" for ch in chunks)
    assert reasoning == "The user greets me."
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks) == "Hello there!"


def test_langchain_chat_openai_bind_tools(server: ServerProcess) -> None:
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return f"sunny in {city}"

    llm = ChatOpenAI(model=QWEN3, base_url=server.url + "v1", api_key="unused", max_retries=0, timeout=60)  # type: ignore[arg-type]
    message = llm.bind_tools([get_weather]).invoke("Weather in Paris?")
    assert [(c["name"], c["args"]) for c in message.tool_calls] == [("get_weather", {"city": "Paris"})]
    streamed = None
    for part in llm.bind_tools([get_weather]).stream("Weather in Paris?"):
        streamed = part if streamed is None else streamed + part
    assert streamed is not None and streamed.tool_calls[0]["args"] == {"city": "Paris"}  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------------------ both hosts


def test_openai_sdk_on_both_hosts(host: ServerProcess) -> None:
    c = openai.OpenAI(base_url=host.url + "v1", api_key=host.key, max_retries=0, timeout=60)
    assert c.chat.completions.create(model=MODEL, messages=ASK).choices[0].message.content == REPLY
    chunks = list(c.chat.completions.create(model=MODEL, messages=ASK, stream=True))
    assert "".join(ch.choices[0].delta.content or "" for ch in chunks if ch.choices) == REPLY
    # A full tool round trip: the model calls, the client runs the tool, the result goes back, the model answers.
    streamed = list(c.chat.completions.create(model=HERMES, messages=ASK, tools=[WEATHER_TOOL], stream=True))  # type: ignore[list-item]
    deltas = [d for ch in streamed if ch.choices for d in ch.choices[0].delta.tool_calls or []]
    assert deltas[0].id and deltas[0].function and deltas[0].function.name == "get_weather"
    assert json.loads("".join(d.function.arguments or "" for d in deltas if d.function)) == {"city": "Paris"}
    first = c.chat.completions.create(model=HERMES, messages=ASK, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    (call,) = first.choices[0].message.tool_calls or []
    result = weather(**json.loads(call.function.arguments))

    def answer(content: str) -> Any:
        history = [
            *ASK,
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": content},
        ]
        return c.chat.completions.create(model=ANSWERER, messages=history, tools=[WEATHER_TOOL])  # type: ignore[arg-type, list-item]

    final, empty = answer(result), answer("")
    assert final.choices[0].message.content == ANSWER_REPLY and final.choices[0].finish_reason == "stop"
    assert final.usage.prompt_tokens > empty.usage.prompt_tokens  # the tool's result reached the prompt
    if host.name == "jupyter":  # the Jupyter token is the key: without it, no answer
        wrong = openai.OpenAI(base_url=host.url + "v1", api_key="not-the-token", max_retries=0, timeout=30)
        with pytest.raises(openai.PermissionDeniedError):
            wrong.chat.completions.create(model=MODEL, messages=ASK)


def test_langchain_chat_openai_on_both_hosts(host: ServerProcess) -> None:
    from langchain_core.messages import HumanMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        return weather(city)

    def llm(model: str) -> ChatOpenAI:
        return ChatOpenAI(model=model, base_url=host.url + "v1", api_key=host.key, max_retries=0, timeout=60)  # type: ignore[arg-type]

    question = HumanMessage("Weather in Paris?")
    streamed = None
    for part in llm(QWEN3).bind_tools([get_weather]).stream([question]):
        streamed = part if streamed is None else streamed + part
    assert streamed is not None and streamed.tool_calls[0]["args"] == {"city": "Paris"}  # type: ignore[attr-defined]
    asked = llm(QWEN3).bind_tools([get_weather]).invoke([question])
    assert [(c["name"], c["args"]) for c in asked.tool_calls] == [("get_weather", {"city": "Paris"})]
    result = get_weather.invoke(asked.tool_calls[0])  # a ToolMessage answering that call
    final = llm(ANSWERER).bind_tools([get_weather]).invoke([question, asked, result])
    assert final.content == ANSWER_REPLY and not final.tool_calls


def test_tools_and_template_kwargs_reach_the_chat_template(server: ServerProcess) -> None:
    c = client(server)
    bare = c.chat.completions.create(model=MODEL, messages=ASK)
    offered = c.chat.completions.create(model=HERMES, messages=ASK, tools=[WEATHER_TOOL])  # type: ignore[list-item]
    unoffered = c.chat.completions.create(model=HERMES, messages=ASK)
    assert bare.usage and offered.usage and unoffered.usage
    # The Hermes template lists the tools in a system turn: the prompt grows by their JSON.
    assert offered.usage.prompt_tokens > unoffered.usage.prompt_tokens + len(json.dumps(WEATHER_TOOL)) // 2
    thinking_off = c.chat.completions.create(
        model=THINKER, messages=ASK, extra_body={"chat_template_kwargs": {"enable_thinking": False}}
    )
    thinking_on = c.chat.completions.create(model=THINKER, messages=ASK)
    assert thinking_off.usage and thinking_on.usage
    assert thinking_off.usage.prompt_tokens > thinking_on.usage.prompt_tokens


def test_tokenize_and_detokenize(server: ServerProcess) -> None:
    def post(path: str, body: dict[str, object]) -> httpx.Response:
        return httpx.post(server.url + path, json=body, timeout=60)

    assert post("engines/unload", {"all": True}).status_code == 200
    tokens = post("tokenize", {"model": MODEL, "content": "hello world"}).json()["tokens"]
    assert tokens and all(isinstance(t, int) for t in tokens)
    pieces = post("tokenize", {"model": MODEL, "content": "hello world", "with_pieces": True}).json()["tokens"]
    assert [p["id"] for p in pieces] == tokens
    text = post("detokenize", {"model": MODEL, "tokens": tokens}).json()["content"]
    assert text.strip() == "hello world" and "".join(p["piece"] for p in pieces) == text
    # Like llama-server, the model may be left out while only one is loaded …
    assert post("tokenize", {"content": "hello world"}).json()["tokens"] == tokens
    assert post("detokenize", {"tokens": tokens}).json()["content"] == text
    post("tokenize", {"model": GENERIC, "content": "x"})
    # … but not when two are.
    answer = post("tokenize", {"content": "hello"})
    assert answer.status_code == 400 and answer.json()["error"]["param"] == "model"
    for path, body, param in [
        ("tokenize", {"model": MODEL, "content": 5}, "content"),
        ("detokenize", {"model": MODEL, "tokens": ["a"]}, "tokens"),
    ]:
        bad = post(path, body)
        assert bad.status_code == 400 and bad.json()["error"]["param"] == param


def test_completions_echo_and_suffix(server: ServerProcess) -> None:
    c = client(server)
    echoed = c.completions.create(model=MODEL, prompt="Once upon a time", echo=True, max_tokens=32)
    assert echoed.choices[0].text == "Once upon a time" + REPLY
    streamed = list(c.completions.create(model=MODEL, prompt="Once", echo=True, max_tokens=32, stream=True))
    assert streamed[0].choices[0].text == "Once" and "".join(s.choices[0].text for s in streamed) == "Once" + REPLY
    with pytest.raises(openai.BadRequestError) as fim:
        c.completions.create(model=MODEL, prompt="def f(", suffix="    return 1\n", max_tokens=8)
    assert "fill-in-the-middle" in str(fim.value) and fim.value.body["param"] == "suffix"  # type: ignore[index]


def test_n_choices_each_with_their_own_calls_and_text(server: ServerProcess) -> None:
    c = client(server)
    plain = c.chat.completions.create(model=THINKER, messages=ASK, n=2)
    assert [ch.index for ch in plain.choices] == [0, 1]
    assert all(ch.message.content == "Hello there!" for ch in plain.choices)
    assert all((ch.message.model_extra or {}).get("reasoning_content") == "The user greets me." for ch in plain.choices)
    calls = c.chat.completions.create(model=HERMES, messages=ASK, tools=[WEATHER_TOOL], n=2)  # type: ignore[list-item]
    assert [ch.finish_reason for ch in calls.choices] == ["tool_calls", "tool_calls"]
    assert len({(ch.message.tool_calls or [])[0].id for ch in calls.choices}) == 2
    chunks = list(c.chat.completions.create(model=PARALLEL, messages=ASK, tools=[WEATHER_TOOL], n=2, stream=True))  # type: ignore[list-item]
    for index in (0, 1):
        mine = [ch.choices[0] for ch in chunks if ch.choices and ch.choices[0].index == index]
        assert mine[0].delta.role == "assistant" and mine[-1].finish_reason == "tool_calls"
        assert "".join(m.delta.content or "" for m in mine).strip() == "Checking."
        deltas = [d for m in mine for d in (m.delta.tool_calls or [])]
        assert [d.index for d in deltas if d.id] == [0, 1]


def test_reasoning_effort_reaches_the_template(server: ServerProcess) -> None:
    # A template that prints its reasoning_effort: the prompt grows with the word given.
    c = client(server)
    base = c.chat.completions.create(model=EFFORT, messages=ASK)
    low = c.chat.completions.create(model=EFFORT, messages=ASK, reasoning_effort="low")
    high = c.chat.completions.create(
        model=EFFORT, messages=ASK, extra_body={"chat_template_kwargs": {"reasoning_effort": "high high high"}}
    )
    assert base.usage and low.usage and high.usage
    assert base.usage.prompt_tokens < low.usage.prompt_tokens < high.usage.prompt_tokens
