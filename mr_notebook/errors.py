"""Every error a user of mr_notebook can see.

Each class subclasses the builtin it resembles, so ``except LookupError`` keeps working, and carries a
message that says what to do next. Interfaces convert by type: HTTP uses ``http_status`` and ``code``
(OpenAI's error shape), the CLI prints the message and exits with ``exit_code``, magics print it in red.
"""

from __future__ import annotations


class MrNotebookError(Exception):
    """Base class; ``str(error)`` is the whole user-facing message."""

    http_status = 500
    code = "internal_error"
    error_type = "server_error"
    exit_code = 1
    #: True for mistakes the user can fix (shown without a traceback).
    user_error = True
    param: str | None = None


class InvalidReference(MrNotebookError, ValueError):
    """A model name that does not parse; the message lists the accepted forms."""

    http_status = 400
    code = "invalid_model_reference"
    error_type = "invalid_request_error"
    param = "model"


class InvalidRequest(MrNotebookError, ValueError):
    """A request parameter with a wrong type or value; ``param`` names it."""

    http_status = 400
    code = "invalid_parameter"
    error_type = "invalid_request_error"

    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.param = param


class ModelNotFound(MrNotebookError, LookupError):
    """The name is not in the store (the engine never pulls on its own)."""

    http_status = 404
    code = "model_not_found"
    error_type = "invalid_request_error"
    param = "model"


class LocalFileNotFound(MrNotebookError, FileNotFoundError):
    """A local path given to ``package --gguf`` that does not exist."""

    http_status = 400
    code = "file_not_found"
    error_type = "invalid_request_error"


class InvalidModelFile(MrNotebookError, ValueError):
    """A file that is not a readable GGUF model (corrupt, truncated, another format)."""

    http_status = 400
    code = "invalid_model_file"
    error_type = "invalid_request_error"


class ModelInUse(MrNotebookError, RuntimeError):
    """Removing a model that other names or a loaded worker still use, without ``force``."""

    http_status = 409
    code = "model_in_use"
    error_type = "invalid_request_error"


class StoreError(MrNotebookError, OSError):
    """The store on disk could not be read or written (permissions, disk full)."""

    http_status = 500
    code = "store_error"


class PullError(MrNotebookError, ConnectionError):
    """A pull failed: registry unreachable, refused, or sent something that is not a GGUF model."""

    http_status = 502
    code = "pull_failed"


class RemoteNotFound(PullError, LookupError):
    """The registry or Hub has no such repository, tag or file (HTTP 404)."""

    http_status = 404
    code = "remote_model_not_found"


class AuthenticationRequired(PullError, PermissionError):
    """The registry wants credentials we do not have."""

    http_status = 401
    code = "registry_auth_required"


class DigestMismatch(PullError):
    """Downloaded bytes do not match the digest the registry promised; the partial file is deleted."""

    code = "digest_mismatch"


class OfflineError(PullError):
    """The network is off (``HF_HUB_OFFLINE=1``) or unreachable and the model is not stored yet."""

    code = "offline"


class InsufficientMemory(MrNotebookError, MemoryError):
    """A model does not fit in the memory budget even after evicting idle models."""

    http_status = 507
    code = "insufficient_memory"
    error_type = "server_error"


class ContextLengthExceeded(InvalidRequest):
    """A prompt (plus requested tokens) longer than the model's context."""

    code = "context_length_exceeded"

    def __init__(self, message: str, param: str | None = "messages") -> None:
        super().__init__(message, param)


class QueueFull(MrNotebookError, RuntimeError):
    """Too many requests are waiting for one model; retry later."""

    http_status = 503
    code = "queue_full"
    error_type = "server_error"
    retry_after = 1


class ModelLoadError(MrNotebookError, RuntimeError):
    """llama.cpp could not load the model file (the message names the file)."""

    http_status = 500
    code = "model_load_failed"
    error_type = "server_error"


class WorkerCrashed(MrNotebookError, RuntimeError):
    """A model's worker process died while serving; the next request starts a fresh one."""

    http_status = 502
    code = "worker_crashed"
    error_type = "server_error"


class EngineUnavailable(MrNotebookError, ConnectionError):
    """The engine (a Jupyter server, `mr-notebook serve`) cannot be reached."""

    http_status = 503
    code = "engine_unavailable"
    error_type = "server_error"


class Cancelled(MrNotebookError):
    """A generation stopped because its client went away or asked to stop."""

    http_status = 499
    code = "cancelled"
    user_error = True


