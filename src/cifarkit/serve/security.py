"""Who may reach the server: loopback by default, a bearer API key for anything wider.

Any other address needs an API key, which every ``/v1/`` request must then carry (401 without). ``/health``, the
page and the API docs stay open: a browser cannot add the header to the request that opens them, and they hold no
model data (the page asks for the key and sends it with its own requests).
"""

from __future__ import annotations

import ipaddress
import secrets
from typing import Annotated

from fastapi import HTTPException, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from cifarkit.errors import CifarkitError

API_KEY_ENV = "CIFARKIT_API_KEY"

PAGE_HEADERS = {
    # Nothing outside this server: no CDN, fonts or scripts from elsewhere, even if the page were changed.
    "Content-Security-Policy": "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
    "img-src blob: data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}


def is_loopback(host: str) -> bool:
    """Whether ``host`` is an address only this machine can reach (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:  # a host name: it may resolve to anything
        return False


def check_bind(host: str, api_key: str | None) -> None:
    """Refuse to expose the model beyond this machine without an API key."""
    if not is_loopback(host) and not api_key:
        raise CifarkitError(
            f"--host {host} makes the model reachable from other machines: give it an API key "
            f"with --api-key KEY or ${API_KEY_ENV} (clients then send 'Authorization: Bearer KEY'), "
            "or keep the default --host 127.0.0.1"
        )


BEARER = HTTPBearer(auto_error=False, description="the server's API key, when it was started with one")


def api_key_dependency(api_key: str | None):
    """A FastAPI dependency that lets a request through only with ``Authorization: Bearer api_key`` (if set)."""

    async def require_api_key(credentials: Annotated[HTTPAuthorizationCredentials | None, Security(BEARER)]) -> None:
        if api_key is None:
            return
        given = credentials.credentials if credentials else ""
        if not secrets.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(
                401,
                "missing or wrong API key: send the header 'Authorization: Bearer KEY' "
                "with the key the server was started with",
                headers={"WWW-Authenticate": "Bearer"},
            )

    return require_api_key
