"""Access tokens from an OAuth 2.1 authorization server (``LEDGER_OAUTH_ISSUER``), checked for this server.

The issuer's metadata (RFC 8414, else OpenID discovery) names its key set (JWKS), which is fetched once
and kept: fetched again after ``KEYS_TTL_S``, or for a key id the kept set lacks, at most once per
``COOLDOWN_S`` so that made-up key ids cannot turn each request into a fetch. A JWT access token
(RFC 9068) is checked by PyJWT: signed by one of the issuer's keys with an algorithm of ``ALGORITHMS``
(asymmetric only: no ``none``, no HMAC keyed with a public key), ``iss`` the issuer, ``aud`` this
server's URL (RFC 8707: a token issued for another resource is refused), ``exp`` and ``nbf`` with
``LEEWAY_S``. An opaque token is asked about at the issuer's introspection endpoint (RFC 7662) when the
server has client credentials there (``LEDGER_OAUTH_CLIENT_ID``); the answer is kept briefly.

A token's principal is its issuer and subject together (``ledger.mcp.wire.principal_of_token``), so two
issuers' subjects never name the same principal.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections import OrderedDict
from typing import Any
from urllib.parse import urlencode

import httpx2 as httpx
import jwt
from mcp.server.auth.provider import AccessToken

from ledger.kafka.tokens import metadata_urls

log = logging.getLogger(__name__)

ALGORITHMS = frozenset({"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"})
# RFC 9068 types access tokens "at+jwt"; issuers that predate it write "JWT". An ID token ("JWT" too)
# names its client as audience, never this server, so the audience check is what refuses one.
TOKEN_TYPES = frozenset({"at+jwt", "application/at+jwt", "jwt"})
LEEWAY_S = 30
KEYS_TTL_S = 300
COOLDOWN_S = 10
HTTP_TIMEOUT_S = 5
# A token's verdict is kept this long (never past its expiry): a client sends the same token with every
# request, and checking a signature again costs more than the rest of a poll's work.
VERDICT_TTL_S = 60
VERDICTS_KEPT = 4096


class IssuerUnavailable(Exception):
    """The issuer's metadata or keys cannot be had, so no token can be checked now; said in one
    sentence wherever it shows (a 503's description, the web page, the log)."""

    def __str__(self) -> str:
        return f"the token issuer cannot be reached: {self.args[0]}"


class OAuthVerifier:
    """The ``TokenVerifier`` of a resource server that accepts one issuer's tokens for one audience."""

    def __init__(self, issuer: str, audience: str, *, client_id: str | None = None,
                 client_secret: str | None = None) -> None:
        self.issuer = issuer
        self.audience = audience
        # A client may write the resource with or without a trailing slash (the SDK compares both ways).
        self._audiences = sorted({audience, audience.rstrip("/"), audience.rstrip("/") + "/"})
        self._credentials = (client_id, client_secret) if client_id and client_secret else None
        self._http: httpx.AsyncClient | None = None
        self._metadata: dict[str, Any] | None = None
        self._jwks: dict[str, Any] | None = None
        self._keys: dict[tuple[str | None, str], jwt.PyJWK] = {}
        self._fetched_at = float("-inf")
        self._unknown_kid_fetched_at = float("-inf")
        self._failed_at = float("-inf")
        self._failure: IssuerUnavailable | None = None
        self._lock = asyncio.Lock()
        self._verdicts: OrderedDict[bytes, tuple[AccessToken | None, float]] = OrderedDict()

    async def verify_token(self, token: str) -> AccessToken | None:
        digest = hashlib.sha256(token.encode()).digest()
        if (kept := self._verdicts.get(digest)) is not None and kept[1] > time.monotonic():
            return kept[0]
        if token.count(".") != 2:
            return self._keep(digest, await self._introspect(token)) if self._credentials else None
        access = await self._checked_signature(token)
        return self._keep(digest, access) if access is not None else None

    async def _checked_signature(self, token: str) -> AccessToken | None:
        try:
            header = jwt.get_unverified_header(token)
        except jwt.InvalidTokenError as exc:
            log.info("access token refused: %s", exc)
            return None
        alg, kid, typ = header.get("alg"), header.get("kid"), str(header.get("typ", "at+jwt")).lower()
        if alg not in ALGORITHMS or typ not in TOKEN_TYPES:
            log.info("access token refused: alg %r, typ %r", alg, header.get("typ"))
            return None
        key = await self._key(kid if isinstance(kid, str) else None, alg)
        if key is None:
            log.info("access token refused: no key %r of the issuer signs %s", kid, alg)
            return None
        try:
            claims = jwt.decode(token, key, algorithms=[alg], audience=self._audiences, issuer=self.issuer,
                                leeway=LEEWAY_S, options={"require": ["exp", "iss", "aud", "sub"]})
        except jwt.InvalidTokenError as exc:
            log.info("access token refused: %s", exc)
            return None
        return _access_token(token, claims, self.audience)

    @property
    def signs_people_in(self) -> bool:
        """Whether the server has a client of its own at the issuer, to sign people in to its web page."""
        return self._credentials is not None

    async def authorization_url(self, redirect_uri: str, state: str, challenge: str, scopes: tuple[str, ...],
                                login_hint: str | None = None) -> str:
        """Where to send a person's browser to sign in (authorization code with PKCE, RFC 7636), for a
        token for this server (RFC 8707)."""
        endpoint = _required_url(await self._issuer_metadata(), "authorization_endpoint", self.issuer)
        query = {"response_type": "code", "client_id": self._credentials[0], "redirect_uri": redirect_uri,
                 "state": state, "code_challenge": challenge, "code_challenge_method": "S256",
                 "resource": self.audience, **({"scope": " ".join(scopes)} if scopes else {}),
                 **({"login_hint": login_hint} if login_hint else {})}
        return f"{endpoint}{'&' if '?' in endpoint else '?'}{urlencode(query)}"

    async def redeem(self, code: str, code_verifier: str, redirect_uri: str) -> AccessToken | None:
        """The access token an authorization code stands for, checked as every token is; None when the
        issuer refuses the code or the token is not good here."""
        endpoint = _required_url(await self._issuer_metadata(), "token_endpoint", self.issuer)
        response = await self._client_request("POST", endpoint, auth=self._credentials, data={
            "grant_type": "authorization_code", "code": code, "code_verifier": code_verifier,
            "redirect_uri": redirect_uri, "resource": self.audience})
        try:
            token = response.json().get("access_token") if response.status_code == 200 else None
        except (ValueError, AttributeError):
            token = None
        if not isinstance(token, str):
            log.info("the issuer refused an authorization code: HTTP %d", response.status_code)
            return None
        return await self.verify_token(token)

    async def aclose(self) -> None:
        if self._http is not None:
            await self._http.aclose()

    async def _key(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if self._jwks is None or time.monotonic() - self._fetched_at > KEYS_TTL_S:
            await self._fetch_keys(self._fetched_at)
        key = self._find(kid, alg)
        if key is None and kid is not None:
            # A key the issuer added since (a rotation), fetched at most once per COOLDOWN_S; a request
            # that finds that fetch under way waits for it rather than being refused meanwhile.
            now = time.monotonic()
            if self._lock.locked() or now - self._unknown_kid_fetched_at > COOLDOWN_S:
                self._unknown_kid_fetched_at = now
                await self._fetch_keys(self._fetched_at)
                key = self._find(kid, alg)
        return key

    def _find(self, kid: str | None, alg: str) -> jwt.PyJWK | None:
        if (kid, alg) in self._keys:
            return self._keys[kid, alg]
        for jwk in (self._jwks or {}).get("keys", ()):
            if not isinstance(jwk, dict) or jwk.get("use", "sig") != "sig" or jwk.get("alg", alg) != alg:
                continue
            if kid is not None and jwk.get("kid") != kid:
                continue
            try:
                key = jwt.PyJWK(jwk, algorithm=alg)  # bound to the token's (allowed) algorithm
            except jwt.PyJWTError:
                continue  # a key of another type than alg signs with
            self._keys[kid, alg] = key
            return key
        return None

    async def _fetch_keys(self, seen_at: float) -> None:
        """Fetch the key set, unless another request did since ``seen_at`` (the fetch time this one saw)."""
        async with self._lock:
            now = time.monotonic()
            if self._fetched_at != seen_at:
                return
            if self._jwks is None:
                self._fail_again_if_recent()
            try:
                jwks = await self._get_json(_required_url(await self._issuer_metadata(), "jwks_uri", self.issuer))
                if not isinstance(jwks.get("keys"), list):
                    raise IssuerUnavailable(f"the key set of {self.issuer} lists no keys")
            except IssuerUnavailable as exc:
                if self._jwks is None:
                    raise self._failed(exc) from None
                log.warning("keeping the keys of %s fetched before: %s", self.issuer, exc)
                self._fetched_at = now
                return
            self._jwks, self._keys, self._fetched_at = jwks, {}, now
            self._verdicts.clear()  # a token signed by a key the issuer dropped is good no longer

    async def _issuer_metadata(self) -> dict[str, Any]:
        if self._metadata is not None:
            return self._metadata
        self._fail_again_if_recent()
        problems = []
        for url in metadata_urls(self.issuer):
            try:
                metadata = await self._get_json(url)
            except IssuerUnavailable as exc:
                problems.append(exc.args[0])
                continue
            if metadata.get("issuer") != self.issuer:
                problems.append(f"{url} names the issuer {metadata.get('issuer')!r}, not {self.issuer!r}")
                continue
            self._metadata = metadata
            return metadata
        raise self._failed(IssuerUnavailable("; ".join(problems)))

    def _failed(self, failure: IssuerUnavailable) -> IssuerUnavailable:
        self._failure, self._failed_at = failure, time.monotonic()
        return failure

    def _fail_again_if_recent(self) -> None:
        """Within ``COOLDOWN_S`` of failing to reach the issuer, fail again at once instead of asking it."""
        if self._failure is not None and time.monotonic() - self._failed_at < COOLDOWN_S:
            raise self._failure

    async def _get_json(self, url: str) -> dict[str, Any]:
        return _json_object(url, await self._client_request("GET", url))

    async def _client_request(self, method: str, url: str, **kwargs: Any) -> httpx.Response:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=HTTP_TIMEOUT_S, follow_redirects=False)
        try:
            return await self._http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            raise IssuerUnavailable(f"{url}: {exc or type(exc).__name__}") from None

    def _keep(self, digest: bytes, access: AccessToken | None) -> AccessToken | None:
        """Keep a verdict for ``VERDICT_TTL_S``, or until the token expires when that is sooner."""
        now = time.monotonic()
        until = now + VERDICT_TTL_S
        if access is not None and access.expires_at is not None:
            until = min(until, now + access.expires_at - time.time())
        self._verdicts[digest] = (access, until)
        self._verdicts.move_to_end(digest)
        if len(self._verdicts) > VERDICTS_KEPT:
            self._verdicts.popitem(last=False)
        return access

    async def _introspect(self, token: str) -> AccessToken | None:
        url = _required_url(await self._issuer_metadata(), "introspection_endpoint", self.issuer)
        response = await self._client_request("POST", url, auth=self._credentials,
                                              data={"token": token, "token_type_hint": "access_token"})
        return self._introspected_token(token, _json_object(url, response))

    def _introspected_token(self, token: str, answer: dict[str, Any]) -> AccessToken | None:
        audience = answer.get("aud")
        audiences = [audience] if isinstance(audience, str) else audience if isinstance(audience, list) else []
        exp = answer.get("exp")
        if answer.get("active") is not True:
            return None
        if answer.get("iss", self.issuer) != self.issuer or not set(audiences) & set(self._audiences) or \
                not isinstance(answer.get("sub", answer.get("client_id")), str) or \
                (isinstance(exp, int) and exp + LEEWAY_S < time.time()):
            log.info("access token refused by introspection: iss %r, aud %r", answer.get("iss"), audience)
            return None
        return _access_token(token, {"iss": self.issuer, **answer}, self.audience)


def _access_token(token: str, claims: dict[str, Any], audience: str) -> AccessToken:
    """The SDK's view of a checked token; an introspected one may name a client and no subject
    (RFC 7662 makes ``sub`` optional: a service's own token)."""
    scope, subject = claims.get("scope"), claims.get("sub")
    return AccessToken(token=token, client_id=str(claims.get("client_id") or claims.get("azp") or subject),
                       scopes=scope.split() if isinstance(scope, str) else [],
                       expires_at=claims.get("exp") if isinstance(claims.get("exp"), int) else None,
                       resource=audience, subject=subject if isinstance(subject, str) else None, claims=claims)


def _required_url(metadata: dict[str, Any], name: str, issuer: str) -> str:
    url = metadata.get(name)
    if not isinstance(url, str) or not url.startswith(("https://", "http://")):
        raise IssuerUnavailable(f"the metadata of {issuer} names no {name}")
    return url


def _json_object(url: str, response: httpx.Response) -> dict[str, Any]:
    if response.status_code != 200:
        raise IssuerUnavailable(f"{url} answered {response.status_code}")
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        raise IssuerUnavailable(f"{url} answered with no JSON object")
    return body
