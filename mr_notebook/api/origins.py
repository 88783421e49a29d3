"""Which web pages may call a standalone server: Ollama's ``OLLAMA_ORIGINS`` rules, as ``MR_NOTEBOOK_ORIGINS``.

Any page the user visits can send requests to 127.0.0.1; browsers label them with ``Origin`` (and
``Sec-Fetch-Site``). Requests without either come from programs (curl, SDKs, Node) and are not browser
requests. By default a browser request is accepted only from this server's own loopback origins; more
origins are allowed by patterns where ``*`` matches anything (``https://*.example.com``, ``http://localhost:*``,
``*``). The matching is a few lines of ``re``: the CORS libraries for Tornado are unmaintained.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from mr_notebook.errors import InvalidRequest
from mr_notebook.hosts import is_loopback

_PATTERN = re.compile(r"^(\*|null|[a-z][a-z0-9+.-]*://[^/?#\s]+)$")
#: What a browser's Origin looks like; anything else (control characters …) is never echoed back.
_ORIGIN = re.compile(r"^(null|[a-z][a-z0-9+.-]*://[\x21-\x7e]+)$", re.IGNORECASE)
_HEADER_LIST = re.compile(r"^[A-Za-z0-9_, -]*$")
#: Headers a preflight may ask for when none are listed.
_DEFAULT_ALLOW_HEADERS = "Authorization, Content-Type"


def parse_origins(value: str | Iterable[str] | None, *, param: str = "MR_NOTEBOOK_ORIGINS") -> tuple[str, ...]:
    """``"https://a.example, http://localhost:*"`` → the patterns; an invalid one raises InvalidRequest."""
    if value is None:
        return ()
    items = value.replace(",", " ").split() if isinstance(value, str) else [v.strip() for v in value]
    patterns = []
    for item in items:
        if not item:
            continue
        pattern = item.lower().rstrip("/")
        if not _PATTERN.match(pattern):
            raise InvalidRequest(
                f"Invalid origin {item!r} in {param}: give origins like 'https://app.example.com', "
                "'http://localhost:*' or '*', separated by commas.",
                param,
            )
        patterns.append(pattern)
    return tuple(patterns)


def matches(origin: str, patterns: Iterable[str]) -> bool:
    origin = origin.lower().rstrip("/")
    for pattern in patterns:
        if pattern == "*" or re.fullmatch(".*".join(map(re.escape, pattern.split("*"))), origin):
            return True
    return False


def _port(netloc_or_url: str, scheme: str = "http") -> tuple[str | None, int | None]:
    try:
        parts = urlsplit(netloc_or_url if "://" in netloc_or_url else f"{scheme}://{netloc_or_url}")
        return parts.hostname, parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:  # a malformed port or IPv6 literal
        return None, None


def is_own_loopback_origin(origin: str, host_header: str) -> bool:
    """``http://localhost:12434`` for a server reached at ``127.0.0.1:12434`` (same port, a loopback name)."""
    if not origin.lower().startswith(("http://", "https://")):
        return False
    origin_host, origin_port = _port(origin)
    _, server_port = _port(host_header)
    return (
        origin_host is not None and is_loopback(origin_host) and origin_port is not None and origin_port == server_port
    )


@dataclass(frozen=True)
class BrowserCheck:
    """The verdict on one request: ``refusal`` (a message) or the origin CORS headers should name."""

    refusal: str | None = None
    cors_origin: str | None = None


def check_browser_request(headers: Mapping[str, str], host: str, patterns: Iterable[str]) -> BrowserCheck:
    """Refuse browser requests from origins that are neither this server's own nor allowed by ``patterns``."""
    origin = headers.get("Origin")
    fetch_site = headers.get("Sec-Fetch-Site", "").strip().lower()
    if origin is None:
        if fetch_site == "cross-site":  # e.g. <img src> or a form without Origin: never from a program
            return BrowserCheck(
                "Cross-site browser requests are refused. Call the API from a program, or from a page whose "
                "origin is allowed with --allowed-origins / MR_NOTEBOOK_ORIGINS."
            )
        return BrowserCheck()
    patterns = tuple(patterns)
    if _ORIGIN.match(origin) and matches(origin, patterns):
        return BrowserCheck(cors_origin=origin)
    if fetch_site != "cross-site" and is_own_loopback_origin(origin, host):
        return BrowserCheck()
    shown = origin[:200]
    return BrowserCheck(
        f"Requests from the web page origin {shown!r} are refused, so that sites you visit cannot use your "
        f"models. To allow that origin, start the server with --allowed-origins {shown} "
        f"(or set MR_NOTEBOOK_ORIGINS={shown})."
    )


def cors_headers(check: BrowserCheck, request_headers: Mapping[str, str], *, preflight: bool) -> dict[str, str]:
    """The CORS response headers for an allowed cross-origin request (none for same-origin or programs)."""
    if check.cors_origin is None:
        return {}
    out = {"Access-Control-Allow-Origin": check.cors_origin, "Vary": "Origin"}
    if preflight:
        out["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE, OPTIONS"
        asked = request_headers.get("Access-Control-Request-Headers", "")
        ok = asked.strip() and len(asked) <= 1000 and _HEADER_LIST.match(asked)
        out["Access-Control-Allow-Headers"] = asked if ok else _DEFAULT_ALLOW_HEADERS
        out["Access-Control-Max-Age"] = "600"
        if request_headers.get("Access-Control-Request-Private-Network", "").lower() == "true":
            # Chrome's Private Network Access: a public page reaching 127.0.0.1 needs this, once allowed.
            out["Access-Control-Allow-Private-Network"] = "true"
    return out
