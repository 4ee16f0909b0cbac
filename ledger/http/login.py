"""Signing in to the web page: a bearer token, checked once, becomes an HttpOnly cookie for ``/ui``.

A browser's EventSource sends no Authorization header, and a token in a URL ends up in logs and
history, so ``POST /ui/login`` takes the token in its body, verifies it with the server's token
verifier, and sets a cookie that names the principal and an expiry, signed with HMAC-SHA256. The
cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and
scoped to ``/ui``; it stands for the principal on the web page's API only, never on ``/mcp``. Servers
that share ``LEDGER_REQUEST_STATE_KEY`` accept each other's cookies; without it the key is per process.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import os
import time

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from mcp.server.auth.provider import AccessToken, TokenVerifier
from starlette.authentication import AuthCredentials, AuthenticationBackend
from starlette.requests import HTTPConnection

COOKIE = "ledger_ui"
COOKIE_PATH = "/ui"
SESSION_S = 8 * 3600
UI_SESSION_TOKEN = "ui-session"  # what stands for the token in a cookie-authenticated request


class SessionSigner:
    def __init__(self, shared_key: str | None) -> None:
        secret = shared_key.encode() if shared_key else os.urandom(32)
        self._key = hashlib.sha256(b"ledger web sessions\0" + secret).digest()

    def issue(self, principal: str, now: float | None = None) -> str:
        claims = json.dumps({"p": principal, "exp": int((now or time.time()) + SESSION_S)}, separators=(",", ":"))
        body = _b64(claims.encode())
        return f"{body}.{self._sign(body)}"

    def principal(self, cookie: str, now: float | None = None) -> tuple[str, int] | None:
        """The principal a cookie stands for and its expiry, or None for a forged or expired one."""
        body, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            principal, expires = claims["p"], claims["exp"]
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(principal, str) or not isinstance(expires, int) or expires < (now or time.time()):
            return None
        return principal, expires

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


class BearerOrSession(AuthenticationBackend):
    """A bearer token anywhere; on ``/ui`` only, a signed session cookie as well."""

    def __init__(self, verifier: TokenVerifier, signer: SessionSigner) -> None:
        self._bearer = BearerAuthBackend(verifier)
        self._signer = signer

    async def authenticate(self, conn: HTTPConnection):  # type: ignore[no-untyped-def]
        if "authorization" in conn.headers or not conn.url.path.startswith(COOKIE_PATH):
            return await self._bearer.authenticate(conn)
        cookie = conn.cookies.get(COOKIE)
        signed = self._signer.principal(cookie) if cookie else None
        if signed is None:
            return None
        principal, expires = signed
        return AuthCredentials([]), AuthenticatedUser(AccessToken(
            token=UI_SESSION_TOKEN, client_id=principal, subject=principal, scopes=[], expires_at=expires))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
