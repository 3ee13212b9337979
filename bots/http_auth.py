"""Who may use the operator surface: the holder of the admin token (PALAVER_ADMIN_TOKEN).

The token is compared in constant time (``hmac.compare_digest``) and never logged,
echoed or put in an error. Without a token every protected route refuses, so an
unprotected API never answers by accident; and a server that other machines can
reach (a host that is not loopback) does not start without one.
"""

from __future__ import annotations

import hmac
import ipaddress

from memory.errors import PalaverError

LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain", "ip6-localhost"})


class UnsafeBinding(PalaverError):
    """The server would be reachable from other machines without an admin token."""


class AdminToken:
    """The secret, kept out of reprs and logs."""

    __slots__ = ("_secret",)

    def __init__(self, secret: str | None) -> None:
        self._secret = secret.encode("utf-8") if secret and secret.strip() else None

    def __repr__(self) -> str:
        return "AdminToken(set)" if self._secret else "AdminToken(not set)"

    @property
    def configured(self) -> bool:
        return self._secret is not None

    def matches(self, offered: object) -> bool:
        """Whether ``offered`` is the token (False when none is configured)."""
        if self._secret is None or not isinstance(offered, str):
            return False
        return hmac.compare_digest(offered.encode("utf-8", "surrogatepass"), self._secret)

    def matches_header(self, authorization: str | None) -> bool:
        """An ``Authorization: Bearer <token>`` header."""
        if not authorization:
            return False
        scheme, _, credentials = authorization.partition(" ")
        return scheme.lower() == "bearer" and self.matches(credentials.strip())


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(host: str, token: AdminToken) -> None:
    """Refuse to serve other machines without a token."""
    if not is_loopback(host) and not token.configured:
        raise UnsafeBinding(
            f"http.host is {host!r}, which other machines can reach, and PALAVER_ADMIN_TOKEN "
            "is not set: set it in the environment (a long random string) or bind "
            'http.host = "127.0.0.1"'
        )
