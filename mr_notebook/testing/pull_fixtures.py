"""Pytest fixtures for pull tests: a real local OCI registry and a local Hugging Face Hub.

Register with ``-p mr_notebook.testing.pull_fixtures`` (or import the fixtures into a test module).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Iterator, Mapping
from pathlib import Path

import pytest

from mr_notebook.testing.hub import LocalHub
from mr_notebook.testing.registry import LocalRegistry


@pytest.fixture(scope="session")
def local_registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalRegistry]:
    """``docker-registry`` on 127.0.0.1:<free port> for the whole session."""
    with LocalRegistry(tmp_path_factory.mktemp("registry")) as registry:
        yield registry


@pytest.fixture
def local_hub() -> Iterator[LocalHub]:
    """A fresh local Hub per test (its byte counters start at zero)."""
    with LocalHub() as hub:
        yield hub


def pull_in_subprocess(home: Path, reference: str, env: Mapping[str, str]) -> subprocess.Popen[str]:
    """Start ``pull(Store(home), reference)`` in another Python process; it prints bytes downloaded."""
    code = textwrap.dedent(f"""
        from mr_notebook.store import Store
        from mr_notebook.store.pull import pull
        result = pull(Store({str(home)!r}), {reference!r})
        print(result.downloaded, result.already_present)
    """)
    return subprocess.Popen(
        [sys.executable, "-c", code], env=dict(env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
