"""What the model service hands back: typed results, never display text.

Interfaces turn these into words and tables (one renderer per table) or into JSON (``to_json`` gives the
wire shape the HTTP routes send, Docker Model Runner's where it has one), so every interface shows the same
answer to the same operation.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from typing import Any

from mr_notebook.engine.results import ModelStatus
from mr_notebook.store.pull.common import PullProgress, PullResult
from mr_notebook.store.records import ModelRecord, Removal

__all__ = [
    "DiskUsage",
    "LoadedModel",
    "ModelEntry",
    "Progress",
    "PruneResult",
    "PullResult",
    "PurgeResult",
    "Reconfigured",
    "RemoteModel",
    "Removal",
    "ServiceStatus",
]

#: One progress event of a pull or a load (statuses: resolving, downloading, verifying, exists, done for a pull;
#: unloading, loading, loaded for a load). tqdm, the widget and NDJSON lines all render this one type.
Progress = PullProgress


def iso(timestamp: float | None) -> str | None:
    """A Unix time as ISO 8601 UTC (``Z``), as Docker Model Runner's ``ps`` shows times; None stays None."""
    if not timestamp:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat().replace("+00:00", "Z")


@dataclass(frozen=True)
class RemoteModel:
    """A model served by a remote engine (``mr-notebook engine add``), named ``ENGINE/<id>``."""

    engine: str
    remote_id: str
    #: ``inspect`` details (url, kind, parallel) when known; the listing leaves them out.
    config: dict[str, Any] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return f"{self.engine}/{self.remote_id}"

    @property
    def id(self) -> str:
        return f"remote:{self.name}"

    @property
    def tags(self) -> list[str]:
        return [self.name]

    def to_json(self) -> dict[str, Any]:
        """The ``list``/``inspect`` shape of stored models, so readers of one read the other."""
        return {
            "id": self.id,
            "tags": self.tags,
            "created": 0,
            "config": {"engine": self.engine, **self.config},
            "settings": dict(self.settings),
        }


#: A row of ``list`` / the answer of ``inspect``: a stored model or a remote engine's model.
ModelEntry = ModelRecord | RemoteModel


@dataclass(frozen=True)
class PruneResult:
    """Files (partial downloads, unused blobs) deleted by ``prune`` and the bytes they held."""

    files: int
    bytes: int

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class PurgeResult:
    """Models deleted by ``purge``, bytes freed, and how many loaded models were ended first."""

    models: int
    bytes: int
    unloaded: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


@dataclass(frozen=True)
class DiskUsage:
    """``df``: bytes of blobs, of partial downloads, in total; and the model count."""

    blobs: int
    partials: int
    total: int
    models: int

    def to_json(self) -> dict[str, int]:
        """Docker's two fields plus ours."""
        return {"models_disk_usage": self.total, "default_backend_disk_usage": 0, **asdict(self)}


@dataclass(frozen=True)
class Reconfigured:
    """``configure``: the stored model with its new settings, and how they reach running workers.

    Settings apply at load: idle workers of the model are ended at once and loaded again (``reloaded``);
    busy ones finish their requests first and reload when they go idle (``pending``).
    """

    model: ModelRecord
    reloaded: list[str] = field(default_factory=list)
    pending: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "model": self.model.name,
            "settings": dict(self.model.settings),
            "reloaded": list(self.reloaded),
            "pending": list(self.pending),
        }


@dataclass(frozen=True)
class LoadedModel:
    """One row of ``ps``: a local model's worker, or a remote engine that has served requests.

    Times are Unix seconds here; ``to_json`` writes them as ISO 8601 (Docker Model Runner's ``ps``).
    """

    model: str
    id: str
    #: "llama.cpp" (a worker process here) or "remote" (a remote engine: no pid, memory or expiry).
    backend: str
    pid: int = 0
    memory: int = 0
    context_size: int = 0
    keep_alive: float = -1
    expires_at: float | None = None
    loaded_at: float | None = None
    last_used: float | None = None
    in_flight: int = 0
    queued: int = 0
    threads: int = 0
    parallel: int = 1
    batch_fill: float = 0.0
    #: A remote engine's status (health, latency, requests); None for local models.
    engine: dict[str, Any] | None = None

    @property
    def busy(self) -> bool:
        """Answering or holding requests (``rm``/``purge`` refuse such a model without ``force``)."""
        return self.in_flight > 0 or self.queued > 0

    @classmethod
    def from_status(cls, status: ModelStatus) -> LoadedModel:
        return cls(
            model=status.model,
            id=status.id,
            backend="llama.cpp",
            pid=status.pid,
            memory=status.memory,
            context_size=status.context_size,
            keep_alive=status.keep_alive,
            expires_at=status.expires_at,
            loaded_at=status.loaded_at,
            last_used=status.last_used,
            in_flight=status.in_flight,
            queued=status.queued,
            threads=status.threads,
            parallel=status.parallel,
            batch_fill=status.batch_fill,
        )

    @classmethod
    def from_engine(cls, engine: dict[str, Any]) -> LoadedModel:
        """A remote engine's row: named by the engine (a valid model reference, as ps readers parse names)."""
        name = str(engine["name"])
        return cls(
            model=name,
            id=f"remote:{name}",
            backend="remote",
            in_flight=int(engine.get("in_flight", 0)),
            queued=int(engine.get("waiting", 0)),
            engine=dict(engine),
        )

    def to_json(self) -> dict[str, Any]:
        """The ``GET /engines/ps`` row: Docker Model Runner's fields plus ours."""
        row: dict[str, Any] = {
            "model": self.model,
            "model_name": self.model,
            "id": self.id,
            "backend_name": self.backend,
            "mode": "completion",
            "pid": self.pid,
            "memory": self.memory,
            "context_size": self.context_size,
            "keep_alive": self.keep_alive,
            "expires_at": iso(self.expires_at),
            "loaded_at": iso(self.loaded_at),
            "last_used": iso(self.last_used),
            "in_flight": self.in_flight,
            "queued": self.queued,
            "in_use": self.in_flight > 0,
            "threads": self.threads,
            "parallel": self.parallel,
            "batch_fill": self.batch_fill,
        }
        if self.engine is not None:
            row["engine"] = self.engine
        return row


@dataclass(frozen=True)
class ServiceStatus:
    """``status``: what is serving, and how."""

    version: str
    #: "jupyter", "standalone", "kernel" (``%model serve``) or "local" (in-process, not served).
    mode: str
    loaded_models: int
    max_queue: int
    #: The store's home folder, for people reading the status (clients never open it).
    store: str
    #: Remote engines: health, latency of the last answer, requests in flight.
    engines: list[dict[str, Any]] = field(default_factory=list)
    backend: str = "llama.cpp"

    def to_json(self) -> dict[str, Any]:
        return {
            "status": "running",
            "message": "mr-notebook model runner is running",
            "backend": self.backend,
            "mode": self.mode,
            "version": self.version,
            "loaded_models": self.loaded_models,
            "max_queue": self.max_queue,
            "store": self.store,
            "engines": list(self.engines),
        }
