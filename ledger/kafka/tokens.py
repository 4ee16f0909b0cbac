"""Access tokens from an OAuth authorization server, for SASL OAUTHBEARER: the client credentials
grant at a token endpoint (a service's own login, no person), kept until shortly before it expires;
or a token provider of the user's own (``sasl.oauthbearer.token.provider``).

Also where an issuer publishes its metadata (RFC 8414, OpenID discovery), which the brokers of the
secured local cluster and a server's token checks (``ledger.http.oauth``) read.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from typing import Any

import httpx2 as httpx
from aiokafka.abc import AbstractTokenProvider

HTTP_TIMEOUT_S = 5
RENEW_AT = 0.8  # of a token's lifetime: a new token is fetched before the broker could see the old one expire


class TokenUnavailable(ConnectionError):
    """No OAUTHBEARER token can be had: the token endpoint refuses the credentials or cannot be reached."""


class ProviderError(ValueError):
    """``sasl.oauthbearer.token.provider`` does not name a token provider."""


class ClientCredentials(AbstractTokenProvider):
    """Tokens by the client credentials grant (RFC 6749 §4.4), the client authenticated with HTTP Basic."""

    def __init__(self, token_url: str, client_id: str, client_secret: str, scope: str | None = None) -> None:
        self.token_url = token_url
        self.client_id = client_id
        self._secret = client_secret
        self._scope = scope
        self._token: str | None = None
        self._renew_at = 0.0
        self._locks: dict[asyncio.AbstractEventLoop, asyncio.Lock] = {}

    def __repr__(self) -> str:
        return f"ClientCredentials({self.token_url!r}, {self.client_id!r})"

    async def token(self) -> str:
        if self._token is not None and time.monotonic() < self._renew_at:
            return self._token
        lock = self._locks.setdefault(asyncio.get_running_loop(), asyncio.Lock())
        async with lock:  # the connections a client opens at once share one fetch
            if self._token is None or time.monotonic() >= self._renew_at:
                self._token, lifetime = await self._fetch()
                self._renew_at = time.monotonic() + RENEW_AT * lifetime
        return self._token

    async def _fetch(self) -> tuple[str, float]:
        form = {"grant_type": "client_credentials", **({"scope": self._scope} if self._scope else {})}
        try:
            async with httpx.AsyncClient(timeout=HTTP_TIMEOUT_S) as http:
                response = await http.post(self.token_url, data=form, auth=(self.client_id, self._secret))
        except httpx.HTTPError as exc:
            raise TokenUnavailable(f"cannot reach the token endpoint {self.token_url} "
                                   f"(sasl.oauthbearer.token.endpoint.url): {exc or type(exc).__name__}") from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict) or not isinstance(body.get("access_token"), str):
            error = body.get("error", f"HTTP {response.status_code}") if isinstance(body, dict) else response.status_code
            raise TokenUnavailable(f"the token endpoint {self.token_url} refused the client credentials of "
                                   f"{self.client_id} ({error}): check sasl.oauthbearer.client.id and "
                                   "sasl.oauthbearer.client.secret")
        lifetime = body.get("expires_in")
        return body["access_token"], float(lifetime) if isinstance(lifetime, (int, float)) and lifetime > 0 else 300.0


def load_provider(spec: str) -> AbstractTokenProvider:
    """The provider ``module:attribute`` names: an ``AbstractTokenProvider``, or a class or function
    that makes one when called without arguments."""
    module_name, _, attribute = spec.partition(":")
    if not module_name or not attribute:
        raise ProviderError(f"sasl.oauthbearer.token.provider must be module:attribute, got {spec!r}")
    try:
        found: Any = getattr(importlib.import_module(module_name), attribute)
    except (ImportError, AttributeError) as exc:
        raise ProviderError(f"sasl.oauthbearer.token.provider {spec}: {exc}") from None
    try:
        provider = found() if callable(found) and not isinstance(found, AbstractTokenProvider) else found
    except Exception as exc:  # the user's code: whatever it raises is said in one sentence
        raise ProviderError(f"sasl.oauthbearer.token.provider {spec} failed: {exc}") from None
    if not isinstance(provider, AbstractTokenProvider):
        raise ProviderError(f"sasl.oauthbearer.token.provider {spec} is not an aiokafka AbstractTokenProvider "
                            "(nor makes one)")
    return provider


def metadata_urls(issuer: str) -> list[str]:
    """Where ``issuer`` publishes its metadata: RFC 8414 puts the well-known part before the issuer's
    path, OpenID discovery after it."""
    scheme, _, rest = issuer.partition("://")
    host, slash, path = rest.partition("/")
    path = (slash + path).rstrip("/")
    return [f"{scheme}://{host}/.well-known/oauth-authorization-server{path}",
            f"{issuer.rstrip('/')}/.well-known/openid-configuration"]
