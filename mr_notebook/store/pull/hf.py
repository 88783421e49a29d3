"""Pull GGUF files from Hugging Face repositories (``hf.co/ORG/REPO[:QUANT]``) with huggingface_hub.

huggingface_hub does the Hub work: :class:`HfApi.model_info` (with ``files_metadata``) lists the files with
their LFS sha256 and size at one commit, :func:`hf_hub_url` builds the ``resolve`` URL, and
:func:`huggingface_hub.file_download.http_get` downloads it (Range resume, retries on dropped
connections, token headers). We hand ``http_get`` our store's ``.incomplete`` file (a
:class:`~.common.HashingWriter`) instead of letting ``hf_hub_download`` fill its own cache, because:

* the model is stored once: a copy in the HF cache plus one in our store would double the disk used, and
  hard links are not possible across filesystems;
* the bytes are hashed while they stream, so verifying against the LFS sha256 costs no second read;
* resume, the per-blob lock (three processes → one download), ``prune`` and ``df`` work exactly as for
  OCI pulls, on the same partial files.

``http_get`` writes in 10 MiB pieces, so a killed pull loses at most 10 MiB. Tested with huggingface_hub 2.4
(``http_get`` needs its ``tqdm_class`` argument).

Our tqdm bar (``tqdm_class``) is fed by the writer, so OCI and HF pulls look alike; huggingface_hub's own bar
is given a silent class. ``HF_ENDPOINT``, ``HF_TOKEN`` and ``HF_HUB_OFFLINE`` are read from ``env``
at each pull (huggingface_hub reads them once at import, which would ignore later changes).
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, BinaryIO, cast

from tqdm import tqdm

from mr_notebook.errors import AuthenticationRequired, PullError, RemoteNotFound
from mr_notebook.store.pull.common import (
    PullResult,
    Reporter,
    fetch_blob,
    stored,
    unreachable,
)
from mr_notebook.store.pull.sink import HashingWriter
from mr_notebook.store.refs import DEFAULT_HF_QUANT, ModelRef
from mr_notebook.store.store import GGUF_MEDIA_TYPE, ModelFile, Store

DEFAULT_ENDPOINT = "https://huggingface.co"
_SPLIT = re.compile(r"^(?P<base>.+)-(?P<part>\d{5})-of-(?P<count>\d{5})\.gguf$", re.IGNORECASE)
_QUANT_IN_NAME = re.compile(r"(?:^|[-._/])((?:I?Q\d(?:_[A-Z0-9]+)*)|BF16|F16|F32|FP16)(?=[-._])", re.IGNORECASE)


class _SilentTqdm(tqdm):  # type: ignore[type-arg]
    """huggingface_hub's internal bar; ours (fed by the writer) is the one users see."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs["disable"] = True
        kwargs.pop("name", None)
        super().__init__(*args, **kwargs)


@dataclass(frozen=True)
class HubFile:
    path: str
    size: int
    sha256: str


def _truthy(value: str | None) -> bool:
    return (value or "").strip().upper() in {"1", "ON", "YES", "TRUE"}


def _repo_id(text: str, ref: ModelRef) -> str:
    """The repository as the user typed it (the Hub's URLs keep case; our store name is lowercased)."""
    path = text.strip().split("/", 1)[1] if "/" in text else ref.repository
    path = path.split("@", 1)[0]
    if ":" in path:
        path = path.rsplit(":", 1)[0]
    return path if path.lower() == ref.repository else ref.repository


def _quant_of(path: str) -> str | None:
    found = _QUANT_IN_NAME.findall(path.rsplit("/", 1)[-1]) or _QUANT_IN_NAME.findall(path)
    return found[-1].upper() if found else None


def choose_files(files: list[HubFile], quant: str, asked: bool) -> list[HubFile]:
    """The GGUF file(s) for ``quant``: a matching file or split set, else the only GGUF, else an error."""
    ggufs = [f for f in files if f.path.lower().endswith(".gguf") and "mmproj" not in f.path.lower()]
    groups: dict[str, list[HubFile]] = {}
    for entry in ggufs:
        split = _SPLIT.match(entry.path)
        groups.setdefault(split.group("base") if split else entry.path, []).append(entry)
    for members in groups.values():
        members.sort(key=lambda f: f.path)
    matching = [key for key in groups if (_quant_of(groups[key][0].path) or "").upper() == quant.upper()]
    if not matching:
        matching = [key for key in groups if quant.lower() in key.lower()]
    if len(matching) >= 1:
        return groups[sorted(matching, key=len)[0]]
    if len(groups) == 1 and not asked:
        return next(iter(groups.values()))
    quants = sorted({q for key in groups if (q := _quant_of(groups[key][0].path))})
    if not groups:
        raise PullError("The repository has no GGUF file; mr-notebook runs GGUF models.")
    raise RemoteNotFound(
        f"No GGUF file for quantization {quant!r}. The repository has: {', '.join(quants) or 'none named'} "
        "(choose one with hf.co/ORG/REPO:QUANT)."
    )


