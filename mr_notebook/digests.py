"""How a model id is shown: the first 12 hex digits of its sha256 digest (``docker model list``'s MODEL ID)."""

from __future__ import annotations


def short_id(digest: str) -> str:
    """``"sha256:0123456789abcdef…"`` → ``"0123456789ab"`` (a bare hex digest works too)."""
    return digest.removeprefix("sha256:")[:12]
