"""Argument parsers of ``%model`` and ``%%chat``: argparse that never exits the kernel.

``--help`` prints the help and the magic returns; a bad flag raises IPython's ``UsageError``, which
IPython shows as one red line (no traceback, no ``SystemExit``).
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Mapping
from typing import Any, NoReturn

from IPython.core.error import UsageError

from mr_notebook.braces import substitute


class HelpShown(Exception):
    """``--help`` was printed; nothing else to do."""


class MagicParser(argparse.ArgumentParser):
    #: The verb parsers of ``%model`` by name, so an unknown flag is reported with its verb's usage.
    verbs: dict[str, MagicParser]

    def parse_magic(self, words: list[str]) -> argparse.Namespace:
        """parse_args, but a verb's unknown flags are reported with that verb's usage."""
        args, extra = self.parse_known_args(words)
        if extra:
            owner = getattr(self, "verbs", {}).get(getattr(args, "command", ""), self)
            owner.error(f"unrecognized arguments: {' '.join(extra)}")
        return args

    def error(self, message: str) -> NoReturn:
        raise UsageError(
            f"{self.prog}: {message}\n{self.format_usage().strip()}\n(`{self.prog} --help` lists the options)"
        )

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        if status:
            raise UsageError(message or f"{self.prog}: invalid arguments")
        raise HelpShown


def split(line: str, namespace: Mapping[str, Any]) -> list[str]:
    """shlex-split a magic line, then substitute ``{reference}`` placeholders in each word."""
    try:
        words = shlex.split(line, posix=True)
    except ValueError as exc:
        raise UsageError(f"Could not split the arguments ({exc}); check the quotes.") from None
    return [substitute(word, namespace) for word in words]


def _duration(text: str) -> float:
    from mr_notebook.errors import InvalidRequest
    from mr_notebook.settings import parse_duration

    try:
        return parse_duration(text)
    except InvalidRequest as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


VERBS_HELP = """\
Manage and run local models, like `docker model`. Verbs:
  pull REF                     pull from Docker Hub / an OCI registry / hf.co/ORG/REPO[:QUANT]
  package --gguf PATH NAME     add a local GGUF file as NAME
  import [--from SRC] [MODEL]  models Ollama/Hugging Face/Model Runner/LM Studio have (no copy); alone: list
  engine add|ls|rm [NAME URL]  remote engines (vLLM, llama-server, Ollama…): their models are NAME/<id>
  list | ls                    stored models (models = %model list keeps the data)
  inspect REF                  one model's details
  tag SRC DST                  another name for a model
  rm REF... [-f]               remove names (and the files no name uses)
  prune                        delete partial downloads and unused files
  purge [-f]                   delete every stored model
  df                           disk use
  run REF [PROMPT]             load; with a prompt, stream the answer
  ps                           loaded models
  unload REF... | --all        unload (alias: stop)
  status                       which engine this kernel uses, and where
  configure REF [--context-size N] [--keep-alive D] [--threads N] [--parallel N]
  serve [--port N]             expose the in-kernel engine over HTTP
  lock [PATH] / sync [PATH]    pin the models this kernel used / pull exactly those (mr-notebook.lock)
  chat [REF] / ui              chat and model-manager widgets
`%model VERB --help` shows a verb's options."""


