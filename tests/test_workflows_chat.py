"""``%%chat`` workflows in a real in-process IPython shell on tiny models: --error, --insert, --models / -n,
--logprobs (and its escaping), provenance, ``{df}`` previews, and %model lock / sync against a local registry."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from IPython.core.interactiveshell import ExecutionResult, InteractiveShell
from IPython.utils.capture import CapturedIO

from mr_notebook.client.local import LocalEngine
from mr_notebook.conversation import TOKEN_VIEW_LIMIT
from mr_notebook.kernel import kernel_state
from mr_notebook.kernel.chat import ChatReply
from mr_notebook.kernel.compare import CompareView, Run
from mr_notebook.kernel.context import first_code_block, preview
from mr_notebook.kernel.reply import Reply
from mr_notebook.kernel.tokens import TokenView
from mr_notebook.store import Store
from mr_notebook.testing import DEFAULT_REPLY, TinyModelFactory
from mr_notebook.testing.markup import PAYLOADS, inert_text
from mr_notebook.testing.registry import LocalRegistry
from mr_notebook.testing.shell import fresh, magic_shell, run_cell
from mr_notebook.testing.tiny_model import CHATML_TEMPLATE
from mr_notebook.workflows.lock import LockError, read_lock, sync

#: A model that thinks first (Qwen 3 style template); its reasoning is model text too.
THINK_TEMPLATE = CHATML_TEMPLATE + (
    "{% if enable_thinking is defined and enable_thinking is false %}{{ '<think>\\n\\n</think>\\n\\n' }}{% endif %}"
)
REASONING = 'The user greets me. <img src=x onerror="alert(1)"> & <script>steal()</script>'
THINK_REPLY = f"<think>{REASONING}</think>Hello **there**!"
CODE_REPLY = "Divide by a number that is not zero:\n```python\nx = 1 / 2\nprint(x)\n```\nThat is all."
HOSTILE = '<img src=x onerror="alert(1)"> & <script>steal()</script>'


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Path:
    home = tmp_path_factory.mktemp("workflow-chat") / "home"
    store = Store(home)
    store.import_gguf(tiny_model_factory(context_length=8192), "ai/tiny")
    store.import_gguf(tiny_model_factory(reply=CODE_REPLY, context_length=8192), "ai/code")
    store.import_gguf(tiny_model_factory(reply=HOSTILE), "ai/hostile")
    store.import_gguf(tiny_model_factory(reply=THINK_REPLY, chat_template=THINK_TEMPLATE), "ai/thinker")
    return home


@pytest.fixture(scope="module")
def shell(home: Path) -> Iterator[InteractiveShell]:
    """One shell for the module, its extension loaded on an in-kernel engine over ``home``."""
    with magic_shell(home) as ip:
        yield ip


@pytest.fixture
def ip(shell: InteractiveShell) -> InteractiveShell:
    return fresh(shell)


def run(ip: InteractiveShell, code: str) -> tuple[ExecutionResult, CapturedIO]:
    return run_cell(ip, code, store_history=True)


def test_error_sends_the_last_exception_and_its_cell(ip: InteractiveShell) -> None:
    result, _ = run(ip, "values = [1, 2]\ntotal = sum(values) / (len(values) - 2)")
    assert isinstance(result.error_in_exec, ZeroDivisionError)
    result, out = run(ip, "%%chat -m ai/tiny --error\nI expected the mean.")
    assert result.success, out.stderr
    sent = ip.user_ns["_chat"].messages[-2]["content"]
    assert "ZeroDivisionError: division by zero" in sent
    assert "total = sum(values) / (len(values) - 2)" in sent  # the failing cell's source
    assert "Traceback (most recent call last)" in sent and sent.rstrip().endswith("I expected the mean.")
    assert "\x1b[" not in sent  # plain text, no terminal colours


def test_insert_puts_the_first_code_block_into_a_new_cell(ip: InteractiveShell) -> None:
    # A terminal shell pre-fills the next prompt; a kernel sends a set_next_input payload (test_workflows_kernel).
    ip.rl_next_input = None
    result, _ = run(ip, "%%chat -m ai/code --insert\nFix it")
    assert result.success and ip.rl_next_input == "x = 1 / 2\nprint(x)"
    ip.rl_next_input = None
    result, out = run(ip, "%%chat -m ai/tiny --insert\nNo code here")
    assert ip.rl_next_input is None and "no code block" in out.stdout


def test_reasoning_apart_from_the_answer_and_out_of_the_history(ip: InteractiveShell) -> None:
    result, out = run(ip, "%%chat -m ai/thinker\nHi")
    assert result.success, out.stderr
    reply = ip.user_ns["_chat"]
    assert (str(reply), reply.reasoning) == ("Hello **there**!", REASONING)
    # A terminal has no collapsing: the reasoning comes first, dimmed, then the answer.
    assert out.stdout.startswith(f"\x1b[2m{REASONING}\x1b[0m\n\nHello **there**!")
    result, _ = run(ip, "%%chat -m ai/thinker\nAgain")
    assert result.success
    # The answer goes back to the model without its reasoning (what thinking templates expect).
    assert ip.user_ns["_chat"].messages[:2] == [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello **there**!"},
    ]
    assert kernel_state(ip).conversation("ai/thinker").entries[1]["reasoning"] == REASONING


def test_reasoning_shows_collapsed_above_the_answer_and_inert() -> None:
    shown = Reply("Hello **there**!", REASONING)._repr_html_()
    # Our one <details> (closed) comes first; model text never makes one (the checker refuses any).
    assert shown.startswith("<details") and shown.count("<details") == shown.count("</details>") == 1
    assert " open" not in shown and shown.index("</details>") < shown.index("<strong>there</strong>")
    text = inert_text(shown.replace("<details", "<div", 1).replace("</details>", "</div>", 1))
    assert REASONING in text and f"Reasoning ({len(REASONING.split())} words)" in text
    # While the model thinks (no answer yet) the collapsed line says so.
    assert "Thinking… (3 words)" in Reply("", "one two three", streaming=True)._repr_html_()
    assert "<details" not in Reply("Just an answer.")._repr_html_()


def test_first_code_block() -> None:
    assert first_code_block("a\n~~~py\nz = 3\n~~~\n```\nw\n```") == "z = 3"
    assert first_code_block("```python\n    indented()\n```") == "    indented()"
    assert first_code_block("no fence `inline` only") is None


def test_models_side_by_side(ip: InteractiveShell) -> None:
    result, out = run(ip, "%%chat --models ai/tiny,ai/code --max-tokens 40\nHello both")
    assert result.success, out.stderr
    replies = ip.user_ns["_chat"]
    assert isinstance(replies, list) and [r.model for r in replies] == ["ai/tiny", "ai/code"]
    assert [str(r) for r in replies] == [DEFAULT_REPLY, CODE_REPLY]
    for reply in replies:
        assert reply.usage["completion_tokens"] > 0 and reply.provenance["ttft"] > 0
        assert reply.provenance["digest"].startswith("sha256:")
    shown = out.outputs[-1].data
    assert "ai/tiny" in shown["text/plain"] and "ai/code" in shown["text/plain"] and "tok/s" in shown["text/plain"]


def test_n_samples_use_different_seeds(ip: InteractiveShell) -> None:
    result, _ = run(ip, "%%chat -m ai/tiny -n 3 --seed 7 --temperature 0.8\nOne fact")
    assert result.success
    replies = ip.user_ns["_chat"]
    assert [r.provenance["seed"] for r in replies] == [7, 8, 9] and all(str(r) == DEFAULT_REPLY for r in replies)
    # One request with n = 3 (one prompt evaluation, forked by the engine), not three requests.
    assert [r.provenance["params"]["n"] for r in replies] == [3, 3, 3]
    assert all(r.usage["completion_tokens"] > 0 for r in replies)


def test_n_beyond_the_models_parallel_setting_sends_separate_requests(ip: InteractiveShell) -> None:
    result, _ = run(ip, "%%chat -m ai/tiny -n 5 --seed 1\nOne fact")
    assert result.success
    replies = ip.user_ns["_chat"]
    assert [r.provenance["seed"] for r in replies] == [1, 2, 3, 4, 5]
    assert all("n" not in r.provenance["params"] for r in replies)


def test_logprobs_view_is_escaped(ip: InteractiveShell) -> None:
    result, out = run(ip, "%%chat -m ai/hostile --logprobs\nSay it")
    assert result.success, out.stderr
    reply = ip.user_ns["_chat"]
    assert str(reply) == HOSTILE and reply.logprobs and all("token" in e for e in reply.logprobs)
    # A terminal shell shows text/plain only; the HTML is what a notebook gets (test_workflows_kernel too).
    assert out.outputs[-1].data["text/plain"] == HOSTILE
    shown = TokenView(str(reply), reply.logprobs)._repr_html_()
    assert "mr-token" in shown and "title=" in shown
    assert "<img" not in shown and "<script" not in shown and 'onerror="' not in shown
    assert "&lt;img" in shown and "&lt;script&gt;" in shown and "&amp;" in shown
    # The tokens, put back together, are the reply.
    assert "".join(e["token"] for e in reply.logprobs) == HOSTILE


def test_token_view_is_bounded() -> None:
    entries = [{"token": "a", "logprob": -0.1, "top_logprobs": []}] * (TOKEN_VIEW_LIMIT + 10)
    shown = TokenView("a" * (TOKEN_VIEW_LIMIT + 10) + "<tail>", entries)._repr_html_()
    assert shown.count("class='mr-token'") == TOKEN_VIEW_LIMIT
    assert "a" * 10 + "&lt;tail&gt;</span>" in shown  # the rest of the reply, as text


def test_compare_view_is_escaped() -> None:
    runs = [Run("ai/hostile", "ai/hostile", {}, parts=[HOSTILE]), Run("<i>label</i>", "ai/tiny", {})]
    runs[1].error = ValueError("<script>boom</script>")
    shown = CompareView(runs)._repr_html_()
    assert "&lt;i&gt;label&lt;/i&gt;" in shown and "&lt;script&gt;boom" in shown
    assert "<img" not in shown and "<script" not in shown and "&lt;script&gt;steal()" in shown


def test_provenance_on_every_reply(ip: InteractiveShell, home: Path) -> None:
    run(ip, "%%chat -m ai/tiny --seed 3 --temperature 0.5\nHi")
    reply = ip.user_ns["_chat"]
    assert isinstance(reply, ChatReply)
    prov = reply.provenance
    assert prov["model"] == "ai/tiny" and prov["digest"] == Store(home).get("ai/tiny").id
    assert prov["params"] == {"temperature": 0.5, "seed": 3} and prov["seed"] == 3
    assert prov["engine"]["name"] == "mr-notebook" and prov["engine"]["mode"] == "local" and prov["time"]
    assert kernel_state(ip).used_models["ai/tiny"] == prov["digest"]


def test_dataframe_in_a_prompt_is_a_bounded_preview(ip: InteractiveShell) -> None:
    ip.user_ns["df"] = pd.DataFrame({"city": [f"c{i}" for i in range(1000)], "pop": range(1000)})
    ip.user_ns["xs"] = list(range(500))
    result, out = run(ip, "%%chat -m ai/tiny\nSummarise {df} and {xs}")
    assert result.success
    sent = ip.user_ns["_chat"].messages[-2]["content"]
    assert "DataFrame with 1000 rows × 2 columns; dtypes: city: " in sent and ", pop: int64" in sent
    assert "|  | city | pop |" in sent and "| 4 | c4 | 4 |" in sent and "| 5 |" not in sent
    assert "(first 5 of 1000 rows)" in sent and "[480 more items, 500 in all]" in sent
    assert len(sent) < 1500
    tokens = ip.user_ns["_chat"].usage["prompt_tokens"]
    assert f"(Prompt: {tokens:,} tokens, with {{df}}, {{xs}}.)" in out.stdout


def test_preview_bounds() -> None:
    assert preview("x" * 5000).endswith("[truncated: 2000 of 5000 characters]")
    assert preview([1, 2]) == "[1, 2]" and preview("short") == "short"
    wide = pd.DataFrame({f"c{i}": [i] for i in range(30)})
    assert "first 20 of 30 columns" in preview(wide)
    cell = preview(pd.DataFrame({"a": ["pipe | and\nnewline" * 10]}))
    assert "pipe \\| and newline" in cell and "…" in cell


# ---------------------------------------------------------------------- lock → sync
def test_lock_then_sync_round_trip(
    ip: InteractiveShell,
    home: Path,
    local_registry: LocalRegistry,
    tiny_model_factory: TinyModelFactory,
    tmp_path: Path,
) -> None:
    name = f"{local_registry.host}/ai/pinned:v1"
    digest = local_registry.push_model("ai/pinned", "v1", [tiny_model_factory(reply="Pinned reply.")])
    first = tmp_path / "first"
    state = kernel_state(ip)
    state.use(LocalEngine(Store(first)))  # this notebook's kernel, on its own store
    try:
        run(ip, f"%model pull {name}")
        result, out = run(ip, f"%%chat -m {name}\nHi")
        assert result.success and str(ip.user_ns["_chat"]) == "Pinned reply."
        lock_path = tmp_path / "mr-notebook.lock"
        result, out = run(ip, f"%model lock {lock_path}")
        assert result.success and "Locked 1 model(s)" in out.stdout
    finally:
        state.use(LocalEngine(Store(home)))  # closes the other one
    assert [(m.name, m.digest) for m in read_lock(lock_path)] == [(name, digest)]
    assert read_lock(lock_path)[0].source.endswith(f"ai/pinned@{digest}")

    # The registry's tag moves to another model: sync still gets the locked digest, by digest.
    local_registry.push_model("ai/pinned", "v1", [tiny_model_factory(reply="A newer model.")])
    second = tmp_path / "second"
    before = len(local_registry.requests())
    cli = subprocess.run(
        [sys.executable, "-m", "mr_notebook.cli", "--home", str(second), "sync", str(lock_path)],
        capture_output=True,
        text=True,
        timeout=120,
        env={k: v for k, v in os.environ.items() if not k.startswith("MR_NOTEBOOK_")},
    )
    assert cli.returncode == 0, cli.stderr
    assert "1 model(s) match" in cli.stdout
    stored = Store(second)
    assert stored.get(name).id == digest and [r.tags for r in stored.list()] == [[name]]
    uris = [e["uri"] for e in local_registry.requests()[before:]]
    assert f"/v2/ai/pinned/manifests/{digest}" in uris and "/v2/ai/pinned/manifests/v1" not in uris

    # A second sync changes nothing; a different model under the locked name is refused, not used.
    engine = LocalEngine(stored)
    lines: list[str] = []
    sync(lock_path, engine, lines.append)
    assert lines == [f"{name} is up to date ({digest[7:19]})."]
    third = Store(tmp_path / "third")
    third.import_gguf(tiny_model_factory(reply="Imposter."), name)
    with pytest.raises(LockError, match="Nothing was changed"):
        sync(lock_path, LocalEngine(third))
    assert third.get(name).id != digest
    engine.close()


def test_lock_needs_a_used_model_and_a_readable_file(ip: InteractiveShell, tmp_path: Path) -> None:
    kernel_state(ip).used_models.clear()
    result, _ = run(ip, f"%model lock {tmp_path / 'x.lock'}")
    assert not result.success and "has not used a model yet" in str(result.error_in_exec)
    bad = tmp_path / "bad.lock"
    bad.write_text(json.dumps({"models": [{"name": "ai/x"}]}))
    with pytest.raises(LockError, match="needs a"):
        read_lock(bad)
    with pytest.raises(LockError, match="No lock file"):
        read_lock(tmp_path / "missing.lock")


@pytest.mark.parametrize("payload", PAYLOADS)
def test_token_view_and_columns_stay_inert(payload: str) -> None:
    # Tokens and hover alternatives are model text too: cut the payload into tokens, offer it as alternatives.
    tokens = [payload[i : i + 7] for i in range(0, len(payload), 7)]
    entries = [
        {
            "token": t,
            "logprob": -0.5,
            "top_logprobs": [{"token": payload, "logprob": -1.0}, {"token": '">', "logprob": -2}],
        }
        for t in tokens
    ]
    shown = TokenView(payload, entries)._repr_html_()
    assert inert_text(shown).startswith(payload)
    runs = [Run(payload, "ai/x", {}, parts=[payload]), Run("ai/y", "ai/y", {}, parts=["fine"])]
    inert_text(CompareView(runs)._repr_html_())
    # Reasoning is model text too; the one <details> is ours (the checker refuses any other).
    for streaming in (False, True):
        shown = Reply(payload, payload, streaming=streaming)._repr_html_()
        assert shown.count("<details") == shown.count("</details>") == 1
        inert_text(shown.replace("<details", "<div", 1).replace("</details>", "</div>", 1))
