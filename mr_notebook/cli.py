"""The `mr-notebook` command line, modelled on `docker model`.

Each command parses its arguments, calls the core (store, pullers, engine client) and prints the result;
core errors become a message on stderr and exit code 1, usage errors exit code 2.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

from mr_notebook.errors import MrNotebookError
from mr_notebook.store import Store
from mr_notebook.tables import MODEL_COLUMNS, df_rows, model_rows, text_table

Handler = Callable[[argparse.Namespace], int]


def _store(args: argparse.Namespace) -> Store:
    return Store(args.home)


def cmd_package(args: argparse.Namespace) -> int:
    record = _store(args).import_gguf(args.gguf, args.name, link=not args.copy)
    config = record.config
    print(
        f"Model {_canonical(args.name)} packaged ({record.short_id}, {config.get('parameters')} "
        f"{config.get('quantization')}, {config.get('size')})"
    )
    return 0


def _canonical(name: str) -> str:
    from mr_notebook.store import normalize

    return normalize(name)


def cmd_list(args: argparse.Namespace) -> int:
    records = _store(args).list()
    if args.json:
        print(json.dumps([_docker_json(r.to_json()) for r in records], indent=2))
    elif args.quiet:
        for record in records:
            print(record.short_id)
    else:
        print(text_table(model_rows(r.to_json() for r in records), MODEL_COLUMNS))
    return 0


def _docker_json(data: dict[str, Any]) -> dict[str, Any]:
    """`list --json` prints exactly Docker Model Runner's fields."""
    return {k: data[k] for k in ("id", "tags", "created", "config")}


def cmd_inspect(args: argparse.Namespace) -> int:
    store = _store(args)
    found = [store.get(name).to_json() for name in args.names]
    print(json.dumps(found[0] if len(found) == 1 else found, indent=2))
    return 0


def cmd_tag(args: argparse.Namespace) -> int:
    _store(args).tag(args.source, args.target)
    print(f"Model {_canonical(args.source)} tagged as {_canonical(args.target)}")
    return 0


def cmd_rm(args: argparse.Namespace) -> int:
    for line in _store(args).remove(args.names, force=args.force):
        print(line)
    return 0


def cmd_prune(args: argparse.Namespace) -> int:
    report = _store(args).prune()
    from mr_notebook.store import format_bytes

    print(f"Removed {report['files']} unused file(s), reclaimed {format_bytes(report['bytes'])}")
    return 0


def cmd_purge(args: argparse.Namespace) -> int:
    store = _store(args)
    if not args.force:
        if not sys.stdin.isatty():
            print("purge deletes every stored model; confirm with -f/--force.", file=sys.stderr)
            return 1
        answer = input(f"Delete every model in {store.home}? [y/N] ")
        if answer.strip().lower() not in {"y", "yes"}:
            print("Nothing deleted.")
            return 1
    report = store.purge()
    from mr_notebook.store import format_bytes

    print(f"Deleted {report['models']} model(s), reclaimed {format_bytes(report['bytes'])}")
    return 0


def cmd_df(args: argparse.Namespace) -> int:
    print(text_table(df_rows(_store(args).df()), ("TYPE", "COUNT", "SIZE")))
    return 0


def cmd_pull(args: argparse.Namespace) -> int:
    from tqdm.auto import tqdm

    from mr_notebook.store.pull import pull

    result = pull(_store(args), args.model, tqdm_class=None if args.quiet else tqdm)
    name = _canonical(args.model)
    if result.already_present:
        print(f"Model {name} is up to date ({result.record.short_id})")
    else:
        print(f"Model {name} pulled ({result.record.short_id}, {result.record.config.get('size')})")
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

    p = add("list", cmd_list, "List stored models", aliases=("ls",))
    p.add_argument("--json", action="store_true", help="Docker Model Runner's JSON")
    p.add_argument("-q", "--quiet", action="store_true", help="only model IDs")

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
