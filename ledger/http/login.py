"""Signing in to the web page: a bearer token, checked once, becomes an HttpOnly cookie for ``/ui``.

A browser's EventSource sends no Authorization header, and a token in a URL ends up in logs and
history, so ``POST /ui/login`` takes the token in its body, verifies it with the server's token
verifier, and sets a cookie that names the principal and an expiry, signed with HMAC-SHA256. The
cookie is ``HttpOnly`` (no script reads it), ``SameSite=Strict`` (no other site's page sends it) and
scoped to ``/ui``; it stands for the principal on the web page's API only, never on ``/mcp``. Servers
that share ``LEDGER_REQUEST_STATE_KEY`` accept each other's cookies; without it the key is per process.
Each cookie names a session of its own, which ``POST /ui/logout`` ends on every server through the log
(``ledger.kafka.signouts``). On a server of an OAuth issuer with a client of its own there, a person
signs in at the issuer instead (``SignInAtIssuer``), and gets the same cookie.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import logging
import os
import secrets
import time
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser, BearerAuthBackend
from mcp.server.auth.provider import AccessToken, TokenVerifier
from starlette.authentication import AuthCredentials, AuthenticationBackend, AuthenticationError
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, RedirectResponse, Response

from ledger.http.auth import ProtectedResource, missing_scopes
from ledger.http.oauth import IssuerUnavailable, OAuthVerifier
from ledger.kafka.signouts import SignOuts
from ledger.mcp.wire import principal_of_token
from ledger.settings import WEB_SESSION_S

log = logging.getLogger(__name__)

COOKIE = "ledger_ui"
COOKIE_PATH = "/ui"
UI_SESSION_TOKEN = "ui-session"  # what stands for the token in a cookie-authenticated request
FLOW_COOKIE = "ledger_ui_flow"  # a sign-in at the issuer under way: its state and PKCE verifier
FLOW_PATH = "/ui/login"
FLOW_S = 600


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
        return self.seal({"p": principal, "s": secrets.token_urlsafe(16), "exp": expires})

    def session(self, cookie: str, now: float | None = None) -> WebSession | None:
        """The session a cookie stands for, or None for a forged, expired or signed-out one."""
        claims = self.opened(cookie, now)
        try:
            session = WebSession(claims["p"], claims["s"], claims["exp"]) if claims else None
        except KeyError:
            return None
        if session is None or not isinstance(session.principal, str) or not isinstance(session.session_id, str):
            return None
        return None if self._sign_outs.ended(session.session_id) else session

    def seal(self, claims: dict[str, Any]) -> str:
        """``claims`` (with an ``exp``) as a signed cookie value: readable, but not forged or altered."""
        body = _b64(json.dumps(claims, separators=(",", ":")).encode())
        return f"{body}.{self._sign(body)}"

    def opened(self, value: str, now: float | None = None) -> dict[str, Any] | None:
        """The claims ``seal`` made into ``value``, or None for a forged or expired one."""
        body, _, signature = value.partition(".")
        if not hmac.compare_digest(signature, self._sign(body)):
            return None
        try:
            claims = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
        except ValueError:
            return None
        if not isinstance(claims, dict) or not isinstance(claims.get("exp"), int) or claims["exp"] < (now or time.time()):
            return None
        return claims

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
                raise AuthenticationError(str(exc)) from None
        cookie = conn.cookies.get(COOKIE)
        session = self._sessions.session(cookie) if cookie else None
        if session is None:
            return None
        return AuthCredentials([]), AuthenticatedUser(AccessToken(
            token=UI_SESSION_TOKEN, client_id=session.principal, subject=session.principal, scopes=[],
            expires_at=session.expires))


class SignInAtIssuer:
    """Signing a person in to the web page at the OAuth issuer: the authorization code flow with PKCE
    (RFC 7636), the server a confidential client there (``LEDGER_OAUTH_CLIENT_ID``).

    ``GET /ui/login/start`` sends the browser to the issuer with a fresh ``state`` and code challenge,
    kept in a signed cookie for ten minutes (``SameSite=Lax``: the issuer's redirect back is a
    navigation from another site); ``GET /ui/login/callback`` checks the state (and the issuer, RFC
    9207), redeems the code for an access token for this server, checks it as every token is, and sets
    the session cookie, as ``POST /ui/login`` does for a pasted token.
    """

    def __init__(self, verifier: OAuthVerifier, sessions: WebSessions, resource: ProtectedResource) -> None:
        self._verifier = verifier
        self._sessions = sessions
        self._resource = resource
        scheme, netloc, *_ = urlsplit(resource.url)
        self.redirect_uri = f"{scheme}://{netloc}{FLOW_PATH}/callback"

    async def start(self, request: Request) -> Response:
        state, code_verifier = secrets.token_urlsafe(24), secrets.token_urlsafe(48)
        challenge = _b64(hashlib.sha256(code_verifier.encode()).digest())
        try:
            url = await self._verifier.authorization_url(self.redirect_uri, state, challenge, self._resource.scopes,
                                                         request.query_params.get("login_hint"))
        except IssuerUnavailable as exc:
            return _page(f"Not now, {exc}. Try again shortly.", 503)
        response = RedirectResponse(url, status_code=303)
        flow = self._sessions.seal({"state": state, "verifier": code_verifier, "exp": int(time.time()) + FLOW_S})
        response.set_cookie(FLOW_COOKIE, flow, max_age=FLOW_S, path=FLOW_PATH, httponly=True, samesite="lax",
                            secure=request.url.scheme == "https")
        return response

    async def callback(self, request: Request) -> Response:
        flow = self._sessions.opened(request.cookies.get(FLOW_COOKIE, ""))
        answer = request.query_params
        if flow is None or not hmac.compare_digest(str(flow.get("state")), answer.get("state", "")):
            return _page("This sign-in was not started on this page, or took more than ten minutes: start again.", 400)
        if "error" in answer:
            return _page(f"The issuer did not sign you in ({answer['error']}).", 400)
        if answer.get("iss", self._verifier.issuer) != self._verifier.issuer or "code" not in answer:
            return _page("The answer did not come from this server's issuer: start again.", 400)
        try:
            access = await self._verifier.redeem(answer["code"], str(flow.get("verifier")), self.redirect_uri)
        except IssuerUnavailable as exc:
            return _page(f"Not now, {exc}. Try again shortly.", 503)
        if access is None:
            return _page("The issuer's token is not good here: start again.", 401)
        if missing := missing_scopes(self._resource.scopes, access.scopes):
            return _page(f"Your sign-in was not granted {missing}, which this server requires.", 403)
        response = RedirectResponse("/ui", status_code=303)
        response.set_cookie(COOKIE, self._sessions.issue(principal_of_token(access)), max_age=WEB_SESSION_S,
                            path=COOKIE_PATH, httponly=True, samesite="strict", secure=request.url.scheme == "https")
        response.delete_cookie(FLOW_COOKIE, path=FLOW_PATH)
        return response


def _page(message: str, status: int) -> HTMLResponse:
    return HTMLResponse(f'<!doctype html><title>ledger: sign in</title><p>{html.escape(message)}</p>'
                        f'<p><a href="/ui">Back to the page</a></p>', status_code=status)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")
