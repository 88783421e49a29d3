"""Notebook workflows on top of the engine client: ``map`` over data, reply cache, provenance, lock files.

Importing this package is cheap (no pandas, no engine); each piece imports what it needs when used.
"""

from mr_notebook.workflows.map import MapError, MapInterrupted, MapResult, map

__all__ = ["MapError", "MapInterrupted", "MapResult", "map"]
