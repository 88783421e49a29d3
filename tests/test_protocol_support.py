"""Tiny models for the protocol tests: one per tool-call family, a thinking model, and the plain ones.

Each tiny model answers its fixed reply to any prompt; its chat template is what a real model of that family
carries (enough of it for the family to be recognised, and to render tools when the engine passes them).
Imported by test_tools.py, test_ollama.py and test_anthropic.py (no tests of its own), which share one server
through the session fixtures below (``pytest_plugins = ["test_protocol_support"]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from test_api_support import JupyterProcess, ServerProcess, fill_store, filled_home, serving

from mr_notebook.store import Store
from mr_notebook.testing.tiny_model import CHATML_TEMPLATE, TinyModelFactory

_CHATML_LOOP = (
    "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + (message['content'] or '')"
    " + '<|im_end|>' + '\n'}}{% endfor %}"
)
_TOOLS_SYSTEM = (
    "{% if tools %}<|im_start|>system\n# Tools\n<tools>{% for tool in tools %}{{ tool | tojson }}{% endfor %}"
    '</tools>\nCall a tool as: <tool_call>{"name": NAME, "arguments": ARGS}</tool_call><|im_end|>\n{% endif %}'
)
_GEN = "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"

HERMES_TEMPLATE = _TOOLS_SYSTEM + _CHATML_LOOP + _GEN
QWEN3_TEMPLATE = (
    _TOOLS_SYSTEM.replace(
        '<tool_call>{"name": NAME, "arguments": ARGS}</tool_call>',
        "<tool_call><function=NAME><parameter=P>V</parameter></function></tool_call>",
    )
    + _CHATML_LOOP
    + _GEN
)
LLAMA3_TEMPLATE = (
    "{{ bos_token }}{% if tools %}<|start_header_id|>system<|end_header_id|>\n\nRespond with a JSON object "
    '{"name": function name, "parameters": arguments}. <|python_tag|> {{ tools | tojson }}<|eot_id|>{% endif %}'
    + _CHATML_LOOP
    + _GEN
)
MISTRAL_TEMPLATE = (
    "{% if tools %}[AVAILABLE_TOOLS]{{ tools | tojson }}[/AVAILABLE_TOOLS]{% endif %}"
    "{% for message in messages %}{% if message.tool_calls %}[TOOL_CALLS]{{ message.tool_calls | tojson }}"
    "{% else %}{{ '<|im_start|>' + message['role'] + '\n' + (message['content'] or '') + '<|im_end|>\n' }}"
    "{% endif %}{% endfor %}" + _GEN
)
THINK_TEMPLATE = (
    _CHATML_LOOP + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}"
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\n\n</think>\n\n' }}{% endif %}"
    "{% endif %}"
)

CALL = '{"name": "get_weather", "arguments": {"city": "Paris"}}'
HERMES_REPLY = f"<tool_call>\n{CALL}\n</tool_call>"
QWEN3_REPLY = "<tool_call>\n<function=get_weather>\n<parameter=city>\nParis\n</parameter>\n</function>\n</tool_call>"
LLAMA3_REPLY = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
MISTRAL_REPLY = f"[TOOL_CALLS][{CALL}]"
PARALLEL_REPLY = (
    f"Checking. <tool_call>{CALL}</tool_call> "
    '<tool_call>{"name": "get_weather", "arguments": {"city": "London"}}</tool_call>'
)
THINK_REPLY = "<think>The user greets me.</think>Hello there!"

HERMES = "ai/hermes-tools:latest"
QWEN3 = "ai/qwen3-tools:latest"
LLAMA3 = "ai/llama3-tools:latest"
MISTRAL = "ai/mistral-tools:latest"
GENERIC = "ai/generic-tools:latest"
PARALLEL = "ai/parallel-tools:latest"
THINKER = "ai/thinker:latest"
EFFORT = "ai/effort:latest"
#: Prints the reasoning effort the request gave (gpt-oss templates read ``reasoning_effort``).
EFFORT_TEMPLATE = "{% if reasoning_effort is defined %}Reasoning: {{ reasoning_effort }}\n{% endif %}" + CHATML_TEMPLATE

#: name → (reply, template) of every tool-calling model.
TOOL_MODELS = {
    HERMES: (HERMES_REPLY, HERMES_TEMPLATE),
    QWEN3: (QWEN3_REPLY, QWEN3_TEMPLATE),
    LLAMA3: (LLAMA3_REPLY, LLAMA3_TEMPLATE),
    MISTRAL: (MISTRAL_REPLY, MISTRAL_TEMPLATE),
    GENERIC: (CALL, CHATML_TEMPLATE),
    PARALLEL: (PARALLEL_REPLY, HERMES_TEMPLATE),
}

#: Replies whose call marker is a control token (hidden unless the engine keeps it, as it does when tools are
#: offered) after some text, and one whose call names a tool that was not offered (``auto``'s lazy grammar
#: holds it to the offered names): name → (reply, template, control tokens).
LLAMA3_TAG = "ai/llama3-tag:latest"
MISTRAL_TAG = "ai/mistral-tag:latest"
MISSPELLED = "ai/misspelled-tools:latest"
TAG_REPLY = 'Let me check. <|python_tag|>{"name": "get_weather", "parameters": {"city": "Paris"}}'
MISTRAL_TAG_REPLY = f"Sure. [TOOL_CALLS][{CALL}]"
MISSPELLED_REPLY = 'Sure. <tool_call>\n{"name": "pong", "arguments": {}}\n</tool_call>'
#: gpt-oss: harmony channels (control tokens) for reasoning, answer and calls; the template only mentions them.
GPT_OSS = "ai/gpt-oss-tiny:latest"
GPT_OSS_TOOLS = "ai/gpt-oss-tools:latest"
#: <|return|> and <|call|> in the vocabulary make llama.cpp treat <|end|> as the end of a message, not of the answer.
HARMONY_CONTROLS = ("<|channel|>", "<|message|>", "<|start|>", "<|end|>", "<|constrain|>", "<|return|>", "<|call|>")
HARMONY_TEMPLATE = "{#- gpt-oss: <|channel|>analysis / final / commentary -#}" + CHATML_TEMPLATE
GPT_OSS_REPLY = (
    "<|channel|>analysis<|message|>The user wants the weather.<|end|>"
    "<|start|>assistant<|channel|>final<|message|>It is sunny in Paris."
)
GPT_OSS_CALL = (
    "<|channel|>analysis<|message|>I need the weather tool.<|end|><|start|>assistant<|channel|>commentary "
    'to=functions.get_weather <|constrain|>json<|message|>{"city": "Paris"}'
)
#: A thinking Hermes model that writes a call inside its reasoning, then answers in words.
THINK_TOOLS = "ai/think-tools:latest"
THINK_TOOLS_REPLY = '<think>Maybe <tool_call>\n{"name": "pong", "arguments": {}}\n</tool_call> no.</think>Hello there!'
#: Hostile replies around the lazy grammar's trigger: the marker glued to a wrong call, the marker then a call
#: of a tool nobody offered, and a marker inside a string (the grammar must never see text it cannot take).
TRIGGER_TRAPS = {
    "ai/trap-glued:latest": '<tool_call>{"nope": 1}</tool_call><tool_call>',
    "ai/trap-spaced:latest": '<tool_call>\n{"nope": 1, "name": []}\n</tool_call> <tool_call>\n\n\n\n\n\n\n\n\n\n<',
    "ai/trap-quoted:latest": 'Say "<tool_call>" then {"name": "get_weather"',
}
CONTROL_MODELS = {
    THINK_TOOLS: (THINK_TOOLS_REPLY, _TOOLS_SYSTEM + THINK_TEMPLATE, ()),
    GPT_OSS: (GPT_OSS_REPLY, HARMONY_TEMPLATE, HARMONY_CONTROLS),
    GPT_OSS_TOOLS: (GPT_OSS_CALL, HARMONY_TEMPLATE, HARMONY_CONTROLS),
    LLAMA3_TAG: (TAG_REPLY, LLAMA3_TEMPLATE, ("<|python_tag|>",)),
    MISTRAL_TAG: (MISTRAL_TAG_REPLY, MISTRAL_TEMPLATE, ("[TOOL_CALLS]",)),
    MISSPELLED: (MISSPELLED_REPLY, HERMES_TEMPLATE, ()),
}

WEATHER_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
#: The second step of a tool round trip: a Hermes-template model that answers in words (tool results render).
ANSWERER = "ai/tool-answer:latest"
ANSWER_REPLY = "It is sunny in Paris."


def weather(city: str) -> str:
    """The tool the round-trip tests run between the model's call and its answer."""
    return f"sunny, 21 degrees in {city}"


