"""Model text never becomes live markup in a notebook: what the kernel sends for ``%%chat``, ``%model run …
"prompt"`` and ``_chat`` is sanitised HTML (Markdown kept) and plain text, never ``text/markdown`` (JupyterLab
renders raw HTML inside the Markdown of trusted outputs without sanitising it).

The browser half (JupyterLab really running nothing, the chat widget) is in test_browser.py.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from typing import Any

import pytest
from jupyter_client.manager import KernelManager

from mr_notebook.kernel.display import MARKDOWN_MAX_CHARS, SafeMarkdown, StreamView, markdown_html
from mr_notebook.store import Store
from mr_notebook.testing.markup import FORMATTED, FORMATTED_HTML, PAYLOAD, PAYLOADS, LiveMarkup, inert_text
from mr_notebook.testing.tiny_model import TinyModelFactory

OUTPUTS = ("display_data", "update_display_data", "execute_result")


def squash(text: str) -> str:
    return re.sub(r"\s+", " ", text).strip()


# ---------------------------------------------------------------------- the renderer
@pytest.mark.parametrize("reply", PAYLOADS, ids=range(len(PAYLOADS)))
def test_hostile_replies_render_to_inert_html_and_stay_readable(reply: str) -> None:
    html = markdown_html(reply)
    text = inert_text(html)  # raises LiveMarkup on anything that could run or load
    # The attack is still there to read, as text.
    for word in re.findall(r"onerror|<script>|javascript:|srcdoc|onload|ontoggle", reply):
        assert word in text or word in html, (word, html)


def test_the_checker_catches_live_markup() -> None:
    """Guards the guard: each of these would run or load something."""
    for html in (
        "<img src=x onerror=alert(1)>",
        "<a href='javascript:alert(1)'>x</a>",
        "<a href='JAVASCRIPT:alert(1)'>x</a>",
        "<p onclick=alert(1)>x</p>",
        "<iframe srcdoc='x'></iframe>",
        "<svg onload=alert(1)>",
        "<div style='position:fixed'>x</div>",
        "<a href='/api/kernels'>relative</a>",
    ):
        with pytest.raises(LiveMarkup):
            inert_text(html)


def test_markdown_formatting_is_kept() -> None:
    html = markdown_html(FORMATTED)
    inert_text(html)
    for fragment in FORMATTED_HTML:
        assert fragment in html, (fragment, html)
    links = re.findall(r"<a [^>]*>[^<]*</a>", html)
    assert len(links) == 3, html
    assert all('target="_blank" rel="noopener noreferrer nofollow"' in link for link in links)
    assert links[2].endswith(">chart</a>")


def test_deep_nesting_and_very_long_replies_fall_back_to_plain_text() -> None:
    # markdown-it would drop everything below its nesting limit: show all of it, as text.
    deep = ">" * 20_000 + " still here"
    html = markdown_html(deep)
    assert html.startswith("<div style='white-space:pre-wrap'>") and inert_text(html) == deep
    nested_list = "\n".join("  " * depth + "- item" for depth in range(200)) + "\n" + "  " * 200 + "- last"
    assert inert_text(markdown_html(nested_list)) == nested_list
    # Only the first MARKDOWN_MAX_CHARS characters are parsed as Markdown; the rest follows as text.
    long = ("**a** " * (MARKDOWN_MAX_CHARS // 6)).ljust(MARKDOWN_MAX_CHARS) + "**tail** <b>"
    html = markdown_html(long)
    assert "<strong>a</strong>" in html and "<strong>tail</strong>" not in html
    assert html.endswith("<div style='white-space:pre-wrap'>**tail** &lt;b&gt;</div>")


def test_safe_markdown_bundle_is_html_and_plain_text() -> None:
    from IPython.core.formatters import DisplayFormatter

    data, _ = DisplayFormatter().format(SafeMarkdown(PAYLOAD))  # type: ignore[no-untyped-call]
    assert set(data) == {"text/plain", "text/html"}
    assert data["text/plain"] == PAYLOAD
    assert "<strong>bold</strong>" in data["text/html"]
    inert_text(data["text/html"])


def test_stream_view_in_a_terminal_writes_the_raw_text(capsys: pytest.CaptureFixture[str]) -> None:
    view = StreamView(rich=False)
    view.update("Hi <b>")
    view.update("Hi <b> there")
    view.finish("Hi <b> there")
    assert capsys.readouterr().out == "Hi <b> there\n"


# ---------------------------------------------------------------------- in a real kernel
@pytest.fixture(scope="module")
def kernel(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Iterator[Any]:
    """An ipykernel with the extension loaded and a model whose reply is :data:`PAYLOAD`."""
    base = tmp_path_factory.mktemp("display-security")
    Store(base / "home").import_gguf(tiny_model_factory(reply=PAYLOAD), "ai/payload")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MR_NOTEBOOK_")}
    env["MR_NOTEBOOK_HOME"] = str(base / "home")
    km = KernelManager(kernel_name="python3")
    km.start_kernel(env=env, cwd=str(base))
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)

        def run(code: str) -> list[dict[str, Any]]:
            messages: list[dict[str, Any]] = []
            reply = kc.execute_interactive(code, timeout=120, output_hook=messages.append)
            assert reply["content"]["status"] == "ok", [m["content"] for m in messages]
            return messages

        run("%load_ext mr_notebook")
        yield run
    finally:
        kc.stop_channels()
        km.shutdown_kernel(now=False)


def _shown(messages: list[dict[str, Any]]) -> list[dict[str, str]]:
    """Each mime bundle a cell showed; none may hold live markup, and none is Markdown."""
    bundles = [m["content"]["data"] for m in messages if m["msg_type"] in OUTPUTS]
    for data in bundles:
        assert set(data) <= {"text/plain", "text/html"}, sorted(data)
        if "text/html" in data:
            inert_text(data["text/html"])
    return bundles


@pytest.mark.parametrize(
    "cell", ["%%chat -m ai/payload\nSay hi", '%model run ai/payload "Say hi"'], ids=["chat", "model-run"]
)
def test_model_text_in_a_kernel_is_shown_as_sanitised_html(kernel: Any, cell: str) -> None:
    bundles = _shown(kernel(cell))
    final = bundles[-1]
    assert final["text/plain"] == PAYLOAD
    assert "<strong>bold</strong>" in final["text/html"]  # Markdown kept
    visible = squash(inert_text(final["text/html"]))
    assert '<img src=x onerror="window.__pwned=1;alert(1)">' in visible  # the text is readable
    assert "<script>window.__pwned=2;alert(2)</script>" in visible
    assert "[click me](javascript:window.__pwned=4)" in visible


def test_chat_variable_is_displayed_safely(kernel: Any) -> None:
    kernel("%%chat -m ai/payload\nSay hi")
    for code in ("_chat", "display(_chat)", "from IPython.display import display\ndisplay(_chat)"):
        bundles = _shown(kernel(code))
        assert bundles and all('Hi <img src=x onerror="window' in data["text/plain"] for data in bundles)


def test_model_run_without_prompt_shows_safe_html(kernel: Any) -> None:
    bundles = _shown(kernel("%model run ai/payload"))
    assert "<strong>ai/payload:latest</strong> is loaded" in bundles[-1]["text/html"]
    assert "print(response.choices[0].message.content)" in inert_text(bundles[-1]["text/html"])
