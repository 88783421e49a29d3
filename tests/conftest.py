"""Shared fixtures: a private store per test, so tests never touch the user's models."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from mr_notebook.engine import Runner
from mr_notebook.settings import EngineSettings
from mr_notebook.store import Store


@pytest.fixture
def store_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty MR_NOTEBOOK_HOME for this test (also seen by subprocesses it starts)."""
    home = tmp_path / "home"
    monkeypatch.setenv("MR_NOTEBOOK_HOME", str(home))
    for name in ("MR_NOTEBOOK_URL", "MR_NOTEBOOK_TOKEN", "MR_NOTEBOOK_API_KEY"):
        monkeypatch.delenv(name, raising=False)
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
