"""The `mr-notebook` command line, modelled on `docker model`.

Each command parses its arguments, calls the core (store, pullers, engine client) and prints the result;
core errors become a message on stderr and exit code 1, usage errors exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mr_notebook.digests import short_id
from mr_notebook.errors import MrNotebookError
from mr_notebook.progress import ProgressBar
from mr_notebook.settings import DEFAULT_PORT
from mr_notebook.store import Store, normalize
from mr_notebook.tables import (
    added_text,
    configured_text,
    df_record,
    found_table,
    model_table,
    pruned_text,
    ps_table,
    purged_text,
    removal_lines,
)

if TYPE_CHECKING:
    from mr_notebook.client import Engine

Handler = Callable[[argparse.Namespace], int]


def _store(args: argparse.Namespace) -> Store:
    return Store(args.home)


@contextmanager
def _engine(args: argparse.Namespace) -> Iterator[Engine]:
    """The engine to ask: a running server when there is one (MR_NOTEBOOK_URL, `mr-notebook serve`), so a
    command never changes files under a server's loaded models behind its back; else one in this process."""
    from mr_notebook.client import connect

    engine = connect(args.home)
    try:
        yield engine
    finally:
        engine.close()


def cmd_package(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        print(added_text(engine.package(args.gguf, args.name, link=not args.copy)))
    return 0


def cmd_import(args: argparse.Namespace) -> int:
    from mr_notebook.store.imports import discover, find, import_models, locations

    if args.source is None or args.list:
        found = discover() if args.source is None else find(args.source)
        if not found:
            where = "; ".join(f"{k}: {', '.join(map(str, v))}" for k, v in locations().items())
            print(f"No models found ({where}).")
            return 0
        print(found_table([f.to_json() for f in found], "").text())
        print("Import them with `mr-notebook import --from SOURCE [MODEL ...]` (no download, no copy).")
        return 0
    done = import_models(_store(args), args.source, args.models, link=not args.reference, name=args.name)
    for item in done:
        print(f"Imported {item.record.name} from {item.found.source} ({item.how}, {item.record.config.get('size')})")
        for note in item.found.notes:
            print(f"  note: {note}")
    if not done:
        print(f"{args.source} holds no model to import.")
    return 0


def cmd_list(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        models = engine.list()  # stored models, then remote engines' NAME/<id>
    if args.json:
        print(json.dumps([{k: m.get(k) for k in ("id", "tags", "created", "config")} for m in models], indent=2))
    elif args.quiet:
        for model in models:
            print(short_id(str(model.get("id", ""))))
    else:
        print(model_table(models).text())
    return 0


def cmd_engine(args: argparse.Namespace) -> int:
    from mr_notebook.engine.remote.commands import engine_command

    home = _store(args).home
    limits = {"max_concurrency": args.max_concurrency, "timeout": args.timeout}
    print(engine_command(home, args.action, args.name, args.url, args.kind, args.api_key_env, **limits))
    return 0


def cmd_inspect(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        found = [engine.inspect(name) for name in args.names]
    print(json.dumps(found[0] if len(found) == 1 else found, indent=2))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        engine.tag(args.source, args.target)
    print(f"Model {args.source} tagged as {args.target}.")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        for line in removal_lines(engine.rm(args.names, force=args.force)):
            print(line)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        print(pruned_text(engine.prune()))
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    if not args.force:
        if not sys.stdin.isatty():
            print("purge deletes every stored model; confirm with -f/--force.", file=sys.stderr)
            return 1
        answer = input(f"Delete every model in {_store(args).home}? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("Nothing deleted.")
            return 1
    with _engine(args) as engine:
        print(purged_text(engine.purge(force=True)))  # confirmed: busy models' requests end too
    return 0


def cmd_df(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        print(df_record(engine.df()).text())
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    with _engine(args) as engine, ProgressBar(args.model, disable=args.quiet) as bar:
        summary = engine.pull(args.model, bar)
    print(summary.message)
    return 0


def _serve_api_key(args: argparse.Namespace) -> str | None:
    """--api-key-file, else --api-key (warned: other users see it in `ps`); None: serve reads the env."""
    from mr_notebook.settings import read_secret_file

    if args.api_key_file:
        return read_secret_file(args.api_key_file)
    if args.api_key:
        print(
            "Warning: --api-key is visible to every user of this machine (ps, /proc); "
            "use MR_NOTEBOOK_API_KEY or --api-key-file instead.",
            file=sys.stderr,
        )
        return str(args.api_key)
    return None


def cmd_serve(args: argparse.Namespace) -> int:
    from mr_notebook.api.standalone import serve
    from mr_notebook.settings import EngineSettings

    def ready(url: str) -> None:
        print(f"Serving on {url} (OpenAI API: {url}v1, {url}engines/v1). Ctrl-C stops.", flush=True)

    api_key = _serve_api_key(args)
    settings = EngineSettings.from_env()
    serve(args.host, args.port, api_key, _store(args), settings, ready=ready, origins=args.allowed_origins)
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    from mr_notebook.terminal_chat import answer, interactive

    with _engine(args) as engine:
        model = normalize(args.model)
        engine.load(model)
        if args.prompt:
            answer(engine, model, [{"role": "user", "content": " ".join(args.prompt)}])
            return 0
        if not sys.stdin.isatty():  # piped input: one prompt, one answer
            answer(engine, model, [{"role": "user", "content": sys.stdin.read()}])
            return 0
        return interactive(engine, model)


def cmd_ps(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        print(ps_table(engine.ps()).text())
    return 0


def cmd_unload(args: argparse.Namespace) -> int:
    if not args.all and not args.models:
        print("Name the models to unload, or use --all.", file=sys.stderr)
        return 2
    with _engine(args) as engine:
        count = engine.unload(None if args.all else [normalize(m) for m in args.models])
    print(f"Unloaded {count} model(s)")
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        status = engine.status()
    if args.json:
        print(json.dumps(status, indent=2))
        return 0
    where = status.get("url") or "not served over HTTP"
    print(f"Engine: {status.get('mode')} ({status.get('source')}), {where}")
    print(f"Store: {status.get('store', '')}")
    for engine in status.get("engines") or []:  # remote engines (issue 15): health and latency of the last answer
        health = "up" if engine.get("healthy") else "down" if engine.get("healthy") is False else "not asked yet"
        latency = f", {engine['latency'] * 1000:.0f} ms" if engine.get("latency") is not None else ""
        print(f"Remote engine {engine.get('name')}: {engine.get('url')} ({health}{latency})")
    return 0


def cmd_configure(args: argparse.Namespace) -> int:
    with _engine(args) as engine:
        done = engine.configure(
            args.model,
            context_size=args.context_size,
            keep_alive=args.keep_alive,  # "5m" as typed: the service parses every duration
            threads=args.threads,
            parallel=args.parallel,
        )
    print(configured_text(done))
    return 0


def cmd_sync(args: argparse.Namespace) -> int:
    from mr_notebook.workflows.lock import sync

    with _engine(args) as engine:
        models = sync(args.path, engine, print)
    print(f"{len(models)} model(s) match {args.path}.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mr-notebook",
        description="Docker Model Runner for notebooks: pull, run and serve local GGUF models.",
    )
    parser.add_argument("--home", help="model store folder (default: $MR_NOTEBOOK_HOME or the user data folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="log what happens")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def add(name: str, handler: Handler, help_text: str, aliases: Sequence[str] = ()) -> argparse.ArgumentParser:
        command = sub.add_parser(name, help=help_text, description=help_text, aliases=list(aliases))
        command.set_defaults(handler=handler)
        return command

    p = add("pull", cmd_pull, "Pull a model from Docker Hub, an OCI registry or Hugging Face")
    p.add_argument("model", help="e.g. ai/llama3.2:1B-Q8_0, hf.co/ORG/REPO:Q4_K_M, HOST:PORT/ns/name:tag")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")

    p = add("package", cmd_package, "Add a local GGUF file to the store as model NAME")
    p.add_argument("--gguf", required=True, metavar="PATH", help="the .gguf file")
    p.add_argument("--copy", action="store_true", help="always copy (default: hard link when possible)")
    p.add_argument("name", help="the model name, e.g. ai/tiny:v1")

    p = add("import", cmd_import, "Add models Ollama, Hugging Face, Model Runner or LM Studio already have (no copy)")
    p.add_argument(
        "--from",
        dest="source",
        metavar="SOURCE",
        help="ollama, huggingface, model-runner, lmstudio, or a PATH (GGUF file or folder); without: list all found",
    )
    p.add_argument("models", nargs="*", metavar="MODEL", help="only these (default: every model of SOURCE)")
    p.add_argument("--name", help="the name to give a single imported model")
    p.add_argument("--reference", action="store_true", help="reference the files even where a hard link works")
    p.add_argument("--list", action="store_true", help="only list what SOURCE holds")

    p = add("list", cmd_list, "List stored models", aliases=("ls",))
    p.add_argument("--json", action="store_true", help="Docker Model Runner's JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="only model IDs")

    p = add("engine", cmd_engine, "Remote engines (vLLM, llama-server, Ollama, …): add NAME URL, ls, rm NAME")
    p.add_argument("action", choices=("add", "ls", "rm"))
    p.add_argument("name", nargs="?", metavar="NAME", help="the engine's name; its models are NAME/<model id>")
    p.add_argument("url", nargs="?", metavar="URL", help="its OpenAI base URL, e.g. http://gpu-box:8000/v1")
    p.add_argument("--kind", default="openai", choices=("openai", "ollama", "model-runner"))
    p.add_argument("--api-key-env", metavar="VAR", help="the NAME of the environment variable holding its key")
    p.add_argument("--max-concurrency", type=int, metavar="N", help="requests sent to it at once (default 8)")
    p.add_argument("--timeout", type=float, metavar="S", help="seconds without a byte before failing (default 300)")

    p = add("inspect", cmd_inspect, "Show a model's details as JSON")
    p.add_argument("names", nargs="+", metavar="MODEL")

    p = add("tag", cmd_tag, "Give a model another name")
    p.add_argument("source", metavar="SOURCE")
    p.add_argument("target", metavar="TARGET")

    p = add("rm", cmd_rm, "Remove models (a file goes when no name uses it)", aliases=("remove",))
    p.add_argument("names", nargs="+", metavar="MODEL")
    p.add_argument("-f", "--force", action="store_true", help="remove every name of a model given by ID")

    add("prune", cmd_prune, "Delete partial downloads and files no model uses")
    p = add("purge", cmd_purge, "Delete every stored model")
    p.add_argument("-f", "--force", action="store_true", help="do not ask")
    add("df", cmd_df, "Show disk usage of the store")

    p = add("serve", cmd_serve, "Serve the OpenAI-compatible and model-runner API (Docker Model Runner's port)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    keys = p.add_mutually_exclusive_group()
    keys.add_argument(
        "--api-key-file",
        metavar="PATH",
        help="require 'Authorization: Bearer KEY' with the key in this file (or set $MR_NOTEBOOK_API_KEY)",
    )
    keys.add_argument("--api-key", help=argparse.SUPPRESS)  # visible in ps: kept for old scripts, with a warning
    p.add_argument(
        "--allowed-origins",
        metavar="ORIGINS",
        help="web page origins allowed to call the API besides the server's own, comma-separated, '*' as a "
        "wildcard (default: $MR_NOTEBOOK_ORIGINS)",
    )

    p = add("run", cmd_run, "Load a model; answer PROMPT, or chat interactively")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("prompt", nargs="*", metavar="PROMPT")

    add("ps", cmd_ps, "List loaded models")
    p = add("unload", cmd_unload, "Unload models (their worker processes end)", aliases=("stop",))
    p.add_argument("models", nargs="*", metavar="MODEL")
    p.add_argument("--all", action="store_true", help="unload every model")
    p = add("status", cmd_status, "Say which engine is in use and where")
    p.add_argument("--json", action="store_true")
    p = add("configure", cmd_configure, "Set a model's context size, keep-alive, threads or parallel requests")
    p.add_argument("model", metavar="MODEL")
    p.add_argument("--context-size", type=int, metavar="N")
    p.add_argument("--keep-alive", metavar="DURATION", help="e.g. 30s, 5m, 1h, 0 (unload when idle), -1 (never)")
    p.add_argument("--threads", type=int, metavar="N", help="CPU threads of its worker (default: physical cores)")
    p.add_argument("--parallel", type=int, metavar="N", help="requests it decodes at once (default 4)")
    p = add("sync", cmd_sync, "Pull exactly the models (name and digest) of a notebook's lock file")
    p.add_argument("path", nargs="?", default="mr-notebook.lock", metavar="PATH", help="default mr-notebook.lock")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING, format="%(message)s")
    handler: Handler = args.handler
    try:
        return handler(args)
    except MrNotebookError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("Interrupted.", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
