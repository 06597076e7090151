"""Who may talk to ``engine serve``: loopback-only by default, a bearer token for anything wider.

A server bound beyond loopback (``0.0.0.0``, ``::``, a LAN address, a host name that resolves off this machine)
answers anyone on the network, so it is refused unless it has a token (``--token``; clients send
``Authorization: Bearer TOKEN``) or the user says ``--insecure``. ``/healthz`` stays open for load balancers.
"""

from __future__ import annotations

import hmac
import ipaddress
import socket

from engine.errors import ConfigError

TOKEN_ENV = "ENGINE_SERVE_TOKEN"
MIN_TOKEN_CHARS = 16
OPEN_PATHS = frozenset({"/healthz"})


def is_loopback(host: str) -> bool:
    """True when every address ``host`` names is a loopback address (127.0.0.0/8, ::1)."""
    if host in ("localhost", "ip6-localhost"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        pass
    try:
        infos = socket.getaddrinfo(host, None)
    except OSError:
        return False  # unresolvable: binding will say so
    addresses = {info[4][0] for info in infos}
    return bool(addresses) and all(ipaddress.ip_address(address.split("%")[0]).is_loopback for address in addresses)


def check_exposure(host: str, token: str | None, insecure: bool) -> None:
    """Refuse a token that is too short, and a non-loopback bind without a token unless ``insecure``."""
    if token is not None and len(token.strip()) < MIN_TOKEN_CHARS:
        raise ConfigError(f"--token must be at least {MIN_TOKEN_CHARS} characters; make one with "
                          "python -c \"import secrets; print(secrets.token_urlsafe(32))\"")
    if token is None and not insecure and not is_loopback(host):
        raise ConfigError(f"--host {host} exposes the server beyond this machine: pass --token (or set "
                          f"${TOKEN_ENV}; clients send 'Authorization: Bearer TOKEN'), or --insecure to serve "
                          "without authentication")


def authorized(header: str | None, token: str | None) -> bool:
    """Constant-time check of an ``Authorization: Bearer ...`` header (always true without a token)."""
    if token is None:
        return True
    scheme, _, value = (header or "").strip().partition(" ")
    if scheme.lower() != "bearer":
        return False
    return hmac.compare_digest(value.strip().encode("utf-8"), token.strip().encode("utf-8"))
