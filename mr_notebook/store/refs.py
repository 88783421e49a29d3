"""Model references, parsed the way Docker Model Runner parses them.

``llama3.2`` → ``ai/llama3.2:latest`` on Docker Hub; ``hf.co/org/repo:Q8_0`` → a GGUF file in a Hugging Face
repo; ``127.0.0.1:5000/ai/tiny:v1`` → another OCI registry; ``ai/tiny@sha256:…`` → a digest. Repository
names are lowercased; tags keep their case (Docker tags are case-sensitive). The grammar is the OCI
distribution one, so a valid name can never hold ``..``, a slash in the wrong place or a control character.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from mr_notebook.errors import InvalidReference

DOCKER_HUB = "docker.io"
HUGGING_FACE = "hf.co"
DEFAULT_NAMESPACE = "ai"
DEFAULT_TAG = "latest"
DEFAULT_HF_QUANT = "Q4_K_M"
MAX_NAME = 255

_HF_ALIASES = {"hf.co", "huggingface.co", "www.huggingface.co"}
_COMPONENT = re.compile(r"^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$")
_TAG = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,127}$")
_DIGEST = re.compile(r"^sha256:[0-9a-f]{64}$")
_HOST = re.compile(
    r"^(?:localhost|\[[0-9a-fA-F:]+\]|[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?)*)(?::[0-9]{1,5})?$"
)

FORMS = (
    "Accepted forms: NAME (same as ai/NAME:latest), NAMESPACE/NAME[:TAG], "
    "HOST[:PORT]/NAMESPACE/NAME[:TAG], hf.co/ORG/REPO[:QUANT], NAME@sha256:<64 hex>. "
    "Names use lowercase letters, digits and . _ - separators; tags use letters, digits, . _ - "
    "(e.g. ai/llama3.2:1B-Q8_0)."
)


@dataclass(frozen=True, order=True)
class ModelRef:
    """A parsed, normalised model reference; ``str(ref)`` is its canonical name."""

    registry: str
    repository: str
    tag: str | None = DEFAULT_TAG
    digest: str | None = None

    @property
    def is_huggingface(self) -> bool:
        return self.registry == HUGGING_FACE

    @property
    def quant(self) -> str:
        """The GGUF quantization a Hugging Face reference asks for (``latest`` means the default)."""
        if self.tag is None or self.tag == DEFAULT_TAG:
            return DEFAULT_HF_QUANT
        return self.tag

    @property
    def name(self) -> str:
        """Registry (when not Docker Hub) and repository, without tag or digest."""
        first = self.repository.split("/", 1)[0]
        if self.registry == DOCKER_HUB and not ("." in first and "/" in self.repository):
            return self.repository
        return f"{self.registry}/{self.repository}"

    def __str__(self) -> str:
        if self.digest is not None:
            return f"{self.name}@{self.digest}"
        return f"{self.name}:{self.tag}"


def _invalid(text: str, why: str) -> InvalidReference:
    shown = text if len(text) <= 80 else text[:77] + "..."
    return InvalidReference(f"Invalid model reference {shown!r}: {why}. {FORMS}")


def parse_ref(text: str) -> ModelRef:
    """Parse and normalise ``text``; raises :class:`InvalidReference` with the accepted forms."""
    if not isinstance(text, str):
        raise InvalidReference(f"A model reference must be a string, not {type(text).__name__}. {FORMS}")
    raw = text.strip()
    if not raw:
        raise _invalid(text, "it is empty")
    if len(raw) > MAX_NAME + 130:
        raise _invalid(text, f"it is longer than {MAX_NAME} characters")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in raw):
        raise _invalid(text, "it contains spaces or control characters")

    digest: str | None = None
    if "@" in raw:
        raw, digest = raw.split("@", 1)
        if not _DIGEST.match(digest):
            raise _invalid(text, "a digest must be sha256: followed by 64 lowercase hex digits")

    tag: str | None = None
    last_slash = raw.rfind("/")
    colon = raw.rfind(":")
    if colon > last_slash:
        raw, tag = raw[:colon], raw[colon + 1 :]
        if not _TAG.match(tag):
            raise _invalid(text, f"the tag {tag!r} is not valid (at most 128 of A-Z a-z 0-9 . _ -)")
    if digest is not None and tag is not None:
        raise _invalid(text, "give either a tag or a digest, not both")

    parts = raw.split("/")
    registry = DOCKER_HUB
    first = parts[0]
    if len(parts) > 1 and ("." in first or ":" in first or first == "localhost"):
        if not _HOST.match(first):
            raise _invalid(text, f"the registry host {first!r} is not valid")
        registry = first.lower()
        parts = parts[1:]
        if registry in _HF_ALIASES:
            registry = HUGGING_FACE
        elif registry in {"index.docker.io", "registry-1.docker.io"}:
            registry = DOCKER_HUB

    parts = [p.lower() for p in parts]
    if any(not p for p in parts):
        raise _invalid(text, "it has an empty path component")
    for part in parts:
        if not _COMPONENT.match(part):
            raise _invalid(text, f"the name component {part!r} is not valid")
    if registry == HUGGING_FACE and len(parts) != 2:
        raise _invalid(text, "a Hugging Face reference is hf.co/ORG/REPO[:QUANT]")
    if len(parts) == 1 and registry == DOCKER_HUB:
        parts = [DEFAULT_NAMESPACE, *parts]
    repository = "/".join(parts)
    if len(registry) + len(repository) + 1 > MAX_NAME:
        raise _invalid(text, f"it is longer than {MAX_NAME} characters")
    if digest is None and tag is None:
        tag = DEFAULT_TAG
    return ModelRef(registry=registry, repository=repository, tag=tag, digest=digest)


def normalize(text: str) -> str:
    """The canonical name of ``text`` (``llama3.2`` → ``ai/llama3.2:latest``)."""
    return str(parse_ref(text))
