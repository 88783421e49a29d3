"""``%model`` (the ``docker model`` verbs) and ``%%chat``; each verb parses, calls the engine, shows."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from IPython.core.magic import Magics, cell_magic, line_magic, magics_class, no_var_expand

from mr_notebook.digests import short_id
from mr_notebook.errors import EngineUnavailable, MrNotebookError
from mr_notebook.kernel.display import MarkdownText, short_error, show
from mr_notebook.kernel.parsing import HelpShown, model_parser, split
from mr_notebook.kernel.state import KernelState
from mr_notebook.progress import ProgressBar
from mr_notebook.tables import (
    Record,
    Table,
    added_text,
    configured_text,
    df_record,
    found_table,
    inspect_record,
    model_table,
    pruned_text,
    ps_table,
    purged_text,
    removal_lines,
    size_text,
)


def _say(text: str) -> None:
    """A line of cell output (the magic's answer to the user, not a log record)."""
    sys.stdout.write(text + "\n")


@magics_class
class ModelMagics(Magics):
    """Registered by ``%load_ext mr_notebook``; holds this shell's :class:`KernelState`."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.state = KernelState()

    @property
    def _user_ns(self) -> dict[str, Any]:
        namespace: dict[str, Any] = getattr(self.shell, "user_ns", {})
        return namespace

    # IPython would expand {…} and $… in the line itself; prompts need braces kept, so we substitute.
    @no_var_expand
    @line_magic
    def model(self, line: str) -> Any:
        """Manage and run local models: %model VERB ... (%model --help lists the verbs)."""
        try:
            args = model_parser().parse_magic(split(line, self._user_ns))
        except HelpShown:
            return None
        if args.verb is None:
            model_parser().print_help()
            return None
        handler: Callable[[Any], Any] = getattr(self, f"_verb_{args.command}")
        try:
            return handler(args)
        except MrNotebookError as error:
            if error.user_error:
                raise short_error(error) from None
            raise

    @no_var_expand
    @cell_magic
    def chat(self, line: str, cell: str) -> None:
        """Chat with a model: the cell is the message (%%chat --help lists the options)."""
        from mr_notebook.kernel.chat import chat_cell

        chat_cell(self.shell, self.state, line, cell)

    # ------------------------------------------------------------------ store verbs
    def _verb_pull(self, args: Any) -> None:
        bar = ProgressBar(args.ref)
        try:
            summary = self.state.engine.pull(args.ref, bar)
        finally:
            bar.close()
        _say(summary.message)

    def _verb_package(self, args: Any) -> None:
        _say(added_text(self.state.engine.package(args.gguf, args.name)))

    def _verb_import(self, args: Any) -> Any:
        from mr_notebook.store import Store
        from mr_notebook.store.imports import discover, find, import_models

        if args.source is None or args.list:
            found = [f.to_json() for f in (discover() if args.source is None else find(args.source))]
            return found_table(found, "No models of Ollama, Hugging Face, Model Runner or LM Studio.")
        # Adopting files (hard link or reference) happens in the store itself: the engine's, on this machine.
        store = Store(self._shared_store_home("import"))
        for item in import_models(store, args.source, args.models, link=not args.reference, name=args.name):
            _say(f"Imported {item.record.name} from {item.found.source} ({item.how}, nothing downloaded or copied).")
            for note in item.found.notes:
                _say(f"  note: {note}")

    def _verb_engine(self, args: Any) -> None:
        from mr_notebook.engine.remote.commands import engine_command, engine_table
        from mr_notebook.store import Store

        status = self.state.engine.status()
        if args.action == "ls" and "engines" in status:
            # Asked of the server, which holds the keys: the kernel never talks to the engines itself.
            names = [tag for m in self.state.engine.list() if m.get("config", {}).get("engine") for tag in m["tags"]]
            _say(engine_table(status["engines"], names))
            return
        # Engines live in the serving store's engines.json (the server re-reads it; keys stay there by name).
        home = Store(self._shared_store_home("engine " + args.action)).home
        _say(engine_command(home, args.action, args.name, args.url, args.kind, args.api_key_env))

    def _shared_store_home(self, verb: str) -> str | None:
        """The engine's store folder when this machine holds it (in-kernel, or a server beside the kernel)."""
        engine = self.state.engine
        home = engine.status().get("store")
        if engine.mode == "remote" and (not isinstance(home, str) or not Path(home).is_dir()):
            raise EngineUnavailable(
                f"`%model {verb}` changes the engine's store, and the engine at {engine.url} keeps it on another "
                f"machine ({home}). Run `mr-notebook {verb}` there, or `%model package --gguf PATH NAME` to send "
                "a file from here."
            )
        return home if isinstance(home, str) else None

    def _verb_list(self, args: Any) -> Any:
        models = self.state.engine.list()
        if args.quiet:
            return Table(models, ["MODEL ID"], [{"MODEL ID": short_id(str(m.get("id", "")))} for m in models])
        return models if args.json else model_table(models)

    def _verb_inspect(self, args: Any) -> Any:
        return inspect_record(self.state.engine.inspect(args.ref))

    def _verb_tag(self, args: Any) -> None:
        self.state.engine.tag(args.source, args.target)
        _say(f"Model {args.source} tagged as {args.target}.")

    def _verb_rm(self, args: Any) -> None:
        for line in removal_lines(self.state.engine.rm(args.refs, force=args.force)):
            _say(line)

    def _verb_prune(self, args: Any) -> None:
        _say(pruned_text(self.state.engine.prune()))

    def _verb_purge(self, args: Any) -> None:
        engine = self.state.engine
        if not args.force:
            usage = engine.df()
            _say(
                f"This would delete all {usage.get('models', 0)} stored model(s) "
                f"({size_text(usage.get('total', 0))}). Run `%model purge -f` to do it."
            )
            return
        _say(purged_text(engine.purge(force=True)))  # -f is the confirmation; it also ends busy models' requests

    def _verb_df(self, args: Any) -> Any:
        return df_record(self.state.engine.df())

    def _verb_configure(self, args: Any) -> None:
        if all(getattr(args, k) is None for k in ("context_size", "keep_alive", "threads", "parallel")):
            from IPython.core.error import UsageError

            raise UsageError("%model configure: give --context-size N, --keep-alive D, --threads N or --parallel N.")
        done = self.state.engine.configure(
            args.ref,
            context_size=args.context_size,
            keep_alive=args.keep_alive,
            threads=args.threads,
            parallel=args.parallel,
        )
        _say(configured_text(done))

    # ------------------------------------------------------------------ engine verbs
    def _verb_run(self, args: Any) -> None:
        from mr_notebook.kernel.chat import stream_reply
        from mr_notebook.store import normalize

        engine = self.state.engine
        name = normalize(args.ref)
        entry = engine.load(name, keep_alive=args.keep_alive)
        self.state.default_model = name
        if args.prompt:
            messages = [{"role": "user", "content": " ".join(args.prompt)}]
            stream_reply(self.shell, self.state, name, messages, {})
            return
        show(MarkdownText(_run_text(name, entry, engine.url)))

    def _verb_ps(self, args: Any) -> Any:
        return ps_table(self.state.engine.ps())

    def _verb_unload(self, args: Any) -> None:
        if not args.refs and not args.all:
            from IPython.core.error import UsageError

            raise UsageError("%model unload: name the models to unload, or --all.")
        count = self.state.engine.unload(None if args.all else args.refs)
        _say(f"Unloaded {count} model(s).")

    def _verb_status(self, args: Any) -> Any:
        status = self.state.engine.status()
        where = {
            "remote": "remote engine (this kernel loads no model itself)",
            "local": "in-kernel engine (models run in worker processes of this kernel)",
        }
        fields = [
            ("Engine", where.get(str(status.get("mode")), str(status.get("mode")))),
            ("Found through", str(status.get("source", ""))),
            (
                "Endpoint",
                (str(status["url"]) + "v1")
                if status.get("url")
                else "not served (`%model serve` or mr_notebook.openai_client() starts it)",
            ),
            ("Running", "yes" if status.get("running", True) else "no"),
        ]
        if status.get("store"):
            fields.append(("Store", str(status["store"])))
        if "loaded" in status:
            fields.append(("Loaded models", str(status["loaded"])))
        return Record(status, fields)

    def _verb_serve(self, args: Any) -> None:
        engine = self.state.engine
        serve = getattr(engine, "serve", None)
        if serve is None:
            _say(f"This kernel already uses a shared engine at {engine.url}v1 ({engine.source}).")
            return
        url = serve(host=args.host, port=args.port)
        _say(f"Serving the in-kernel engine at {url}v1 (OpenAI routes; api_key is not needed).")

    def _verb_lock(self, args: Any) -> None:
        from mr_notebook.workflows.lock import write_lock

        models = write_lock(args.path, self.state.engine, self.state.used_models)
        _say(
            f"Locked {len(models)} model(s) in {args.path}: "
            + ", ".join(f"{m.name} ({short_id(m.digest)})" for m in models)
        )

    def _verb_sync(self, args: Any) -> None:
        from mr_notebook.workflows.lock import sync

        bar = ProgressBar(args.path)
        try:
            models = sync(args.path, self.state.engine, _say, bar)
        finally:
            bar.close()
        for model in models:
            self.state.used_models[model.name] = model.digest
        _say(f"{len(models)} model(s) match {args.path}.")

    def _verb_chat(self, args: Any) -> Any:
        from mr_notebook import widgets

        return widgets.chat(args.ref or self.state.default_model)  # type: ignore[attr-defined]

    def _verb_ui(self, args: Any) -> Any:
        from mr_notebook import widgets

        return widgets.manager()  # type: ignore[attr-defined]


def _run_text(name: str, entry: dict[str, Any], url: str | None) -> str:
    """What `%model run REF` shows: where the model answers and code that calls it."""
    memory = size_text(entry["memory"]) if entry.get("memory") else "?"
    if url:
        where = f"Base URL: `{url}v1` · model: `{name}`"
    else:
        where = (
            f"Model: `{name}` · in-kernel engine (`%model serve` exposes it over HTTP; "
            "`mr_notebook.openai_client()` does so on demand)"
        )
    return f"""**{name}** is loaded (pid {entry.get("pid", "?")}, {memory}). Chat with `%%chat`, or from Python:

{where}

```python
import mr_notebook

client = mr_notebook.openai_client()  # base URL and key of this kernel's engine
response = client.chat.completions.create(
    model="{name}",
    messages=[{{"role": "user", "content": "Hello!"}}],
)
print(response.choices[0].message.content)
```
Other SDKs: `base_url, api_key = mr_notebook.endpoint()`."""