@contextmanager
def _hub_errors(name: str, endpoint: str) -> Iterator[None]:
    """Translate huggingface_hub and transport exceptions into our errors, in one place."""
    from huggingface_hub import errors as hf_errors

    try:
        yield
    except hf_errors.OfflineModeIsEnabled as exc:
        raise unreachable(endpoint, exc) from exc
    except hf_errors.GatedRepoError as exc:
        raise AuthenticationRequired(
            f"{name} is gated: accept its terms on the Hub and set HF_TOKEN to a token of that account."
        ) from exc
    except hf_errors.RepositoryNotFoundError as exc:
        status = exc.response.status_code if exc.response is not None else 404
        if status == 401:
            raise AuthenticationRequired(
                f"{name} was not found or needs a token (HTTP 401): check the name, or set HF_TOKEN."
            ) from exc
        raise RemoteNotFound(f"Model {name} not found on {endpoint} (no such repository).") from exc
    except hf_errors.RevisionNotFoundError as exc:
        raise RemoteNotFound(f"Model {name}: revision not found on {endpoint}.") from exc
    except hf_errors.HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else 0
        if status in (401, 403):
            raise AuthenticationRequired(f"{endpoint} refused access to {name} (HTTP {status}); set HF_TOKEN.") from exc
        if status == 404:
            raise RemoteNotFound(f"Model {name}: file not found on {endpoint}.") from exc
        raise PullError(f"{endpoint} answered HTTP {status} for {name}.") from exc
    except Exception as exc:  # transport errors: httpx, httpx2 or requests depending on the version
        if type(exc).__name__ in {"ConnectError", "ConnectTimeout", "ConnectionError"}:
            raise unreachable(endpoint, exc) from exc
        if type(exc).__module__.split(".")[0] in {"httpx", "httpx2", "requests", "urllib3"}:
            raise PullError(f"The connection to {endpoint} failed ({exc}); pull again to resume.") from exc
        if isinstance(exc, OSError) and "Consistency check failed" in str(exc):
            raise PullError(f"The download of {name} ended early ({exc}); pull again to resume.") from exc
        raise


def pull_hf(store: Store, ref: ModelRef, text: str, reporter: Reporter, env: Mapping[str, str]) -> PullResult:
    """Pull the GGUF file(s) of ``ref`` from the Hub (``HF_ENDPOINT``) into ``store``."""
    from huggingface_hub import HfApi, hf_hub_url
    from huggingface_hub.file_download import http_get
    from huggingface_hub.utils import build_hf_headers  # type: ignore[attr-defined]

    name = str(ref)
    endpoint = (env.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    token = env.get("HF_TOKEN") or env.get("HUGGING_FACE_HUB_TOKEN") or None
    if _truthy(env.get("HF_HUB_OFFLINE")):
        kept = stored(store, ref)
        if kept is None:
            raise unreachable(endpoint, RuntimeError("HF_HUB_OFFLINE=1 is set"))
        reporter.emit("done", f"{name} is stored; HF_HUB_OFFLINE=1, so the Hub was not checked")
        return PullResult(record=kept, downloaded=0, already_present=True)

    repo_id = _repo_id(text, ref)
    reporter.emit("resolving", f"Resolving {name}")
    with _hub_errors(name, endpoint):
        info = HfApi(endpoint=endpoint, token=token).model_info(repo_id, files_metadata=True)
    listing = [
        HubFile(s.rfilename, s.lfs.size if s.lfs else (s.size or 0), s.lfs.sha256 if s.lfs else "")
        for s in info.siblings or []
    ]
    asked = ref.tag is not None and ref.tag != "latest"
    chosen = choose_files(listing, ref.quant if asked else DEFAULT_HF_QUANT, asked)
    missing_sha = [f.path for f in chosen if not f.sha256]
    if missing_sha:
        raise PullError(f"{missing_sha[0]} in {name} has no LFS sha256 to verify it against.")
    files = [
        ModelFile(digest=f"sha256:{f.sha256}", size=f.size, media_type=GGUF_MEDIA_TYPE, name=f.path.rsplit("/", 1)[-1])
        for f in chosen
    ]

    record = stored(store, ref)
    if (
        record is not None
        and [f.digest for f in record.files] == [f.digest for f in files]
        and all(store.has_blob(f.digest) for f in files)
    ):
        reporter.emit("done", f"{name} is up to date ({record.short_id})")
        return PullResult(record=record, downloaded=0, already_present=True)

    headers = build_hf_headers(token=token or None, library_name="mr-notebook")
    reporter.overall_total = sum(f.size for f in files)
    downloaded = 0
    with store.lease(f.digest for f in files):  # prune/purge/rm keep the parts until the manifest names them
        for hub_file, entry in zip(chosen, files, strict=True):
            url = hf_hub_url(repo_id, hub_file.path, revision=info.sha, endpoint=endpoint)

            def fetch(writer: HashingWriter, url: str = url, entry: ModelFile = entry) -> None:
                with _hub_errors(name, endpoint):
                    http_get(
                        url,
                        cast(BinaryIO, writer),
                        resume_size=writer.tell(),
                        headers=headers,
                        expected_size=entry.size,
                        displayed_filename=entry.name,
                        tqdm_class=_SilentTqdm,
                    )

            downloaded += fetch_blob(store, entry.digest, entry.size, fetch, reporter, entry.name)
        record = store.create_model([ref], files, config={}, source=f"{endpoint}/{repo_id}@{info.sha}")
    reporter.emit("done", f"Pulled {name} ({record.short_id})")
    return PullResult(record=record, downloaded=downloaded, already_present=False)
