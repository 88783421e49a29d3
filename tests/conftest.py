"""Shared fixtures: a private store per test, so tests never touch the user's models."""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from mr_notebook.engine import Runner
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store

#: Variables that would point a test at the developer's own server, store, tokens or Hub mirror.
ISOLATED_PREFIXES = ("MR_NOTEBOOK_", "HF_")


@pytest.fixture(scope="session", autouse=True)
def isolated_session_env() -> Iterator[None]:
    """No MR_NOTEBOOK_* or HF_* variable of the shell running pytest reaches a test (nor a server it starts)."""
    saved = dict(os.environ)
    for name in [n for n in os.environ if n.startswith(ISOLATED_PREFIXES)]:
        del os.environ[name]
    yield
    os.environ.clear()
    os.environ.update(saved)


@pytest.fixture(autouse=True)
def isolated_env() -> Iterator[None]:
    """What a test sets in MR_NOTEBOOK_* / HF_* is undone after it (fixtures of wider scope keep theirs)."""
    saved = {n: v for n, v in os.environ.items() if n.startswith(ISOLATED_PREFIXES)}
    yield
    for name in [n for n in os.environ if n.startswith(ISOLATED_PREFIXES)]:
        if name not in saved:
            del os.environ[name]
    os.environ.update(saved)


@pytest.fixture
def store_home(tmp_path: Path) -> Path:
    """An empty MR_NOTEBOOK_HOME for this test (also seen by subprocesses it starts)."""
    home = tmp_path / "home"
    os.environ["MR_NOTEBOOK_HOME"] = str(home)  # undone after the test by isolated_env
    return home


@pytest.fixture
def store(store_home: Path) -> Store:
    return Store(store_home)


@pytest.fixture
async def runner(store: Store) -> AsyncIterator[Runner]:
    """A Runner over this test's ``store`` (modules override that fixture with their models), closed after."""
    runner = Runner(store, EngineSettings(keep_alive=30))
    await runner.start()
    yield runner
    await runner.close()
