"""Whether a host is this machine's loopback: one answer for the server's Host check, browser origins, the
``serve`` bind address and plain-HTTP registries."""

from __future__ import annotations

import ipaddress


def host_name(host: str) -> str:
    """``"127.0.0.1:5000"`` → ``"127.0.0.1"``, ``"[::1]:8888"`` → ``"::1"``, ``"Localhost"`` → ``"localhost"``."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].split("]", 1)[0]
    if host.count(":") == 1:  # name:port (a bare IPv6 address has several colons)
        return host.split(":", 1)[0]
    return host


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (``127.0.0.0/8``, ``::1``), with or without a port.

    Names are compared exactly and addresses parsed, so ``127.0.0.1.example.com`` or ``localhost.evil`` are
    not loopback (a DNS-rebinding page would send such a Host).
    """
    name = host_name(host)
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False
