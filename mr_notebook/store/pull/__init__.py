"""Pull models into the store: OCI registries (Docker Hub by default) and Hugging Face GGUF repositories.

``pull(store, "ai/llama3.2:1B-Q8_0")`` is ``docker model pull``: resolve the reference, download the blobs
the store lacks (resumable, verified, one download per blob across processes), then publish the model under
its name. Front ends render :class:`PullProgress` events (``progress=``) and/or pass a tqdm class.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Mapping

from mr_notebook.errors import RemoteNotFound
from mr_notebook.store.pull.common import PullProgress, PullResult, Reporter
from mr_notebook.store.refs import parse_ref
from mr_notebook.store.store import Store

__all__ = ["PullProgress", "PullResult", "RemoteNotFound", "dispatch", "pull"]


def dispatch(reference: str) -> str:
    """Which puller serves ``reference``: ``"huggingface"`` or ``"oci"``."""
    return "huggingface" if parse_ref(reference).is_huggingface else "oci"


def pull(
    store: Store,
    reference: str,
    *,
    progress: Callable[[PullProgress], None] | None = None,
    tqdm_class: type | None = None,
    cancel: threading.Event | None = None,
    env: Mapping[str, str] | None = None,
) -> PullResult:
    """Pull ``reference`` into ``store`` (synchronous; run it in a thread from async code).

    ``env`` replaces ``os.environ`` for the settings read here (``HF_ENDPOINT``, ``HF_TOKEN``,
    ``HF_HUB_OFFLINE``, ``MR_NOTEBOOK_REGISTRY_AUTH``, ``MR_NOTEBOOK_INSECURE_REGISTRIES``, ``DOCKER_CONFIG``,
    ``HOME``). Setting ``cancel`` raises :class:`~mr_notebook.errors.Cancelled` and keeps the partial file
    for the next pull to resume.
    """
    env = os.environ if env is None else env
    ref = parse_ref(reference)
    reporter = Reporter(progress, tqdm_class, cancel)
    store.ensure()
    if ref.is_huggingface:
        from mr_notebook.store.pull.hf import pull_hf

        return pull_hf(store, ref, reference, reporter, env)
    from mr_notebook.store.pull.oci import pull_oci

    return pull_oci(store, ref, reporter, env)