def model_parser() -> MagicParser:
    parser = MagicParser(
        prog="%model", description=VERBS_HELP, formatter_class=argparse.RawDescriptionHelpFormatter, add_help=True
    )
    parser.verbs = {}
    verbs = parser.add_subparsers(dest="verb", metavar="VERB", parser_class=MagicParser)

    def verb(name: str, help_text: str, aliases: tuple[str, ...] = ()) -> MagicParser:
        sub: MagicParser = verbs.add_parser(
            name, help=help_text, description=help_text, aliases=list(aliases), prog=f"%model {name}"
        )
        sub.set_defaults(command=name)
        parser.verbs[name] = sub
        return sub

    verb(
        "pull", "Pull a model from Docker Hub, another OCI registry, or Hugging Face (hf.co/ORG/REPO[:QUANT])."
    ).add_argument("ref", metavar="REF")
    package = verb("package", "Add a local GGUF file to the store under NAME.")
    package.add_argument("--gguf", required=True, metavar="PATH", help="the .gguf file")
    package.add_argument("name", metavar="NAME")
    imports = verb("import", "Add models other tools downloaded (no copy); without --from, list them.")
    imports.add_argument(
        "--from", dest="source", metavar="SRC", help="ollama, huggingface, model-runner, lmstudio, PATH"
    )
    imports.add_argument("models", nargs="*", metavar="MODEL", help="only these (default: all of SRC)")
    imports.add_argument("--name", help="the name for a single model")
    imports.add_argument("--reference", action="store_true", help="reference files even where a hard link works")
    imports.add_argument("--list", action="store_true", help="only list what SRC holds")
    engine = verb("engine", "Remote engines (vLLM, llama-server, Ollama …): add NAME URL, ls, rm NAME.")
    engine.add_argument("action", choices=("add", "ls", "rm"))
    engine.add_argument("name", nargs="?", metavar="NAME", help="its models are NAME/<model id>")
    engine.add_argument("url", nargs="?", metavar="URL", help="its OpenAI base URL, e.g. http://gpu-box:8000/v1")
    engine.add_argument("--kind", default="openai", choices=("openai", "ollama", "model-runner"))
    engine.add_argument("--api-key-env", metavar="VAR", help="NAME of the environment variable holding its key")
    listing = verb("list", "List stored models.", ("ls",))
    listing.add_argument("-q", "--quiet", action="store_true", help="only model IDs")
    listing.add_argument("--json", action="store_true", help="plain JSON data (no table)")
    verb("inspect", "Show a stored model's details.").add_argument("ref", metavar="REF")
    tag = verb("tag", "Give model SRC the extra name DST.")
    tag.add_argument("source", metavar="SRC")
    tag.add_argument("target", metavar="DST")
    rm = verb("rm", "Remove model names; files no name uses are deleted.")
    rm.add_argument("refs", nargs="+", metavar="REF")
    rm.add_argument("-f", "--force", action="store_true", help="also when loaded or known by several names")
    verb("prune", "Delete partial downloads and files no model uses.")
    verb("purge", "Delete every stored model.").add_argument(
        "-f", "--force", action="store_true", help="do it (without -f it only says what it would do)"
    )
    verb("df", "Show disk use of the store.")
    run = verb("run", "Load a model; with a prompt, stream its answer.")
    run.add_argument("ref", metavar="REF")
    run.add_argument("prompt", nargs="*", metavar="PROMPT")
    run.add_argument("--keep-alive", type=_duration, metavar="D", help="unload after D idle ('5m', '-1')")
    verb("ps", "List loaded models.")
    unload = verb("unload", "Unload models (their memory returns to the system).", ("stop",))
    unload.add_argument("refs", nargs="*", metavar="REF")
    unload.add_argument("--all", action="store_true", help="every loaded model")
    verb("status", "Which engine this kernel uses, and where.")
    configure = verb("configure", "Set per-model options (used at the next load).")
    configure.add_argument("ref", metavar="REF")
    configure.add_argument("--context-size", type=int, metavar="N")
    configure.add_argument("--keep-alive", type=_duration, metavar="D")
    configure.add_argument("--threads", type=int, metavar="N", help="CPU threads (default: physical cores)")
    configure.add_argument("--parallel", type=int, metavar="N", help="requests decoded at once (default 4)")
    serve = verb("serve", "Expose the in-kernel engine over HTTP (OpenAI routes under /v1).")
    serve.add_argument("--port", type=int, default=0, help="0 picks a free port")
    serve.add_argument("--host", default="127.0.0.1")
    lock = verb("lock", "Write the models this kernel used (name, digest, source) to a lock file.")
    lock.add_argument("path", nargs="?", default="mr-notebook.lock", metavar="PATH")
    sync = verb("sync", "Pull exactly the models of a lock file (refuses other models under their names).")
    sync.add_argument("path", nargs="?", default="mr-notebook.lock", metavar="PATH")
    verb("chat", "Open the chat widget.").add_argument("ref", nargs="?", metavar="REF")
    verb("ui", "Open the model manager widget.")
    return parser


def chat_parser() -> MagicParser:
    parser = MagicParser(
        prog="%%chat",
        description="Send the cell to a model as a user message; the reply streams into the output and "
        "lands in _chat. {name}, {obj.attr}, {rows[0]} are replaced by values from the "
        "notebook; other braces stay as written; {{name}} gives {name} literally.",
    )
    parser.add_argument("-m", "--model", metavar="REF", help="model (default: the last one %%model run loaded)")
    parser.add_argument("--system", metavar="TEXT", help="system prompt (kept for the conversation)")
    parser.add_argument("--temperature", type=float, metavar="T")
    parser.add_argument("--max-tokens", type=int, metavar="N")
    parser.add_argument("--seed", type=int, metavar="S")
    parser.add_argument("--new", action="store_true", help="start a new conversation")
    parser.add_argument("--no-history", action="store_true", help="send this turn alone, and don't record it")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="ask for JSON and parse the reply")
    fmt.add_argument(
        "--schema",
        metavar="VAR_OR_JSON",
        help="JSON schema (a variable: dict or pydantic model; or JSON text) the reply must follow",
    )
    parser.add_argument("-o", "--output", metavar="VAR", help="also store the result in VAR")
    parser.add_argument(
        "--error", action="store_true", help="send the last exception (traceback, failing cell) and ask for a fix"
    )
    parser.add_argument("--insert", action="store_true", help="put the reply's first code block into a new cell")
    parser.add_argument("--models", metavar="A,B", help="send to several models; replies side by side")
    parser.add_argument("-n", type=int, default=1, metavar="N", help="N samples side by side (different seeds)")
    parser.add_argument("--logprobs", action="store_true", help="show each token shaded by its probability")
    return parser
