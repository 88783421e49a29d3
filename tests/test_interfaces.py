"""Every interface gives the same answer to the same operation, and the layers import downwards only."""

from __future__ import annotations

import ast
import contextlib
import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import pytest

import mr_notebook
from mr_notebook import current
from mr_notebook.client import PullSummary
from mr_notebook.client.local import LocalEngine
from mr_notebook.client.remote import RemoteEngine
from mr_notebook.errors import MrNotebookError, error_for_code
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store
from mr_notebook.store.pull import PullProgress
from mr_notebook.tables import configured_text, df_record, purged_text, removal_lines
from mr_notebook.testing import TinyModelFactory
from mr_notebook.testing.hub import LocalHub
from mr_notebook.testing.shell import magic_shell
from mr_notebook.testing.tiny_model import CHATML_TEMPLATE
from mr_notebook.testing.waiting import wait_for
from mr_notebook.widgets import ChatWidget, ModelManager

PACKAGE = Path(mr_notebook.__file__).parent


def _unit(module: str) -> str:
    """``mr_notebook.kernel.chat`` → ``mr_notebook.kernel``: the packages and top modules the layers are made of."""
    return ".".join(module.split(".")[:2])


def _runtime_nodes(tree: ast.AST) -> list[ast.AST]:
    """Every node except those under ``if TYPE_CHECKING:`` (annotations only; they import nothing at run time)."""
    nodes: list[ast.AST] = []
    pending = [tree]
    while pending:
        node = pending.pop()
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            pending.extend(node.orelse)
            continue
        nodes.append(node)
        pending.extend(ast.iter_child_nodes(node))
    return nodes


