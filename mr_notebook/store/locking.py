"""The store's index lock, with a timeout and a note saying who holds it.

Every process sharing a store takes this lock to change the index (tag, rm, pull's publish, prune). A
holder that never lets go (a stuck ``mr-notebook rm`` on a network disk, a debugger paused inside a pull)
must not hang everyone else forever: waiting ends after ``timeout`` seconds with
:class:`~mr_notebook.errors.StoreLocked`, whose message names the holder (pid, command, for how long) so the
user knows what to wait for or end. filelock has no notion of a holder, hence the small note file beside
the lock, written once the lock is ours and removed before it is released.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType

from filelock import FileLock, Timeout

from mr_notebook.errors import StoreLocked

#: Seconds to wait for the index lock (``MR_NOTEBOOK_LOCK_TIMEOUT`` overrides it).
DEFAULT_LOCK_TIMEOUT = 30.0


def lock_timeout(env: Mapping[str, str] | None = None) -> float:
    """``MR_NOTEBOOK_LOCK_TIMEOUT`` in seconds (default 30; -1 waits forever)."""
    raw = (os.environ if env is None else env).get("MR_NOTEBOOK_LOCK_TIMEOUT", "")
    try:
        value = float(raw) if raw.strip() else DEFAULT_LOCK_TIMEOUT
    except ValueError:
        return DEFAULT_LOCK_TIMEOUT
    return value if value >= 0 or value == -1 else DEFAULT_LOCK_TIMEOUT


def _command() -> str:
    if not sys.argv or not sys.argv[0]:
        return "python"
    return " ".join([Path(sys.argv[0]).name, *sys.argv[1:3]])[:120]


class StoreLock:
    """A reusable context manager over one lock file (``with lock: …``, again and again)."""

    def __init__(self, path: Path, what: str, timeout: float) -> None:
        self.path = path
        self.what = what
        self.timeout = timeout
        self.owner_path = path.with_name(path.name + ".owner")
        self._lock = FileLock(str(path))
        self._depth = 0

    def __enter__(self) -> StoreLock:
        try:
            self._lock.acquire(timeout=self.timeout)
        except Timeout:
            raise StoreLocked(
                f"The model store's {self.what} ({self.path}) is held by {self.holder()}; gave up after "
                f"{self.timeout:g} s. Wait for that to finish and try again, or end that process if it is stuck "
                "(MR_NOTEBOOK_LOCK_TIMEOUT sets how long to wait)."
            ) from None
        self._depth += 1
        if self._depth == 1:
            note = {"pid": os.getpid(), "command": _command(), "since": time.time()}
            try:
                self.owner_path.write_text(json.dumps(note), encoding="utf-8")
            except OSError:
                pass  # the note only improves an error message
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self._depth -= 1
        if self._depth == 0:
            self.owner_path.unlink(missing_ok=True)
        self._lock.release()

    def holder(self) -> str:
        """Who holds the lock, as well as the note says ("another process" when it says nothing)."""
        try:
            note = json.loads(self.owner_path.read_text(encoding="utf-8"))
            pid, command, since = int(note["pid"]), str(note["command"]), float(note["since"])
        except (OSError, ValueError, KeyError, TypeError):
            return "another process"
        return f"process {pid} ({command!r}) for {max(time.time() - since, 0):.0f} s"
