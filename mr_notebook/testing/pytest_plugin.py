"""Pytest plugin providing tiny GGUF model fixtures.

Register it from the root ``conftest.py``::

    pytest_plugins = ["mr_notebook.testing.pytest_plugin"]
"""

from __future__ import annotations

from pathlib import Path

import pytest

from mr_notebook.testing.tiny_model import TinyModelFactory


@pytest.fixture(scope="session")
def tiny_model_factory(tmp_path_factory: pytest.TempPathFactory) -> TinyModelFactory:
    """Session-wide ``factory(**options) -> Path``; files are cached by options."""
    return TinyModelFactory(tmp_path_factory.mktemp("tiny_models"))


@pytest.fixture(scope="session")
def tiny_model(tiny_model_factory: TinyModelFactory) -> Path:
    """Path of the default tiny model (replies ``DEFAULT_REPLY``)."""
    return tiny_model_factory()