def import_graph() -> dict[str, set[str]]:
    """Which unit imports which at run time, counting imports inside functions (lazy imports are still
    dependencies)."""
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.rglob("*.py"):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        unit = _unit(".".join(parts))
        if unit == "mr_notebook.__init__":  # the package root only re-exports, lazily
            continue
        for node in _runtime_nodes(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                base = node.module
                names = [f"{base}.{a.name}" for a in node.names] if base == "mr_notebook" else [base]
            else:
                continue
            for name in names:
                if name.startswith("mr_notebook.") and name != "mr_notebook.__version__":
                    graph.setdefault(unit, set()).add(_unit(name))
        graph.setdefault(unit, set()).discard(unit)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected groups of more than one unit (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                top = stack.pop()
                group.append(top)
                if top == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_has_no_cycle() -> None:
    graph = import_graph()
    assert "mr_notebook.kernel" in graph and "mr_notebook.widgets" in graph
    assert cycles(graph) == []
    # Widgets and helpers find the engine of the process in one place, not through the magics.
    assert "mr_notebook.kernel" not in graph["mr_notebook.widgets"]
    assert "mr_notebook.kernel" not in graph["mr_notebook.workflows"]
    assert graph["mr_notebook.current"] == {"mr_notebook.client"}


def test_the_cycle_check_sees_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_one_loopback_answer_for_hosts_origins_binds_and_registries() -> None:
    from mr_notebook.hosts import is_loopback

    for host in ("localhost", "LOCALHOST:8888", "127.0.0.1", "127.3.4.5:5000", "::1", "[::1]", "[::1]:12434"):
        assert is_loopback(host), host
    for host in ("", "0.0.0.0", "10.0.0.1", "127.0.0.1.nip.io", "localhost.evil.example", "127.evil", "[::2]:80"):
        assert not is_loopback(host), host


def test_one_short_id() -> None:
    from mr_notebook.digests import short_id

    assert short_id("sha256:" + "0123456789abcdef" * 4) == "0123456789ab" == short_id("0123456789abcdef" * 4)


def test_env_seen_by_a_test() -> None:
    """Run by the test below in a pytest whose shell points at a real server, token and Hub mirror."""
    leaked = sorted(n for n in os.environ if n.startswith(("MR_NOTEBOOK_", "HF_")))
    assert leaked == [], leaked
    os.environ["MR_NOTEBOOK_URL"] = "http://127.0.0.1:9/set-by-a-test/"  # undone before the next test


def test_env_seen_by_the_next_test() -> None:
    assert os.environ.get("MR_NOTEBOOK_URL") != "http://127.0.0.1:9/set-by-a-test/"


def test_the_shell_environment_does_not_reach_tests() -> None:
    env = {**os.environ, "MR_NOTEBOOK_URL": "http://127.0.0.1:9/", "MR_NOTEBOOK_TOKEN": "t", "HF_ENDPOINT": "http://x"}
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"  # this conftest is what is tested, not the installed plugins
    selected = [f"{__file__}::test_env_seen_by_a_test", f"{__file__}::test_env_seen_by_the_next_test"]
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *selected],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout


# ====================================================================== one table of cases, every interface
# Each interface runs the same operations, in order, on its own store holding the same two models; every answer
# is reduced to what a user sees (through the shared renderers of mr_notebook.tables where the interface gives
# data), so the in-process engine, HTTP, the CLI, the magics and the widget must say exactly the same thing.
# The in-process engine's answers are the reference; EXPECTED pins the rules themselves.

LOOP = "one two three "
TINY, LOOPER, ALIAS = "ai/tiny:latest", "ai/loop:latest", "ai/alias:v1"
#: A GGUF repository of the local Hub (Hugging Face's protocol); stored under its normalized name.
HUB_REF, PULLED = "hf.co/test/pulled-GGUF:Q8_0", "hf.co/test/pulled-gguf:Q8_0"
#: A thinking model (Qwen 3 style template): every interface shows the answer without its <think> block.
THINKER = "ai/thinker:latest"
THINK_TEMPLATE = CHATML_TEMPLATE + "{% if enable_thinking is defined %}<think></think>{% endif %}"
THINK_REPLY = "<think>The user says hi. <b>Two</b> words?</think>One two."


@dataclass(frozen=True)
class Case:
    name: str
    op: str
    args: tuple[Any, ...] = ()


CASES = [
    Case("list", "list"),
    Case("pull", "pull", (HUB_REF,)),
    Case("pull what is there", "pull", (HUB_REF,)),
    Case("chat with a thinking model", "chat", (THINKER, "hi")),
    Case("unload", "unload", (THINKER,)),
    Case("inspect", "inspect", (TINY,)),
    Case("inspect a missing model", "inspect", ("ai/missing:latest",)),
    Case("inspect a name that does not parse", "inspect", ("Bad Name!",)),
    Case("tag", "tag", (TINY, ALIAS)),
    Case("rm one of two names", "rm", (ALIAS,)),
    Case("configure a model that is not loaded", "configure", (TINY, 256)),
    Case("load by a short name", "load", ("ai/tiny",)),  # ps names it as list does, whoever spelt it
    Case("configure reloads an idle worker", "configure", (TINY, 320)),
    Case("rm a busy model without force", "rm_busy", (LOOPER,)),
    Case("rm a loaded idle model", "rm", (TINY,)),
    Case("ps", "ps"),
    Case("df", "df"),
    Case("purge", "purge"),
    Case("list after purge", "list"),
]

#: What the rules say, whatever the interface (a few answers are fully known in advance).
EXPECTED: dict[str, Callable[[Any], bool]] = {
    "list": lambda a: a == [LOOPER, THINKER, TINY],
    "chat with a thinking model": lambda a: a == "One two.",
    "unload": lambda a: a == [],
    "pull": lambda a: a[0].startswith(f"Pulled {PULLED} (") and a[1] is True,  # progress was shown
    "pull what is there": lambda a: a[0].startswith(f"Model {PULLED} is up to date"),
    "inspect a missing model": lambda a: a[0] == "error" and "pull ai/missing:latest" in a[1],
    "inspect a name that does not parse": lambda a: a[0] == "error" and "Bad Name!" in a[1],
    "tag": lambda a: a == [ALIAS, TINY],
    "rm one of two names": lambda a: a == [f"Untagged: {ALIAS}"],
    "configure a model that is not loaded": lambda a: "context_size=256" in a and "next load" in a,
    "load by a short name": lambda a: a == [TINY],
    "configure reloads an idle worker": lambda a: "context_size=320" in a and "was reloaded" in a,
    "rm a busy model without force": lambda a: a[0] == "error" and "answering requests" in a[1],
    "rm a loaded idle model": lambda a: a[0] == f"Untagged: {TINY}" and a[1].startswith("Deleted: sha256:"),
    "ps": lambda a: a == [LOOPER],  # the removed model's worker was ended first; the busy one stayed
    "df": lambda a: a.splitlines()[0].split() == ["Models", "3"],
    "purge": lambda a: a.startswith("Deleted 3 model(s)") and "(unloaded 1 first)" in a,
    "list after purge": lambda a: a == [],
}

Answer = Any


def _error(exc: BaseException) -> tuple[str, str]:
    return ("error", str(exc))


def _names(models: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted(str(tag) for model in models for tag in model.get("tags") or [])


def _ps_names(rows: Iterable[Mapping[str, Any]]) -> list[str]:
    return sorted(str(row["model"]) for row in rows)


def _inspected(model: Mapping[str, Any]) -> tuple[str, list[str]]:
    return str(model["id"]), sorted(model["tags"])


class Interface:
    """One way in; ``backing`` is the in-process engine that holds its models (to make one busy)."""

    name = ""
    backing: LocalEngine

    def rm(self, ref: str) -> Answer:
        raise NotImplementedError

    def run(self, case: Case) -> Answer:
        if case.op == "rm_busy":
            return self.rm_busy(*case.args)
        try:
            return getattr(self, case.op)(*case.args)
        except MrNotebookError as exc:
            return _error(exc)

    def rm_busy(self, name: str) -> Answer:
        with self.backing.chat_stream(name, [{"role": "user", "content": "go on"}], max_tokens=100_000) as stream:
            next(stream)  # generating now
            try:
                answer = self.rm(name)
            except MrNotebookError as exc:
                answer = _error(exc)
        wait_for(lambda: all(row["in_flight"] == 0 for row in self.backing.ps()), "the stream to end")
        return answer


class EngineInterface(Interface):
    name = "engine"

    def __init__(self, engine: LocalEngine) -> None:
        self.backing = self.engine = engine

    def list(self) -> Answer:
        return _names(self.engine.list())

    def pull(self, ref: str) -> Answer:
        events: list[PullProgress] = []
        summary = self.engine.pull(ref, events.append)
        return summary.message, any(e.status == "downloading" for e in events)

    def inspect(self, ref: str) -> Answer:
        return _inspected(self.engine.inspect(ref))

    def tag(self, source: str, target: str) -> Answer:
        return sorted(self.engine.tag(source, target)["tags"])

    def chat(self, model: str, prompt: str) -> Answer:
        with self.engine.chat_stream(model, [{"role": "user", "content": prompt}]) as stream:
            return stream.text()

    def unload(self, model: str) -> Answer:
        self.engine.unload([model])
        return self.ps()

    def rm(self, ref: str) -> Answer:
        return removal_lines(self.engine.rm([ref]))

    def configure(self, ref: str, context_size: int) -> Answer:
        return configured_text(self.engine.configure(ref, context_size=context_size))

    def load(self, ref: str) -> Answer:
        self.engine.load(ref)
        return self.ps()

    def ps(self) -> Answer:
        return _ps_names(self.engine.ps())

    def df(self) -> Answer:
        return df_record(self.engine.df()).text()

    def purge(self) -> Answer:
        return purged_text(self.engine.purge(force=True))


class HttpInterface(Interface):
    """Raw requests to the routes every client uses (Docker Model Runner's ``/models`` and ``/engines``)."""

    name = "http"

    def __init__(self, engine: LocalEngine) -> None:
        self.backing = engine
        self.http = httpx.Client(base_url=engine.serve(), timeout=60)

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.http.request(method, path, **kwargs)
        if response.status_code >= 400:
            error = response.json()["error"]
            # The status is the one the error class declares (a 4xx for the user's mistakes).
            assert response.status_code == error_for_code(error["code"], "").http_status, response.text
            return _error(MrNotebookError(error["message"]))
        return response.json()

    def list(self) -> Answer:
        return _names(self.call("GET", "models"))

    def pull(self, ref: str) -> Answer:
        with self.http.stream("POST", "models/create", json={"from": ref}) as response:
            lines = [json.loads(line) for line in response.iter_lines() if line.strip()]
        done = lines[-1]
        assert done["type"] == "success", lines
        summary = PullSummary(done["model"], done["already_present"], done["downloaded"])
        return summary.message, any(line.get("status") == "downloading" for line in lines)

    def inspect(self, ref: str) -> Answer:
        found = self.call("GET", f"models/{quote(ref, safe='/:')}")
        return found if isinstance(found, tuple) else _inspected(found)

    def tag(self, source: str, target: str) -> Answer:
        return sorted(self.call("POST", f"models/{source}/tag", json={"target": target})["model"]["tags"])

    def chat(self, model: str, prompt: str) -> Answer:
        body = {"model": model, "messages": [{"role": "user", "content": prompt}]}
        return self.call("POST", "v1/chat/completions", json=body)["choices"][0]["message"]["content"]

    def unload(self, model: str) -> Answer:
        self.call("POST", "engines/unload", json={"models": [model]})
        return self.ps()

    def rm(self, ref: str) -> Answer:
        removal = self.call("DELETE", f"models/{ref}")
        return removal if isinstance(removal, tuple) else removal_lines(removal)

    def configure(self, ref: str, context_size: int) -> Answer:
        return configured_text(
            self.call("POST", "engines/_configure", json={"model": ref, "context_size": context_size})
        )

    def load(self, ref: str) -> Answer:
        self.call("POST", "engines/load", json={"model": ref})
        return self.ps()

    def ps(self) -> Answer:
        return _ps_names(self.call("GET", "engines/ps"))

    def df(self) -> Answer:
        return df_record(self.call("GET", "engines/df")).text()

    def purge(self) -> Answer:
        return purged_text(self.call("DELETE", "models/purge", params={"force": "true"}))


class CliInterface(Interface):
    """``mr-notebook`` commands (their real ``main``) against a server, as `mr-notebook serve` users run them."""

    name = "cli"

    def __init__(self, engine: LocalEngine) -> None:
        self.backing = engine
        self.url = engine.serve()

    def mr(self, *argv: str) -> str:
        from mr_notebook.cli import main

        out, err = io.StringIO(), io.StringIO()
        self.stderr = err
        os.environ["MR_NOTEBOOK_URL"] = self.url  # undone after the test (conftest)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main(list(argv))
        if code != 0:
            message = err.getvalue().strip()
            assert message.startswith("Error: "), message
            raise MrNotebookError(message.removeprefix("Error: "))
        return out.getvalue()

    def list(self) -> Answer:
        return _names(json.loads(self.mr("list", "--json")))

    def pull(self, ref: str) -> Answer:
        message = self.mr("pull", ref).strip()
        return message, "B/s" in self.stderr.getvalue()  # tqdm's bar, in bytes

    def inspect(self, ref: str) -> Answer:
        return _inspected(json.loads(self.mr("inspect", ref)))

    def tag(self, source: str, target: str) -> Answer:
        self.mr("tag", source, target)
        return sorted(json.loads(self.mr("inspect", target))["tags"])

    def chat(self, model: str, prompt: str) -> Answer:
        answer = self.mr("run", model, prompt).strip()
        assert self.stderr.getvalue().startswith("The user says hi."), self.stderr.getvalue()  # reasoning apart
        return answer

    def unload(self, model: str) -> Answer:
        self.mr("unload", model)
        return self.ps()

    def rm(self, ref: str) -> Answer:
        return self.mr("rm", ref).splitlines()

    def configure(self, ref: str, context_size: int) -> Answer:
        return self.mr("configure", ref, "--context-size", str(context_size)).strip()

    def load(self, ref: str) -> Answer:
        self.mr("run", ref, "hi")  # `run` loads the model (and answers the prompt)
        return self.ps()

    def ps(self) -> Answer:
        rows = self.mr("ps").splitlines()[1:]
        return sorted(row.split()[0] for row in rows)

    def df(self) -> Answer:
        return self.mr("df").strip()

    def purge(self) -> Answer:
        return self.mr("purge", "-f").strip()


class MagicInterface(Interface):
    """``%model`` in a real IPython shell on its in-kernel engine."""

    name = "magics"

    def __init__(self, engine: LocalEngine, shell: Any) -> None:
        self.backing = engine
        self.ip = shell

    def model(self, line: str) -> tuple[Any, str]:
        from IPython.utils.capture import capture_output

        with capture_output() as captured:
            value = self.ip.run_line_magic("model", line)
        self.stderr = captured.stderr
        return value, captured.stdout

    def list(self) -> Answer:
        return _names(self.model("list")[0])

    def pull(self, ref: str) -> Answer:
        message = self.model(f"pull {ref}")[1].strip()
        return message, "B/s" in self.stderr  # tqdm.auto's text bar outside a kernel

    def inspect(self, ref: str) -> Answer:
        return _inspected(self.model(f"inspect '{ref}'")[0])

    def tag(self, source: str, target: str) -> Answer:
        self.model(f"tag {source} {target}")
        return sorted(self.model(f"inspect {target}")[0]["tags"])

    def chat(self, model: str, prompt: str) -> Answer:
        shown = self.model(f"run {model} '{prompt}'")[1]
        # A terminal shell writes the reasoning dimmed before the answer (a notebook collapses it above).
        assert shown.startswith("\x1b[2mThe user says hi."), shown
        return shown.split("\x1b[0m\n", 1)[1].strip()

    def unload(self, model: str) -> Answer:
        self.model(f"unload {model}")
        return self.ps()

    def rm(self, ref: str) -> Answer:
        return self.model(f"rm {ref}")[1].splitlines()

    def configure(self, ref: str, context_size: int) -> Answer:
        return self.model(f"configure {ref} --context-size {context_size}")[1].strip()

    def load(self, ref: str) -> Answer:
        self.model(f"run {ref}")
        return self.ps()

    def ps(self) -> Answer:
        return _ps_names(self.model("ps")[0])

    def df(self) -> Answer:
        return repr(self.model("df")[0])

    def purge(self) -> Answer:
        return self.model("purge -f")[1].strip()


class WidgetInterface(Interface):
    """The model manager widget's actions (its buttons call these) on the engine a Jupyter kernel has: HTTP."""

    name = "widgets"

    def __init__(self, engine: LocalEngine) -> None:
        self.backing = engine
        self.remote = RemoteEngine(engine.serve())
        self.widget = ModelManager(engine=self.remote, refresh_interval=0)

    def act(self, future: Future[Any]) -> Any:
        try:
            return future.result(timeout=60)
        except MrNotebookError:
            text = self.widget.notice["text"]  # what the widget shows: "ClassName: message"
            assert self.widget.notice["kind"] == "error", self.widget.notice
            raise MrNotebookError(text.split(": ", 1)[1]) from None

    def list(self) -> Answer:
        self.widget.refresh()
        return sorted(row["name"] for row in self.widget.rows)

    def pull(self, ref: str) -> Answer:
        seen: list[str] = []

        def watch(change: dict[str, Any]) -> None:
            seen.append(change["new"].get("status", ""))

        self.widget.observe(watch, "pull_state")
        try:
            self.act(self.widget.pull(ref))
        finally:
            self.widget.unobserve(watch, "pull_state")
        return self.widget.pull_state["message"], "downloading" in seen

    def rm(self, ref: str) -> Answer:
        return removal_lines(self.act(self.widget.remove(ref)))

    def chat(self, model: str, prompt: str) -> Answer:
        chat = ChatWidget(model, engine=self.remote)
        try:
            return chat.send(prompt, timeout=60)
        finally:
            chat.close()

    def unload(self, model: str) -> Answer:
        self.act(self.widget.unload(model))
        return self.ps()

    def load(self, ref: str) -> Answer:
        self.act(self.widget.load(ref))
        return self.ps()

    def ps(self) -> Answer:
        self.widget.refresh()
        return sorted(row["name"] for row in self.widget.rows if row["loaded"])

    def df(self) -> Answer:
        self.widget.refresh()
        return df_record(self.widget.disk).text()

    def close(self) -> None:
        self.widget.close()
        self.remote.close()


#: What the widget has no control for (it shows a model's details and settings elsewhere: inspect, tag, configure
#: and purge are magics/CLI/HTTP verbs).
WIDGET_LACKS = {"inspect", "tag", "configure", "purge"}


@pytest.fixture(scope="module")
def models(tiny_model_factory: TinyModelFactory) -> dict[str, Path]:
    return {
        TINY: tiny_model_factory(),
        LOOPER: tiny_model_factory(reply=LOOP, never_stop=True, context_length=8192),
        THINKER: tiny_model_factory(reply=THINK_REPLY, chat_template=THINK_TEMPLATE),
    }


@pytest.fixture(scope="module")
def hub(tiny_model_factory: TinyModelFactory) -> Iterator[LocalHub]:
    with LocalHub() as hub:
        hub.add_repo("test/pulled-GGUF", {"pulled-Q8_0.gguf": tiny_model_factory(reply="Pulled!", seed=3)})
        yield hub


def new_engine(tmp: Path, models: Mapping[str, Path], hub: LocalHub) -> LocalEngine:
    store = Store(tmp)
    for name, path in models.items():
        store.import_gguf(path, name)
    return LocalEngine(store, EngineSettings(keep_alive=300), env={"HF_ENDPOINT": hub.url})


def differences(got: dict[str, Answer], reference: dict[str, Answer]) -> dict[str, tuple[Answer, Answer]]:
    """Case → (this interface's answer, the in-process engine's) where they differ."""
    return {name: (answer, reference[name]) for name, answer in got.items() if answer != reference[name]}


def answers(interface: Interface) -> dict[str, Answer]:
    """Every case through ``interface``; what it has no control for is done through its engine, unrecorded, so the
    later cases start from the same state."""
    got = {}
    for case in CASES:
        if case.op in _lacks(interface):
            EngineInterface(interface.backing).run(case)
        else:
            got[case.name] = interface.run(case)
    return got


def _lacks(interface: Interface) -> set[str]:
    return WIDGET_LACKS if isinstance(interface, WidgetInterface) else set()


@pytest.fixture(scope="module")
def reference(
    tmp_path_factory: pytest.TempPathFactory, models: dict[str, Path], hub: LocalHub
) -> Iterator[dict[str, Answer]]:
    """The in-process engine's answers, checked against EXPECTED."""
    engine = new_engine(tmp_path_factory.mktemp("engine"), models, hub)
    try:
        yield answers(EngineInterface(engine))
    finally:
        engine.close()


def test_the_in_process_engine_follows_the_rules(reference: dict[str, Answer]) -> None:
    wrong = {name: answer for name, answer in reference.items() if name in EXPECTED and not EXPECTED[name](answer)}
    assert wrong == {}
    assert reference["inspect"][1] == [TINY] and reference["inspect"][0].startswith("sha256:")


@pytest.mark.parametrize("kind", ["http", "cli", "magics", "widgets"])
def test_every_interface_gives_the_same_answers(
    kind: str, reference: dict[str, Answer], tmp_path: Path, models: dict[str, Path], hub: LocalHub
) -> None:
    engine = new_engine(tmp_path / "home", models, hub)
    interface: Interface
    try:
        if kind == "http":
            interface = HttpInterface(engine)
        elif kind == "cli":
            interface = CliInterface(engine)
        elif kind == "widgets":
            interface = WidgetInterface(engine)
        else:
            with magic_shell(tmp_path / "home") as ip:
                current.use(engine)  # the shell's engine is this one (magic_shell made its own)
                got = answers(MagicInterface(engine, ip))
            assert differences(got, reference) == {}
            return
        got = answers(interface)
        if isinstance(interface, WidgetInterface):
            interface.close()
    finally:
        engine.close()
    assert set(got) == {c.name for c in CASES if c.op not in _lacks(interface)}
    assert differences(got, reference) == {}
