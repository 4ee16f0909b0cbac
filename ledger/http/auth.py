"""Who is asking: bearer tokens through the mcp SDK's token verification hook.

In production ``LEDGER_OAUTH_ISSUER`` makes the server an OAuth 2.1 resource server (``ledger.http.oauth``
checks the tokens): a request without a valid token gets 401 with a ``WWW-Authenticate`` challenge naming
the server's Protected Resource Metadata (RFC 9728), which names the issuer, so a client such as the MCP
SDK's OAuth client finds where to sign in; a token without a required scope gets 403
``insufficient_scope``. For development, ``LEDGER_TOKENS_FILE`` names a file of ``TOKEN PRINCIPAL``
lines (``#`` starts a comment). Any other ``TokenVerifier`` can be passed to ``create_app``. Every task
belongs to the principal that created it (``ledger.mcp.wire.principal_of_token``).

Without tokens every client is the same (anonymous) principal, so a server without them serves
only on loopback unless ``LEDGER_ALLOW_UNAUTHENTICATED`` says otherwise.
"""

from __future__ import annotations

import hmac
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mcp.server.auth.middleware.bearer_auth import AuthenticatedUser
from mcp.server.auth.provider import AccessToken, TokenVerifier
from mcp.server.auth.routes import build_resource_metadata_url, create_protected_resource_routes
from pydantic import AnyHttpUrl
from starlette.requests import HTTPConnection
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from ledger.http.oauth import OAuthVerifier
from ledger.settings import Settings, SettingsError

LOOPBACK = ("127.0.0.1", "localhost", "::1")


class StaticTokens:
    """Tokens from a file: ``TOKEN PRINCIPAL`` per line."""

    def __init__(self, tokens: dict[str, str]) -> None:
        self._tokens = tokens

    @classmethod
    def from_file(cls, path: Path) -> StaticTokens:
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except OSError as exc:
            raise SettingsError(f"LEDGER_TOKENS_FILE: cannot read {path}: {exc.strerror}") from None
        tokens: dict[str, str] = {}
        for number, line in enumerate(lines, 1):
            words = line.split("#", 1)[0].split()
            if not words:
                continue
            if len(words) != 2:
                raise SettingsError(f"LEDGER_TOKENS_FILE {path}:{number}: expected 'TOKEN PRINCIPAL'")
            tokens[words[0]] = words[1]
        if not tokens:
            raise SettingsError(f"LEDGER_TOKENS_FILE {path} holds no tokens")
        return cls(tokens)

    async def verify_token(self, token: str) -> AccessToken | None:
        for known, principal in self._tokens.items():
            if hmac.compare_digest(known.encode(), token.encode()):
                return AccessToken(token=token, client_id=principal, subject=principal, scopes=[])
        return None


@dataclass(frozen=True, slots=True)
class ProtectedResource:
    """This server as an OAuth protected resource: the URL tokens are issued for, and who issues them."""

    url: str
    issuer: str
    scopes: tuple[str, ...]

    @property
    def metadata_url(self) -> str:
        return str(build_resource_metadata_url(AnyHttpUrl(self.url)))

    def routes(self) -> list[Route]:
        """The metadata (RFC 9728), where the resource's path puts it and at the root (older clients)."""
        # Strings, not parsed URLs: a parsed issuer gains a trailing slash and then no longer equals
        # the issuer its own metadata names, which clients compare.
        route, = create_protected_resource_routes(resource_url=self.url, authorization_servers=[self.issuer],  # type: ignore[arg-type]
                                                  scopes_supported=list(self.scopes) or None)
        root = "/.well-known/oauth-protected-resource"
        return [route] if route.path == root else [route, Route(root, route.endpoint, methods=["GET", "OPTIONS"])]


def protected_resource(settings: Settings, host: str, port: int | None) -> ProtectedResource | None:
    """What ``LEDGER_OAUTH_*`` makes of this server, or None without an issuer."""
    if settings.oauth_issuer is None:
        return None
    url = settings.oauth_audience
    if url is None:
        if host in ("0.0.0.0", "::", "") or port is None:
            raise SettingsError("set LEDGER_OAUTH_AUDIENCE to the URL clients reach /mcp at (e.g. "
                                "https://mcp.example.com/mcp): tokens are issued for it")
        url = f"http://{f'[{host}]' if ':' in host else host}:{port}/mcp"
    return ProtectedResource(url, settings.oauth_issuer, tuple(settings.oauth_scopes.split()))


def token_verifier(settings: Settings, resource: ProtectedResource | None) -> TokenVerifier | None:
    if resource is not None:
        return OAuthVerifier(resource.issuer, resource.url, client_id=settings.oauth_client_id,
                             client_secret=settings.oauth_client_secret)
    return StaticTokens.from_file(Path(settings.tokens_file)) if settings.tokens_file else None


def issuer_unavailable(conn: HTTPConnection, exc: Exception) -> Response:
    """503 while the issuer's keys cannot be had: the token may well be good, so no 401 sends the
    client off to sign in again."""
    return JSONResponse({"error": "temporarily_unavailable", "error_description": str(exc)}, status_code=503,
                        headers={"Retry-After": "5"})


def missing_scopes(required: tuple[str, ...], granted: list[str]) -> str:
    """The required scopes a token was not granted, space-separated ('' when none is missing)."""
    return " ".join(scope for scope in required if scope not in granted)


class RequireBearer:
    """``/mcp`` only for a request whose bearer token was accepted and holds the required scopes.

    Otherwise 401 (RFC 6750: with ``error="invalid_token"`` only when a token was sent) or 403
    ``insufficient_scope``, each with a challenge naming the scopes and, on a resource server, its
    metadata: what a client needs to get a token that will do.
    """

    def __init__(self, app: Any, resource: ProtectedResource | None) -> None:
        self.app = app
        self.scopes = resource.scopes if resource else ()
        self.challenge = [f'resource_metadata="{resource.metadata_url}"'] if resource else []
        if self.scopes:
            self.challenge.append(f'scope="{" ".join(self.scopes)}"')

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope["path"] not in ("/mcp", "/mcp/"):
            await self.app(scope, receive, send)
            return
        user = scope.get("user")
        if not isinstance(user, AuthenticatedUser):
            sent = any(name == b"authorization" for name, _ in scope["headers"])
            await self._refuse(send, 401, "invalid_token" if sent else None, "a valid bearer token is required")
        elif missing := missing_scopes(self.scopes, user.scopes):
            await self._refuse(send, 403, "insufficient_scope", f"the token lacks the scope {missing}")
        else:
            await self.app(scope, receive, send)

    async def _refuse(self, send: Any, status: int, error: str | None, description: str) -> None:
        params = [f'error="{error}"', f'error_description="{description}"'] if error else []
        body = json.dumps({"error": error or "unauthorized", "error_description": description}).encode()
        await send({"type": "http.response.start", "status": status, "headers": [
            (b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", ("Bearer " + ", ".join(params + self.challenge)).strip().encode())]})
        await send({"type": "http.response.body", "body": body})


def check_exposure(settings: Settings, host: str, verifier: TokenVerifier | None) -> None:
    """Refuse to serve every task to anyone on a non-loopback address without being told to."""
    allowed = settings.allow_unauthenticated.strip().lower() in ("1", "true", "yes")
    if verifier is None and host not in LOOPBACK and not allowed:
        raise SettingsError(f"refusing to serve without authentication on {host}: set LEDGER_OAUTH_ISSUER or "
                            "LEDGER_TOKENS_FILE (or pass a token verifier), or LEDGER_ALLOW_UNAUTHENTICATED=1 to "
                            "serve anyway")
