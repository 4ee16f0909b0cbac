"""A real OpenID provider on loopback (``tests/oidc/provider.mjs``), and a person signing in through
the MCP SDK's own OAuth client: the authorization code + PKCE flow with login and consent scripted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urljoin, urlsplit

import httpx2 as httpx
import pytest
from aiokafka.abc import AbstractTokenProvider
from mcp.client.auth import AuthorizationCodeResult, OAuthClientProvider, OAuthFlowError
from mcp.shared.auth import OAuthClientInformationFull, OAuthClientMetadata, OAuthToken
from pydantic import AnyUrl

from tests.support.spawn import wait_for_line

PACKAGE = Path(__file__).resolve().parents[1] / "oidc"
REDIRECT_URI = "http://127.0.0.1:1/callback"  # never listened on: the code is read from the Location header
SERVICE_CLIENT = ("ledger-service", "ledger-service-secret")


def provider_installed() -> None:
    """Skip (fail on CI, which installs it) when Node or the provider's package is missing."""
    missing = ("node is not installed" if shutil.which("node") is None else
               "the provider's package is not installed: npm ci --prefix tests/oidc"
               if not (PACKAGE / "node_modules" / "oidc-provider").is_dir() else None)
    if missing:
        if os.environ.get("CI"):
            pytest.fail(missing)
        pytest.skip(missing)


@contextmanager
def openid_provider(port: int = 0, **env: str) -> Iterator[str]:
    """The provider running on loopback (on ``port``, else a free one): its issuer URL."""
    provider_installed()
    with tempfile.TemporaryFile("w+") as said:  # its own warnings and errors, shown if it does not start
        process = subprocess.Popen(["node", str(PACKAGE / "provider.mjs"), "--port", str(port)], cwd=PACKAGE, stdout=subprocess.PIPE,
                                   stderr=said, text=True, env={**os.environ, **env})
        try:
            try:
                line = wait_for_line(process, "READY ", 30)[-1]
            except AssertionError as exc:
                said.seek(0)
                raise AssertionError(f"the OpenID provider did not start: {exc}; it said: {said.read()[-2000:]!r}") \
                    from None
            yield json.loads(line.split("READY ", 1)[1])["issuer"]
        finally:
            process.terminate()
            process.wait(10)


class ScriptedPerson:
    """What a person at a browser does when the client opens the authorization URL: signs in as
    ``login`` (the standard ``login_hint``) and consents; the provider scripts both pages. The browser
    stops at the client's ``/callback`` (``landed_at``) without loading it."""

    def __init__(self, login: str) -> None:
        self.login = login
        self.browser = httpx.AsyncClient(follow_redirects=False, timeout=10)  # its own cookie jar
        self.answer: dict[str, str] = {}
        self.landed_at = ""

    async def open(self, authorization_url: str) -> None:
        url = f"{authorization_url}&{urlencode({'login_hint': self.login})}"
        for _ in range(20):
            response = await self.browser.get(url)
            if not response.is_redirect:
                raise OAuthFlowError(f"unexpected page at {url}: {response.status_code} {response.text[:200]}")
            url = urljoin(str(response.url), response.headers["location"])
            if urlsplit(url).path == "/callback":  # the client's redirect URI (the provider's paths are others)
                self.landed_at = url
                self.answer = {name: values[0] for name, values in parse_qs(urlsplit(url).query).items()}
                return
        raise OAuthFlowError("the authorization took more than 20 redirects")

    async def come_back(self) -> AuthorizationCodeResult:
        if "error" in self.answer:
            raise OAuthFlowError(f"authorization refused: {self.answer['error']}")
        return AuthorizationCodeResult(code=self.answer["code"], state=self.answer.get("state"),
                                       iss=self.answer.get("iss"))


class MemoryStorage:
    """The SDK's TokenStorage: what a real client keeps on disk."""

    def __init__(self) -> None:
        self.tokens: OAuthToken | None = None
        self.client_info: OAuthClientInformationFull | None = None

    async def get_tokens(self) -> OAuthToken | None:
        return self.tokens

    async def set_tokens(self, tokens: OAuthToken) -> None:
        self.tokens = tokens

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        return self.client_info

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.client_info = client_info


@asynccontextmanager
async def signed_in_http(mcp_url: str, login: str, seen: list[str] | None = None) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client carrying the SDK's OAuth client for ``login``: the first 401 it meets starts
    discovery, registration and the authorization code flow; ``seen`` collects the requests made."""
    person = ScriptedPerson(login)
    oauth = OAuthClientProvider(
        server_url=mcp_url,
        client_metadata=OAuthClientMetadata(client_name=f"ledger tests ({login})", redirect_uris=[AnyUrl(REDIRECT_URI)],
                                            grant_types=["authorization_code", "refresh_token"],
                                            response_types=["code"], token_endpoint_auth_method="none"),
        storage=MemoryStorage(), redirect_handler=person.open, callback_handler=person.come_back)

    async def record(request: httpx.Request) -> None:
        if seen is not None:
            seen.append(f"{request.method} {request.url.copy_with(query=None)}")

    async with person.browser, httpx.AsyncClient(auth=oauth, timeout=30, event_hooks={"request": [record]}) as http:
        yield http


async def service_token(issuer: str, resource: str, scope: str = "ledger:read ledger:write") -> str:
    """An access token for ``resource`` by the client credentials grant (a service, no person)."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{issuer}/token", auth=SERVICE_CLIENT,
                                   data={"grant_type": "client_credentials", "resource": resource, "scope": scope})
        response.raise_for_status()
        return response.json()["access_token"]


async def registered_client(issuer: str, redirect_uri: str) -> tuple[str, str]:
    """A confidential client registered at the provider (RFC 7591) for the authorization code flow
    back to ``redirect_uri``: its id and secret."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{issuer}/reg", json={
            "client_name": "ledger web page", "redirect_uris": [redirect_uri], "grant_types": ["authorization_code"],
            "response_types": ["code"], "token_endpoint_auth_method": "client_secret_basic",
            "scope": "ledger:read ledger:write"})
        response.raise_for_status()
        return response.json()["client_id"], response.json()["client_secret"]


async def provider_signed(issuer: str, claims: dict[str, Any], header: dict[str, Any] | None = None) -> str:
    """A JWT signed with the provider's own key, for tokens no flow hands out (expired, ...)."""
    async with httpx.AsyncClient(timeout=10) as http:
        response = await http.post(f"{issuer}/test/sign", json={"claims": claims, "header": header or {}})
        response.raise_for_status()
        return response.json()["token"]


def claims_for(issuer: str, audience: str, sub: str = "alice", **more: Any) -> dict[str, Any]:
    now = int(time.time())
    return {"iss": issuer, "sub": sub, "aud": audience, "iat": now, "exp": now + 300, "client_id": "tests",
            "scope": "ledger:read ledger:write", **more}


class TokensForAnotherAudience(AbstractTokenProvider):
    """A Kafka client's OAUTHBEARER token provider whose tokens are for another resource than the
    brokers (the token endpoint in ``LEDGER_KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL``)."""

    async def token(self) -> str:
        issuer = os.environ["LEDGER_KAFKA_SASL_OAUTHBEARER_TOKEN_ENDPOINT_URL"].removesuffix("/token")
        return await service_token(issuer, "http://127.0.0.1:1/another-resource")
