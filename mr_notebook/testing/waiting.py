"""Waiting for something another thread or process does, in tests: polled, and always bounded."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_for(condition: Callable[[], Any], what: str = "condition", timeout: float = 60.0) -> Any:
    """Poll ``condition`` every 20 ms until it is truthy and return its value; AssertionError naming ``what``
    after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")
