"""Pull Docker Model Runner artifacts from OCI registries (Docker Hub by default).

Why a small httpx client rather than oras-py: oras-py downloads a blob to a path of its choosing in one
request, with no Range resume into an existing partial file, no hashing while streaming (it re-reads the
file), no ``Retry-After`` handling and a requests-based auth flow. Everything a model pull needs here is a
few HTTP calls: the bearer-token challenge, a manifest (or index) GET, and blob GETs with ``Range``,
streamed into the store's ``.incomplete`` file (see :mod:`.common`).

Credentials, first match wins:

* ``MR_NOTEBOOK_REGISTRY_AUTH``: ``host=user:password`` entries separated by commas or newlines
  (``ghcr.io=me:TOKEN,127.0.0.1:5000=ci:secret``), or a JSON object ``{"host": "user:password"}``;
* ``$DOCKER_CONFIG/config.json`` or ``~/.docker/config.json``: the base64 ``auth`` entries under ``auths``
  (what ``docker login`` writes without a credential helper; helpers are not called).

Plain HTTP is used only for loopback registries (``localhost``, ``127.*``, ``[::1]``) and for hosts listed
(comma separated, ``host[:port]``) in ``MR_NOTEBOOK_INSECURE_REGISTRIES``.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import time
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

from mr_notebook.errors import AuthenticationRequired, DigestMismatch, PullError, RemoteNotFound
from mr_notebook.store.pull.common import (
    HashingWriter,
    PullResult,
    Reporter,
    fetch_blob,
    stored,
    unreachable,
)
from mr_notebook.store.refs import DOCKER_HUB, ModelRef
from mr_notebook.store.store import (
    CHAT_TEMPLATE_MEDIA_TYPE,
    GGUF_MEDIA_TYPE,
    LICENSE_MEDIA_TYPE,
    MMPROJ_MEDIA_TYPE,
    ModelFile,
    Store,
)

MODEL_CONFIG_TYPES = (
    "application/vnd.docker.ai.model.config.v0.1+json",
    "application/vnd.docker.ai.model.config.v0.2+json",
)
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
FILE_TYPES = (GGUF_MEDIA_TYPE, CHAT_TEMPLATE_MEDIA_TYPE, LICENSE_MEDIA_TYPE, MMPROJ_MEDIA_TYPE)
HUB_HOST = "registry-1.docker.io"
_MAX_MANIFEST = 4 * 1024 * 1024
_MAX_RETRY_AFTER = 60.0
_RETRIES = 5
_LABELS = {CHAT_TEMPLATE_MEDIA_TYPE: "chat template", LICENSE_MEDIA_TYPE: "license", MMPROJ_MEDIA_TYPE: "mmproj"}
_PARAM = re.compile(r'(\w+)="([^"]*)"')


def _host_of(ref: ModelRef) -> str:
    return HUB_HOST if ref.registry == DOCKER_HUB else ref.registry


def _is_loopback(host: str) -> bool:
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host.split("]")[0] + "]"
    return name in {"localhost", "[::1]"} or name.startswith("127.")


def _credentials(host: str, env: Mapping[str, str]) -> tuple[str, str] | None:
    raw = env.get("MR_NOTEBOOK_REGISTRY_AUTH", "").strip()
    if raw:
        entries: dict[str, str] = {}
        if raw.startswith("{"):
            try:
                entries = {str(k): str(v) for k, v in json.loads(raw).items()}
            except (ValueError, AttributeError):
                raise PullError(
                    'MR_NOTEBOOK_REGISTRY_AUTH is not valid JSON; use {"host": "user:password"} or host=user:password,…'
                ) from None
        else:
            for item in re.split(r"[,\n]", raw):
                if "=" in item:
                    key, _, value = item.strip().partition("=")
                    entries[key.strip()] = value
        if host in entries and ":" in entries[host]:
            user, _, password = entries[host].partition(":")
            return user, password
    folder = env.get("DOCKER_CONFIG") or str(Path(env.get("HOME") or Path.home()) / ".docker")
    try:
        auths = json.loads((Path(folder) / "config.json").read_text()).get("auths", {})
    except (OSError, ValueError, AttributeError):
        return None
    keys = [host, f"https://{host}", f"http://{host}"]
    if host == HUB_HOST:
        keys += ["https://index.docker.io/v1/", "index.docker.io", "docker.io"]
    for key in keys:
        entry = auths.get(key) if isinstance(auths, dict) else None
        if isinstance(entry, dict) and entry.get("auth"):
            try:
                user, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
            except ValueError:
                continue
            return user, password
    return None


class RegistryClient:
    """Registry API v2 over httpx: token challenge, Basic auth, Retry-After, streaming blob GETs."""

    def __init__(self, host: str, repository: str, env: Mapping[str, str], reporter: Reporter) -> None:
        insecure = {h.strip().lower() for h in env.get("MR_NOTEBOOK_INSECURE_REGISTRIES", "").split(",")}
        scheme = "http" if _is_loopback(host) or host.lower() in insecure else "https"
        self.host = host
        self.repository = repository
        self.base = f"{scheme}://{host}"
        self.reporter = reporter
        self.credentials = _credentials(host, env)
        self._auth: str | None = None
        self.client = httpx.Client(
            timeout=httpx.Timeout(30.0, read=120.0),
            follow_redirects=True,
            headers={"User-Agent": "mr-notebook (docker-model-runner compatible)"},
        )

    def close(self) -> None:
        self.client.close()

    def _challenge(self, response: httpx.Response) -> str:
        """Answer a 401: fetch a bearer token or use Basic credentials; returns the Authorization value."""
        header = response.headers.get("WWW-Authenticate", "")
        scheme = header.split(" ", 1)[0].lower()
        params = dict(_PARAM.findall(header))
        if scheme == "bearer" and "realm" in params:
            query = {
                "service": params.get("service", self.host),
                "scope": params.get("scope", f"repository:{self.repository}:pull"),
            }
            basic = httpx.BasicAuth(*self.credentials) if self.credentials else None
            try:
                token_response = self.client.get(params["realm"], params=query, auth=basic)
            except httpx.TransportError as exc:
                raise unreachable(params["realm"], exc) from exc
            if token_response.status_code in (401, 403):
                raise self._auth_error("the token server refused the credentials")
            if token_response.status_code >= 400:
                raise PullError(f"The token server {params['realm']} answered {token_response.status_code}.")
            body = token_response.json()
            token = body.get("token") or body.get("access_token")
            if not token:
                raise PullError(f"The token server {params['realm']} returned no token.")
            return f"Bearer {token}"
        if scheme == "basic" and self.credentials:
            raw = f"{self.credentials[0]}:{self.credentials[1]}".encode()
            return "Basic " + base64.b64encode(raw).decode()
        raise self._auth_error("no credentials found")

    def _auth_error(self, why: str) -> AuthenticationRequired:
        hint = " On Docker Hub this also means that the repository does not exist." if self.host == HUB_HOST else ""
        return AuthenticationRequired(
            f"{self.host} requires authentication to pull {self.repository} ({why}).{hint} Set "
            f"MR_NOTEBOOK_REGISTRY_AUTH='{self.host}=USER:PASSWORD' or run `docker login {self.host}`."
        )

    def send(self, path: str, headers: Mapping[str, str] | None = None) -> httpx.Response:
        """A streaming GET of ``/v2/<repository>/<path>``; the caller closes the response."""
        url = f"{self.base}/v2/{self.repository}/{path}"
        tried_auth = False
        attempt = 0
        while True:
            self.reporter.check_cancel()
            request_headers = dict(headers or {})
            if self._auth:
                request_headers["Authorization"] = self._auth
            try:
                response = self.client.send(self.client.build_request("GET", url, headers=request_headers), stream=True)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                raise unreachable(self.base, exc) from exc
            except httpx.TransportError as exc:
                raise PullError(f"The connection to {self.host} failed ({exc}); pull again.") from exc
            if response.status_code == 401 and not tried_auth:
                response.read()
                response.close()
                self._auth = self._challenge(response)
                tried_auth = True
                continue
            if response.status_code in (429, 503) and attempt < _RETRIES:
                attempt += 1
                response.close()
                self._wait(response)
                continue
            if response.status_code >= 400:
                response.read()
                response.close()
                raise self._http_error(response, url)
            return response

    def _wait(self, response: httpx.Response) -> None:
        """Sleep as long as Retry-After asks (bounded), waking up for cancellation."""
        raw = response.headers.get("Retry-After", "1")
        try:
            delay = float(raw)
        except ValueError:
            delay = 5.0  # an HTTP date: not worth parsing for a bounded wait
        deadline = time.monotonic() + min(max(delay, 0.0), _MAX_RETRY_AFTER)
        while time.monotonic() < deadline:
            self.reporter.check_cancel()
            time.sleep(min(0.2, max(deadline - time.monotonic(), 0.0)))

    def _http_error(self, response: httpx.Response, url: str) -> PullError:
        try:
            errors = response.json().get("errors", [])
            detail = "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)
        except (ValueError, AttributeError):
            detail = response.text[:200]
        if response.status_code == 401:
            return self._auth_error("credentials rejected")
        if response.status_code == 403:
            return AuthenticationRequired(f"{self.host} denied access to {self.repository} ({detail}).")
        if response.status_code == 404:
            return RemoteNotFound(f"{url} not found ({detail or 'HTTP 404'}).")
        return PullError(f"{self.host} answered HTTP {response.status_code} for {url} ({detail}).")

    def get_json(self, path: str, accept: str, digest: str | None) -> tuple[dict[str, Any], str, str]:
        """(document, its digest, its media type) of a manifest or config, verified against ``digest``."""
        response = self.send(path, {"Accept": accept})
        try:
            body = response.read()
        except httpx.TransportError as exc:
            raise PullError(f"The connection to {self.host} failed ({exc}); pull again.") from exc
        finally:
            response.close()
        if len(body) > _MAX_MANIFEST:
            raise PullError(f"{path} from {self.host} is larger than a manifest can be.")
        actual = "sha256:" + hashlib.sha256(body).hexdigest()
        expected = digest or response.headers.get("Docker-Content-Digest")
        if expected and expected.startswith("sha256:") and actual != expected:
            raise DigestMismatch(f"{path} from {self.host} does not match its digest {expected} (got {actual}).")
        try:
            document = json.loads(body)
        except ValueError:
            raise PullError(f"{path} from {self.host} is not JSON.") from None
        if not isinstance(document, dict):
            raise PullError(f"{path} from {self.host} is not a JSON object.")
        media_type = str(document.get("mediaType") or response.headers.get("Content-Type", "").split(";")[0])
        return document, actual, media_type

    def fetch_to(self, digest: str, writer: HashingWriter, size: int) -> None:
        """Stream the blob into ``writer`` from its current size; resume after dropped connections."""
        failures = 0
        while writer.tell() < size:
            offset = writer.tell()
            response = self.send(f"blobs/{digest}", {"Range": f"bytes={offset}-"} if offset else None)
            try:
                if offset and response.status_code != 206:
                    writer.restart()  # the server ignored Range: take the whole blob again
                for chunk in response.iter_bytes():
                    writer.write(chunk)
            except (httpx.ReadError, httpx.ReadTimeout, httpx.RemoteProtocolError) as exc:
                failures = 0 if writer.tell() > offset else failures + 1
                if failures >= _RETRIES:
                    raise PullError(
                        f"The download from {self.host} keeps failing ({exc}); pull again to resume."
                    ) from exc
                continue
            finally:
                response.close()
            if writer.tell() == offset:
                break  # an empty answer: let the caller report the short download


def _pick_manifest(index: dict[str, Any]) -> str:
    manifests = [m for m in index.get("manifests", []) if isinstance(m, dict) and m.get("digest")]
    if not manifests:
        raise PullError("The image index lists no manifests.")
    for entry in manifests:
        if entry.get("artifactType") in MODEL_CONFIG_TYPES:
            return str(entry["digest"])
    return str(manifests[0]["digest"])


def _created(config: dict[str, Any]) -> int | None:
    raw = (config.get("descriptor") or {}).get("created")
    if not isinstance(raw, str):
        return None
    text = re.sub(r"(\.\d{6})\d+", r"\1", raw.replace("Z", "+00:00"))
    try:
        return int(datetime.fromisoformat(text).timestamp())
    except ValueError:
        return None


def pull_oci(store: Store, ref: ModelRef, reporter: Reporter, env: Mapping[str, str]) -> PullResult:
    """Pull ``ref`` from its registry into ``store``."""
    host = _host_of(ref)
    client = RegistryClient(host, ref.repository, env, reporter)
    try:
        return _pull(store, ref, client, reporter)
    finally:
        client.close()


def _pull(store: Store, ref: ModelRef, client: RegistryClient, reporter: Reporter) -> PullResult:
    name = str(ref)
    reporter.emit("resolving", f"Resolving {name}")
    accept = ", ".join((OCI_MANIFEST, OCI_INDEX, DOCKER_MANIFEST, DOCKER_LIST))
    try:
        manifest, digest, media_type = client.get_json(f"manifests/{ref.digest or ref.tag}", accept, ref.digest)
    except RemoteNotFound as exc:
        raise RemoteNotFound(
            f"Model {name} not found on {client.host}: unknown repository or tag. Check the name and tag ({exc})"
        ) from exc
    if media_type in INDEX_TYPES or "manifests" in manifest:
        chosen = _pick_manifest(manifest)
        manifest, digest, media_type = client.get_json(f"manifests/{chosen}", accept, chosen)

    layers = [layer for layer in manifest.get("layers", []) if isinstance(layer, dict)]
    config_desc = manifest.get("config") or {}
    if not any(layer.get("mediaType") == GGUF_MEDIA_TYPE for layer in layers):
        kinds = sorted({str(config_desc.get("mediaType"))} | {str(x.get("mediaType")) for x in layers})
        raise PullError(
            f"{name} is not a GGUF model (media types {', '.join(kinds)}). mr-notebook runs "
            f"models packaged by Docker Model Runner with {GGUF_MEDIA_TYPE} layers."
        )

    record = stored(store, ref)
    if record is not None and record.id == digest and all(store.has_blob(f.digest) for f in record.files):
        reporter.emit("done", f"{name} is up to date ({record.short_id})")
        return PullResult(record=record, downloaded=0, already_present=True)

    config: dict[str, Any] = {}
    if str(config_desc.get("mediaType")) in MODEL_CONFIG_TYPES and config_desc.get("digest"):
        config, _, _ = client.get_json(f"blobs/{config_desc['digest']}", "*/*", str(config_desc["digest"]))

    files = []
    for layer in layers:
        if layer.get("mediaType") not in FILE_TYPES:
            continue
        title = (layer.get("annotations") or {}).get("org.opencontainers.image.title", "")
        files.append(
            ModelFile(
                digest=str(layer["digest"]),
                size=int(layer.get("size", 0)),
                media_type=str(layer["mediaType"]),
                name=str(title),
            )
        )
    reporter.overall_total = sum(f.size for f in files)
    downloaded = 0
    for entry in files:
        label = entry.name or _LABELS.get(entry.media_type) or entry.digest.removeprefix("sha256:")[:12]

        def fetcher(writer: HashingWriter, digest: str = entry.digest, size: int = entry.size) -> None:
            client.fetch_to(digest, writer, size)

        downloaded += fetch_blob(store, entry.digest, entry.size, fetcher, reporter, label)
    raw = config.get("config")
    inner: dict[str, Any] = dict(raw) if isinstance(raw, dict) else {}
    record = store.create_model(
        [ref],
        files,
        config=inner,
        source=f"{client.base}/{ref.repository}@{digest}",
        model_id=digest,
        created=_created(config),
    )
    reporter.emit("done", f"Pulled {name} ({record.short_id})")
    return PullResult(record=record, downloaded=downloaded, already_present=False)