#: A tool without parameters: greedy decoding under its grammar has one finite path (no free string to fill).
PING_TOOL = {
    "type": "function",
    "function": {
        "name": "ping",
        "description": "Check the connection",
        "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
    },
}
TIME_TOOL = {
    "type": "function",
    "function": {
        "name": "get_time",
        "description": "The time in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def fill_protocol_store(home: Path, factory: TinyModelFactory) -> Store:
    """The API tests' models plus the tool-calling and thinking ones."""
    store = fill_store(home, factory)
    for name, (reply, template) in TOOL_MODELS.items():
        store.import_gguf(factory(reply=reply, chat_template=template), name)
    for name, reply in TRIGGER_TRAPS.items():
        store.import_gguf(factory(reply=reply, chat_template=HERMES_TEMPLATE), name)
    for name, (reply, template, controls) in CONTROL_MODELS.items():
        store.import_gguf(factory(reply=reply, chat_template=template, controls=controls), name)
    store.import_gguf(factory(reply=ANSWER_REPLY, chat_template=HERMES_TEMPLATE), ANSWERER)
    store.import_gguf(factory(reply=THINK_REPLY, chat_template=THINK_TEMPLATE), THINKER)
    store.import_gguf(factory(chat_template=EFFORT_TEMPLATE), EFFORT)
    return store


@pytest.fixture(scope="session")
def protocol_home(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Path:
    return filled_home(tmp_path_factory, tiny_model_factory, fill_protocol_store)


@pytest.fixture(scope="session")
def protocol_server(protocol_home: Path) -> Iterator[ServerProcess]:
    """One `serve()` for the three protocol test modules (each model loads once for all of them)."""
    with serving(ServerProcess(protocol_home)) as server:
        yield server


@pytest.fixture(scope="session")
def protocol_jupyter(protocol_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One real `jupyter server` with the extension over the same store (its Jupyter token is the key)."""
    with serving(JupyterProcess(protocol_home, tmp_path_factory.mktemp("jupyter"))) as server:
        yield server


@pytest.fixture(params=["serve", "jupyter"])
def host(request: pytest.FixtureRequest) -> ServerProcess:
    """Each host of the API in turn: `mr-notebook serve`, and Jupyter's ``{base_url}mr/`` with the token."""
    server = request.getfixturevalue("protocol_server" if request.param == "serve" else "protocol_jupyter")
    assert isinstance(server, ServerProcess)
    return server
