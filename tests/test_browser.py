"""The widgets in a real browser: JupyterLab (token on, loopback) driven by Debian's Chromium with Playwright.

Nothing is downloaded: Chromium is the system's (``apt-get install chromium``), Playwright only drives it.
Screenshots go to ``test-artifacts/`` (git-ignored); the README's come from there.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Locator, Page, expect, sync_playwright

from mr_notebook.store import Store
from mr_notebook.testing.hub import LocalHub
from mr_notebook.testing.markup import PAYLOAD
from mr_notebook.testing.registry import free_port
from mr_notebook.testing.tiny_model import CHATML_TEMPLATE, TinyModelFactory

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
ARTIFACTS = Path(__file__).resolve().parent.parent / "test-artifacts"
#: Markdown the tiny model answers with, so the screenshot shows the renderer at work.
REPLY = 'Hello! Here is **bold**, *italic* and `code`:\n\n```python\nprint("hi")\n```\n- one\n- two'
#: A model that thinks first (a template that knows <think>), its reasoning the hostile payload.
THINK_TEMPLATE = CHATML_TEMPLATE + "{% if enable_thinking is defined %}<think></think>{% endif %}"
THINK_REPLY = f"<think>{PAYLOAD}</think>The answer is **42**."
START_TIMEOUT = 120.0
UI_TIMEOUT_MS = 90_000


@dataclass
class Lab:
    url: str
    token: str
    root: Path
    hub: LocalHub


def _notebook(cells: list[str]) -> str:
    return json.dumps(
        {
            "cells": [
                {
                    "cell_type": "code",
                    "execution_count": None,
                    "id": f"c{i}",
                    "metadata": {},
                    "outputs": [],
                    "source": source,
                }
                for i, source in enumerate(cells)
            ],
            "metadata": {
                "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
                "language_info": {"name": "python"},
            },
            "nbformat": 4,
            "nbformat_minor": 5,
        }
    )


@pytest.fixture(scope="module")
def lab(tmp_path_factory: pytest.TempPathFactory, tiny_model_factory: TinyModelFactory) -> Iterator[Lab]:
    base = tmp_path_factory.mktemp("browser")
    home, root, config = base / "home", base / "root", base / "jupyter-config"
    for folder in (root, config / "labconfig"):
        folder.mkdir(parents=True)
    store = Store(home)
    store.import_gguf(tiny_model_factory(reply=REPLY), "ai/tiny")
    # A long context, so the never-ending reply streams for many seconds (~1000 tokens/s) until Stop.
    store.import_gguf(tiny_model_factory(never_stop=True, context_length=32768), "ai/forever")
    store.configure("ai/forever", context_size=32768)
    store.import_gguf(tiny_model_factory(reply="spare"), "ai/spare")
    store.import_gguf(tiny_model_factory(reply=PAYLOAD), "ai/payload")  # a model that answers with XSS
    store.import_gguf(tiny_model_factory(reply=THINK_REPLY, chat_template=THINK_TEMPLATE), "ai/thinker")
    # No news toast over the notebook in screenshots.
    (config / "labconfig" / "page_config.json").write_text(
        json.dumps({"disabledExtensions": {"@jupyterlab/apputils-extension:announcements": True}})
    )
    (root / "widgets.ipynb").write_text(
        _notebook(
            [
                'import mr_notebook\nw = mr_notebook.chat("ai/tiny")\nw',
                f"print(w.messages[-1]['content'] == {REPLY!r}, w.engine.mode)",
                "m = mr_notebook.manager()\nm",
            ]
        )
    )
    (root / "security.ipynb").write_text(
        _notebook(
            [
                "%load_ext mr_notebook",
                "%%chat -m ai/payload\nSay hi",
                '%model run ai/payload "Say hi"',
                'import mr_notebook\nw = mr_notebook.chat("ai/payload")\nw',
            ]
        )
    )
    (root / "reasoning.ipynb").write_text(
        _notebook(
            [
                "%load_ext mr_notebook",
                "%%chat -m ai/thinker\nWhat is the answer?",
                'import mr_notebook\nt = mr_notebook.chat("ai/payload")\nt.logprobs = True\nt',
                'r = mr_notebook.chat("ai/thinker")\nr',
            ]
        )
    )
    # A Hugging Face endpoint for the pull box; slow enough that the progress bar and Cancel show.
    hub = LocalHub().start()
    pulled = tiny_model_factory(reply="pulled")
    hub.add_repo("test/tiny-GGUF", {"tiny-GGUF-Q8_0.gguf": pulled})
    hub.rate = pulled.stat().st_size / 3
    token, port = secrets.token_hex(16), free_port()
    env = {
        **os.environ,
        "HF_ENDPOINT": hub.url,
        "MR_NOTEBOOK_HOME": str(home),
        "JUPYTER_CONFIG_DIR": str(config),
        "JUPYTER_DATA_DIR": str(base / "jupyter-data"),
        "JUPYTER_RUNTIME_DIR": str(base / "jupyter-runtime"),
        "IPYTHONDIR": str(base / "ipython"),
        "MR_NOTEBOOK_KEEP_ALIVE": "-1",
    }
    for name in ("MR_NOTEBOOK_URL", "MR_NOTEBOOK_TOKEN"):
        env.pop(name, None)
    ARTIFACTS.mkdir(exist_ok=True)
    log = (ARTIFACTS / "jupyterlab.log").open("w")
    jupyter = str(Path(sys.executable).parent / "jupyter")
    server = subprocess.Popen(
        [
            jupyter,
            "lab",
            "--no-browser",
            f"--IdentityProvider.token={token}",
            "--ServerApp.ip=127.0.0.1",
            f"--port={port}",
            f"--ServerApp.root_dir={root}",
            "--ServerApp.port_retries=0",
            *(["--allow-root"] if os.geteuid() == 0 else []),
        ],  # CI containers run as root
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"JupyterLab exited with {server.returncode}; see {log.name}")
            try:
                if httpx.get(f"{url}/api/status", params={"token": token}, timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"JupyterLab did not answer within {START_TIMEOUT} s; see {log.name}")
            time.sleep(0.25)
        yield Lab(url, token, root, hub)
    finally:
        _shutdown(server, url, token)
        hub.stop()
        log.close()


def _shutdown(server: subprocess.Popen[bytes], url: str, token: str) -> None:
    """Shut kernels down through the API, stop the server, then end whatever is left of its process group."""
    try:
        for kernel in httpx.get(f"{url}/api/kernels", params={"token": token}, timeout=5).json():
            httpx.delete(f"{url}/api/kernels/{kernel['id']}", params={"token": token}, timeout=30)
    except httpx.HTTPError:
        pass
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=30)
    except subprocess.TimeoutExpired:
        server.kill()
        server.wait(timeout=10)
    try:
        os.killpg(server.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@pytest.fixture
def page(lab: Lab) -> Iterator[Page]:
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 1000}, device_scale_factor=1)
        context.set_default_timeout(UI_TIMEOUT_MS)
        expect.set_options(timeout=UI_TIMEOUT_MS)
        page = context.new_page()
        try:
            yield page
        finally:
            page.screenshot(path=str(ARTIFACTS / "lab-last.png"), full_page=True)
            context.close()
            browser.close()


def run_cell(page: Page, index: int) -> None:
    """Select cell ``index`` and run it with Shift+Enter, as a user would."""
    cell = page.locator(".jp-Notebook .jp-Cell").nth(index)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def test_chat_and_manager_in_jupyterlab(lab: Lab, page: Page) -> None:
    page.goto(f"{lab.url}/lab/tree/widgets.ipynb?token={lab.token}")
    expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(3)
    # Cells run before the kernel is connected are skipped, so wait for the status bar to say Idle.
    expect(page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"Python 3.*\| Idle"))).to_be_visible()

    # --- ChatWidget: type, Enter, watch the reply stream in and render as Markdown
    run_cell(page, 0)
    chat = page.locator(".mrnb-chat")
    expect(chat).to_be_visible()
    expect(chat.locator("select.mrnb-model")).to_have_value("ai/tiny:latest")
    box = chat.locator("textarea.mrnb-input")
    box.fill("Say hello in Markdown, please.")
    box.press("Enter")
    expect(chat.locator(".mrnb-user .mrnb-body")).to_have_text("Say hello in Markdown, please.")
    reply = chat.locator(".mrnb-assistant .mrnb-body").last
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply.locator("pre code")).to_have_text('print("hi")')
    expect(reply.locator("li")).to_have_count(2)
    expect(chat.locator(".mrnb-status")).to_contain_text("tokens")
    expect(box).to_have_value("")
    chat.screenshot(path=str(ARTIFACTS / "chat-widget.png"))

    # The conversation is in Python too, and this kernel used the shared engine.
    run_cell(page, 1)
    expect(page.locator(".jp-Cell").nth(1).locator(".jp-OutputArea-output")).to_contain_text("True")

    # --- Stop: a model that never stops, picked in the widget
    chat.locator("select.mrnb-model").select_option("ai/forever:latest")
    chat.locator("input[aria-label='Max tokens']").fill("30000")
    chat.locator("input[aria-label='Max tokens']").press("Tab")
    box.fill("Go on forever")
    chat.locator("button", has_text="Send").click()
    replies = chat.locator(".mrnb-assistant:not(.mrnb-thinking)")
    expect(replies).to_have_count(2)
    expect(chat.locator(".mrnb-streaming .mrnb-body")).to_contain_text("Hello from the tiny model!")
    chat.locator("button", has_text="Stop").click()
    expect(chat.locator(".mrnb-status")).to_contain_text("stopped")
    expect(chat.locator(".mrnb-streaming")).to_have_count(0)
    expect(replies.last).to_contain_text("Hello from the tiny model!")  # the partial reply stays
    expect(chat.locator(".mrnb-status")).not_to_contain_text("max tokens")
    expect(chat.locator("button", has_text="Send")).to_be_disabled()  # empty box
    expect(chat.locator("button", has_text="Stop")).to_be_disabled()

    # --- ModelManager: the loaded models, Unload, Remove with confirmation
    run_cell(page, 2)
    manager = page.locator(".mrnb-manager")
    tiny = manager.locator('tr[data-model="ai/tiny:latest"]')
    expect(tiny.locator(".mrnb-state")).to_have_text("loaded")
    expect(manager.locator('tr[data-model="ai/forever:latest"] .mrnb-state')).to_have_text("loaded")
    expect(manager.locator(".mrnb-totals")).to_contain_text("5 names")
    manager.screenshot(path=str(ARTIFACTS / "model-manager.png"))
    tiny.locator('[data-action="unload"]').click()
    expect(tiny.locator(".mrnb-state")).to_have_text("stored")
    expect(tiny.locator('[data-action="load"]')).to_be_visible()
    expect(manager.locator(".mrnb-notice")).to_have_text("Unloaded ai/tiny:latest.")

    spare = manager.locator('tr[data-model="ai/spare:latest"]')
    spare.locator('[data-action="remove"]').click()
    expect(spare.locator(".mrnb-confirm")).to_have_text("Remove?")
    spare.locator('[data-action="confirm-remove"]').click()
    expect(spare).to_have_count(0)
    expect(manager.locator(".mrnb-totals")).to_contain_text("4 names")

    # --- Pull box: progress while it downloads, then the new row
    pull_box = manager.locator(".mrnb-pull input")
    pull_box.fill("hf.co/test/tiny-GGUF:Q8_0")
    pull_box.press("Enter")
    expect(manager.locator(".mrnb-pull button", has_text="Cancel")).to_be_visible()
    expect(manager.locator(".mrnb-progress-text")).to_contain_text("downloading hf.co/test/tiny-GGUF:Q8_0")
    manager.screenshot(path=str(ARTIFACTS / "model-manager-pull.png"))
    pulled = manager.locator('tr[data-model="hf.co/test/tiny-gguf:Q8_0"]')
    expect(pulled.locator(".mrnb-state")).to_have_text("stored")
    done = re.compile(r"hf.co/test/tiny-gguf:Q8_0.* · [\d.]+ KiB at [\d.]+ KiB/s")
    expect(manager.locator(".mrnb-progress-text")).to_contain_text(done)
    expect(manager.locator(".mrnb-pull button", has_text="Cancel")).to_be_hidden()
    expect(manager.locator(".mrnb-totals")).to_contain_text("5 names")
    assert lab.hub.served_bytes("tiny-GGUF-Q8_0.gguf") > 0


#: Elements the payload would create if it became markup.
LIVE = "img, script, iframe, svg, object, embed, a[href^='javascript' i]"


def script_watch(page: Page) -> Callable[[Locator], None]:
    """Watch ``page`` for the payloads' effects; the returned check fails if any script ran (``__pwned`` set, a
    dialog opened) or ``where`` holds a live element."""
    dialogs: list[str] = []
    page.on("dialog", lambda dialog: (dialogs.append(dialog.message), dialog.dismiss()))

    def nothing_ran(where: Locator) -> None:
        # An image that failed to load, or a frame, runs its script within moments of being added.
        page.wait_for_timeout(500)
        assert (page.evaluate("() => window.__pwned ?? null"), dialogs) == (None, [])
        assert where.locator(LIVE).count() == 0

    return nothing_ran


def open_notebook(lab: Lab, page: Page, name: str) -> None:
    """Open NAME.ipynb (4 cells) in a workspace of its own (the default one would also reopen another test's
    notebook, with its cells) and wait for its kernel."""
    page.goto(f"{lab.url}/lab/workspaces/{name}/tree/{name}.ipynb?token={lab.token}")
    expect(page.locator(".jp-Notebook .jp-Cell")).to_have_count(4)
    expect(page.locator(".jp-StatusBar-Widget", has_text=re.compile(r"Python 3.*\| Idle"))).to_be_visible()


def test_model_replies_run_no_script_in_jupyterlab(lab: Lab, page: Page) -> None:
    """A model answering with XSS payloads (issue 10): %%chat, %model run "prompt" and the chat widget show
    the text, formatted, and nothing in it runs (the outputs are trusted, as after running a cell)."""
    nothing_ran = script_watch(page)
    open_notebook(lab, page, "security")
    for index in (0, 1, 2):
        cell = page.locator(".jp-Cell").nth(index)
        run_cell(page, index)
        expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"))  # ran to the end
        if index:
            shown = cell.locator(".jp-OutputArea-output").last
            nothing_ran(shown)
            expect(shown.locator("strong")).to_have_text("bold")  # Markdown still rendered
            expect(shown).to_contain_text('Hi <img src=x onerror="window.__pwned=1;alert(1)"> and bold')
            expect(shown).to_contain_text("<script>window.__pwned=2;alert(2)</script>")
            expect(shown).to_contain_text("[click me](javascript:window.__pwned=4)")
    page.locator(".jp-Cell").nth(1).screenshot(path=str(ARTIFACTS / "chat-cell-payload.png"))

    run_cell(page, 3)
    chat = page.locator(".mrnb-chat")
    box = chat.locator("textarea.mrnb-input")
    box.fill("Say hi")
    box.press("Enter")
    expect(chat.locator(".mrnb-status")).to_contain_text("tokens")  # the reply is complete
    nothing_ran(chat)
    reply = chat.locator(".mrnb-assistant .mrnb-body").last
    expect(reply.locator("strong")).to_have_text("bold")
    expect(reply).to_contain_text('Hi <img src=x onerror="window.__pwned=1;alert(1)"> and bold')
    expect(reply).to_contain_text('<svg onload="window.__pwned=5;alert(5)"></svg>')
    chat.screenshot(path=str(ARTIFACTS / "chat-widget-payload.png"))
    nothing_ran(page.locator(".jp-OutputArea-output"))


def test_reasoning_and_token_view_in_jupyterlab(lab: Lab, page: Page) -> None:
    """Reasoning collapsed above the answer (%%chat and the widget) and the widget's token view, through the
    server's engine: the reasoning and every token are the XSS payload, shown as text, and nothing runs."""
    nothing_ran = script_watch(page)
    open_notebook(lab, page, "reasoning")
    run_cell(page, 0)
    expect(page.locator(".jp-Cell").nth(0).locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"))

    # --- %%chat: a closed <details> above the answer; opened, it shows the reasoning as text
    run_cell(page, 1)
    cell = page.locator(".jp-Cell").nth(1)
    expect(cell.locator(".jp-InputPrompt")).to_have_text(re.compile(r"\[\d+\]"))
    shown = cell.locator(".jp-OutputArea-output").last
    details = shown.locator("details.mr-notebook-reasoning")
    expect(details).to_have_count(1)
    expect(details.locator("summary")).to_have_text(re.compile(r"^Reasoning \(\d+ words\)$"))
    expect(shown.locator("strong", has_text="42")).to_be_visible()
    assert details.evaluate("d => d.open") is False
    details.locator("summary").click()
    expect(details).to_contain_text('Hi <img src=x onerror="window.__pwned=1;alert(1)"> and bold')
    expect(details.locator("strong")).to_have_text("bold")  # reasoning is Markdown too
    nothing_ran(shown)

    # --- the token view: each token a shaded span of text; hover shows the alternatives
    run_cell(page, 2)
    chat = page.locator(".mrnb-chat").nth(0)
    toggle = chat.locator("input.mrnb-tokens-toggle")
    expect(toggle).to_be_checked()  # t.logprobs = True in Python shows in the browser
    box = chat.locator("textarea.mrnb-input")
    box.fill("Say hi")
    box.press("Enter")
    expect(chat.locator(".mrnb-status")).to_contain_text("tokens")
    view = chat.locator(".mrnb-assistant .mrnb-tokens").last
    expect(view).to_be_visible()
    assert view.locator(".mrnb-token").count() > 5
    assert view.evaluate("v => v.textContent") == PAYLOAD  # the tokens are the reply, as text
    assert view.locator(".mrnb-token").first.evaluate("t => getComputedStyle(t).backgroundColor") != "rgba(0, 0, 0, 0)"
    nothing_ran(chat)
    view.locator(".mrnb-token").nth(3).hover()
    tip = chat.locator(".mrnb-tip")
    expect(tip).to_be_visible()
    expect(tip).to_contain_text(re.compile(r"\d+\.\d%"))
    assert len(tip.inner_text().splitlines()) == 6  # the token and its 5 alternatives
    chat.screenshot(path=str(ARTIFACTS / "chat-widget-tokens.png"))
    # Off: the same reply as Markdown again; the checkbox changed the Python side too.
    toggle.uncheck()
    reply = chat.locator(".mrnb-assistant .mrnb-body").last
    expect(reply.locator("strong")).to_have_text("bold")
    expect(chat.locator(".mrnb-tokens")).to_have_count(0)
    nothing_ran(chat)

    # --- the widget shows reasoning collapsed too, and streams it before the answer
    run_cell(page, 3)
    thinker = page.locator(".mrnb-chat").nth(1)
    box = thinker.locator("textarea.mrnb-input")
    box.fill("Think first")
    box.press("Enter")
    expect(thinker.locator(".mrnb-status")).to_contain_text("tokens")
    reasoning = thinker.locator(".mrnb-assistant details.mrnb-reasoning").last
    expect(reasoning.locator("summary")).to_have_text(re.compile(r"^Reasoning \(\d+ words\)$"))
    assert reasoning.evaluate("d => d.open") is False
    expect(thinker.locator(".mrnb-assistant .mrnb-answer").last.locator("strong")).to_have_text("42")
    reasoning.locator("summary").click()
    expect(reasoning).to_contain_text("<script>window.__pwned=2;alert(2)</script>")
    thinker.screenshot(path=str(ARTIFACTS / "chat-widget-reasoning.png"))
    nothing_ran(page.locator(".jp-OutputArea-output"))