class RemoteEngineError(MrNotebookError, ConnectionError):
    """A remote engine (``mr-notebook engine add``) could not be reached or answered with an error.

    The message names the engine; ``http_status`` is 502, or the engine's own 4xx when it refused the request.
    """

    http_status = 502
    code = "remote_engine_error"
    error_type = "server_error"

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        if status is not None and 400 <= status < 500:
            self.http_status = status
            self.error_type = "invalid_request_error"


class RemoteEngineTimeout(RemoteEngineError, TimeoutError):
    """A remote engine sent nothing for longer than its timeout."""

    http_status = 504
    code = "remote_engine_timeout"


class InvalidJSON(InvalidRequest):
    """The request body is not valid JSON (or not a JSON object)."""

    code = "invalid_json"


class UnsupportedMediaType(InvalidRequest):
    """A body sent without ``Content-Type: application/json`` (web pages can send text/plain cross-site)."""

    http_status = 415
    code = "unsupported_media_type"


class StoreLocked(MrNotebookError, TimeoutError):
    """Another process held the store's lock longer than we wait; the message names it (pid, command)."""

    http_status = 503
    code = "store_locked"
    error_type = "server_error"
    retry_after = 5


class ServeError(MrNotebookError, OSError):
    """The server cannot start: its address is taken, or a non-loopback bind has no API key."""

    code = "serve_failed"
    exit_code = 2


class LockError(MrNotebookError, ValueError):
    """A lock file (``mr-notebook.lock``) that cannot be read, or a store that does not match it."""

    code = "lock_mismatch"
    http_status = 409


class ReplyNotJSON(MrNotebookError, ValueError):
    """A reply was asked for as JSON (``--json``, ``--schema``, ``map(schema=…)``) and does not parse."""

    code = "reply_not_json"
    http_status = 502


class PullRunning(MrNotebookError, RuntimeError):
    """A second pull was asked for while one is running in this widget."""

    http_status = 409
    code = "pull_running"


class ChatBusy(MrNotebookError, RuntimeError):
    """A message was sent while the previous reply is still streaming."""

    http_status = 409
    code = "chat_busy"


#: Every user-visible error, listed by hand: the wire code table in both directions. A class is found by its
#: code here, never by walking ``__subclasses__()`` (which depends on what happens to be imported).
#: tests/test_errors.py checks that every class above is listed and that codes are unique.
ERRORS: tuple[type[MrNotebookError], ...] = (
    MrNotebookError,
    InvalidReference,
    InvalidRequest,
    ModelNotFound,
    LocalFileNotFound,
    InvalidModelFile,
    ModelInUse,
    StoreError,
    PullError,
    RemoteNotFound,
    AuthenticationRequired,
    DigestMismatch,
    OfflineError,
    InsufficientMemory,
    ContextLengthExceeded,
    QueueFull,
    ModelLoadError,
    WorkerCrashed,
    EngineUnavailable,
    Cancelled,
    RemoteEngineError,
    RemoteEngineTimeout,
    InvalidJSON,
    UnsupportedMediaType,
    StoreLocked,
    ServeError,
    LockError,
    ReplyNotJSON,
    PullRunning,
    ChatBusy,
)

#: Wire code → class (the other direction is each class's ``code``).
BY_CODE: dict[str, type[MrNotebookError]] = {cls.code: cls for cls in ERRORS}


def error_for_code(code: str | None, message: str, status: int = 500, param: str | None = None) -> MrNotebookError:
    """Rebuild the error an HTTP answer describes (OpenAI's ``error.code``, the HTTP status) as our class.

    An unknown code falls back on the status: 404 ModelNotFound, 401/403 EngineUnavailable (credentials),
    other 4xx InvalidRequest, 499 Cancelled, else MrNotebookError. The status is kept on the error.
    """
    cls = BY_CODE.get(code or "")
    if cls is None:
        if status == 404:
            cls = ModelNotFound
        elif status in (401, 403):
            cls = EngineUnavailable
        elif status == 499:
            cls = Cancelled
        elif 400 <= status < 500:
            cls = InvalidRequest
        else:
            cls = MrNotebookError
    # A remote engine's own 4xx stays a 4xx; an unknown code keeps the status it came with.
    error = cls(message, status) if issubclass(cls, RemoteEngineError) else cls(message)
    if param is not None:
        error.param = param
    if cls is MrNotebookError and status >= 400:
        error.http_status = status
    return error
