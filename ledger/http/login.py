"""Signing in to the web page: a bearer token, checked once, becomes an HttpOnly cookie for ``/ui``.

A browser's EventSource sends no Authorization header, and a token in a URL ends up in logs and
history, so ``POST /ui/login`` takes the token in its body, verifies it with the server's token
verifier, and sets a cookie that names the principal and an expiry, signed with HMAC-SHA256. The
cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and
scoped to ``/ui``; it stands for the principal on the web page's API only, never on ``/mcp``. Servers
that share ``LEDGER_REQUEST_STATE_KEY`` accept each other's cookies; without it the key is per process.
Each cookie names a session of its own, which ``POST /ui/logout`` ends on every server through the log
(``ledger.kafka.signouts``).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from typing import NamedTuple

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from mcp.server.auth.provider import AccessToken, TokenVerifier
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError
from starlette.requests import HTTPConnection

from ledger.http.oauth import IssuerUnavailable
from ledger.kafka.signouts import SignOuts
from ledger.settings import WEB_SESSION_S

log = logging.getLogger(__name__)

COOKIE = "ledger_ui"
COOKIE_PATH = "/ui"
UI_SESSION_TOKEN = "ui-session"  # what stands for the token in a cookie-authenticated request


class WebSession(NamedTuple):
    principal: str
    session_id: str
    expires: int


class WebSessions:
    """Issues signed session cookies and reads them back; a session signed out on any server is over."""

    def __init__(self, shared_key: str | None, sign_outs: SignOuts) -> None:
        secret = shared_key.encode() if shared_key else os.urandom(32)
        self._key = hashlib.sha256(b"ledger web sessions\0" + secret).digest()
        self._sign_outs = sign_outs

    def issue(self, principal: str, now: float | None = None) -> str:
        expires = int((now or time.time()) + WEB_SESSION_S)
        claims = json.dumps({"p": principal, "s": secrets.token_urlsafe(16), "exp": expires}, separators=(",", ":"))
        body = _b64(claims.encode())
        return f"{body}.{self._sign(body)}"

    def session(self, cookie: str, now: float | None = None) -> WebSession | None:
        """The session a cookie stands for, or None for a forged, expired or signed-out one."""
        body, _, signature = cookie.partition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
            session = WebSession(claims["p"], claims["s"], claims["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        if not isinstance(session.principal, str) or not isinstance(session.session_id, str) or \
                not isinstance(session.expires, int) or session.expires < (now or time.time()):
            return None
        return None if self._sign_outs.ended(session.session_id) else session

    async def sign_out(self, cookie: str) -> None:
        """End the cookie's session on every server (nothing for a cookie that stands for none)."""
        if (session := self.session(cookie)) is not None:
            await self._sign_outs.record(session.session_id, session.expires)

    def _sign(self, body: str) -> str:
        return _b64(hmac.new(self._key, body.encode(), hashlib.sha256).digest())


class BearerOrSession(AuthenticationBackend):
    """A bearer token anywhere; on ``/ui`` only, a signed session cookie as well, unless signed out."""

    def __init__(self, verifier: TokenVerifier, sessions: WebSessions) -> None:
        self._bearer = BearerAuthBackend(verifier)
        self._sessions = sessions

    async def authenticate(self, conn: HTTPConnection):  # type: ignore[no-untyped-def]
        if "authorization" in conn.headers or not conn.url.path.startswith(COOKIE_PATH):
            try:
                return await self._bearer.authenticate(conn)
            except IssuerUnavailable as exc:
                log.warning("no token can be checked now: %s", exc)
                raise AuthenticationError(f"the token issuer cannot be reached: {exc}") from None
        cookie = conn.cookies.get(COOKIE)
        session = self._sessions.session(cookie) if cookie else None
        if session is None:
            return None
        return AuthCredentials([]), AuthenticatedUser(AccessToken(
            token=UI_SESSION_TOKEN, client_id=session.principal, subject=session.principal, scopes=[],
            expires_at=session.expires))


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
