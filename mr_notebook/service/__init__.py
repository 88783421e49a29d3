"""The model service: the product's rules (pull, package, rm, purge, configure, load, ps …) in one place.

``ModelService`` is async (for servers: it never blocks the loop); ``SyncService`` runs one on a private loop
thread for code with no event loop (``sync.call(sync.service.rm(["ai/x"]))``).
Results are the dataclasses of :mod:`.results`.
"""

from mr_notebook.service.core import ModelService, ProgressCallback
from mr_notebook.service.results import (
    DiskUsage,
    LoadedModel,
    ModelEntry,
    Progress,
    PruneResult,
    PullResult,
    PurgeResult,
    Reconfigured,
    RemoteModel,
    Removal,
    ServiceStatus,
)
from mr_notebook.service.sync import SyncService
from mr_notebook.service.upload import Upload

__all__ = [
    "DiskUsage",
    "LoadedModel",
    "ModelEntry",
    "ModelService",
    "Progress",
    "ProgressCallback",
    "PruneResult",
    "PullResult",
    "PurgeResult",
    "Reconfigured",
    "RemoteModel",
    "Removal",
    "ServiceStatus",
    "SyncService",
    "Upload",
]
