"""Signing a person in at the terminal, for ``ledger call`` and ``ledger answer`` against a server
that is an OAuth resource server: the MCP SDK's OAuth client finds the issuer from the server's 401,
registers, and runs the authorization code flow with PKCE; the browser comes back to a listener of
this process on 127.0.0.1 (RFC 8252 §7.3). The tokens and the registration are kept, per server, in
a file only this user can read, so the next command signs in without a browser (refreshing an
expired token where the issuer gave a refresh token).
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import webbrowser
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from mcp.client.auth import OAuthClientProvider, OAuthFlowError
from mcp.client.auth.oauth2 import OAuthContext
from mcp.shared.auth import (
    AuthorizationCodeResult,
    OAuthClientInformationFull,
    OAuthClientMetadata,
    OAuthMetadata,
    OAuthToken,
)
from pydantic import AnyUrl

WAIT_FOR_BROWSER_S = 300
CALLBACK_PATH = "/callback"


def signins_file() -> Path:
    """Where the sign-ins are kept: ``$XDG_CONFIG_HOME/ledger/signins.json`` (``~/.config`` by default)."""
    base = os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config"
    return Path(base) / "ledger" / "signins.json"


class SignIns:
    """The file of kept sign-ins, one entry per server URL; written whole, readable by its owner only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def read(self) -> dict[str, Any]:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except ValueError:
            return {}  # a damaged file costs one sign-in, and is written whole again after it

    def entry(self, url: str) -> dict[str, Any]:
        return self.read().get(url, {})

    def update(self, url: str, **fields: Any) -> None:
        kept = self.read()
        kept[url] = {**kept.get(url, {}), **fields}
        self._write(kept)

    def forget(self, url: str) -> bool:
        kept = self.read()
        if kept.pop(url, None) is None:
            return False
        self._write(kept)
        return True

    def _write(self, kept: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        partial = self.path.with_suffix(".partial")
        descriptor = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w") as out:
            json.dump(kept, out, indent=1)
        os.replace(partial, self.path)


class KeptSignIn:
    """The SDK's ``TokenStorage`` for one server, backed by ``SignIns``; it also keeps what the SDK's
    storage leaves out and a new process needs to refresh a token: its expiry and the issuer's metadata
    (without them the SDK takes a kept token as unexpired, and refreshes at the MCP server's ``/token``)."""

    def __init__(self, signins: SignIns, url: str) -> None:
        self.signins = signins
        self.url = url
        self._context: OAuthContext | None = None

    def restore(self, context: OAuthContext) -> None:
        kept = self.signins.entry(self.url)
        context.token_expiry_time = kept.get("expiresAt")
        if kept.get("issuer"):
            context.oauth_metadata = OAuthMetadata.model_validate(kept["issuer"])
        self._context = context

    async def get_tokens(self) -> OAuthToken | None:
        tokens = self.signins.entry(self.url).get("tokens")
        return OAuthToken.model_validate(tokens) if tokens else None

    async def set_tokens(self, tokens: OAuthToken) -> None:
        expires_at = time.time() + tokens.expires_in if tokens.expires_in else None
        issuer = self._context.oauth_metadata if self._context is not None else None
        self.signins.update(self.url, tokens=tokens.model_dump(mode="json", exclude_none=True), expiresAt=expires_at,
                            issuer=issuer.model_dump(mode="json", exclude_none=True) if issuer else None)

    async def get_client_info(self) -> OAuthClientInformationFull | None:
        client = self.signins.entry(self.url).get("client")
        return OAuthClientInformationFull.model_validate(client) if client else None

    async def set_client_info(self, client_info: OAuthClientInformationFull) -> None:
        self.signins.update(self.url, client=client_info.model_dump(mode="json", exclude_none=True))


class BrowserReturn:
    """The listener on 127.0.0.1 the issuer sends the browser back to, with the code or the refusal."""

    def __init__(self) -> None:
        self._server: asyncio.Server | None = None
        self._answer: asyncio.Future[dict[str, str]] | None = None
        self.redirect_uri = ""

    async def open(self) -> None:
        self._answer = asyncio.get_running_loop().create_future()
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.redirect_uri = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}{CALLBACK_PATH}"

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def come_back(self) -> AuthorizationCodeResult:
        assert self._answer is not None
        try:
            answer = await asyncio.wait_for(asyncio.shield(self._answer), WAIT_FOR_BROWSER_S)
        except TimeoutError:
            raise OAuthFlowError(f"the browser did not come back within {WAIT_FOR_BROWSER_S // 60} minutes") from None
        finally:
            self._answer = asyncio.get_running_loop().create_future()  # a second sign-in waits anew
        if "error" in answer:
            raise OAuthFlowError(f"the issuer refused: {answer.get('error_description') or answer['error']}")
        return AuthorizationCodeResult(code=answer.get("code", ""), state=answer.get("state"), iss=answer.get("iss"))

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = await asyncio.wait_for(reader.readline(), 10)
            while (await asyncio.wait_for(reader.readline(), 10)).strip():
                pass  # the headers say nothing this listener needs
            target = urlsplit(request_line.decode("latin-1").split(" ")[1])
        except (TimeoutError, IndexError, ConnectionError):
            writer.close()
            return
        if target.path != CALLBACK_PATH:
            status, page = "404 Not Found", "Nothing here."
        else:
            answer = dict(parse_qsl(target.query))
            if self._answer is not None and not self._answer.done():
                self._answer.set_result(answer)
            status, page = "200 OK", ("Signed in: you can close this page and go back to the terminal."
                                      if "code" in answer else "The sign-in did not complete: see the terminal.")
        body = f"<!doctype html><title>ledger</title><p>{page}</p>".encode()
        writer.write(f"HTTP/1.1 {status}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Length: {len(body)}"
                     f"\r\nConnection: close\r\n\r\n".encode() + body)
        try:
            await writer.drain()
        finally:
            writer.close()


class SignIn:
    """A person's sign-in at the issuer a server names, kept for the next command."""

    errors = (OAuthFlowError,)  # what a failed sign-in raises (the SDK's, and ``BrowserReturn``'s)

    def __init__(self, signins: SignIns, say: Callable[[str], None], open_browser: bool = True) -> None:
        self.signins = signins
        self.say = say
        self.open_browser = open_browser
        self._return = BrowserReturn()

    def kept_for(self, url: str) -> bool:
        return bool(self.signins.entry(url).get("tokens"))

    async def auth(self, url: str) -> OAuthClientProvider:
        """The SDK's OAuth client for ``url``, starting from what was kept."""
        await self._return.open()
        storage = KeptSignIn(self.signins, url)
        oauth = OAuthClientProvider(
            server_url=url,
            client_metadata=OAuthClientMetadata(
                client_name="ledger (terminal)", redirect_uris=[AnyUrl(self._return.redirect_uri)],
                grant_types=["authorization_code", "refresh_token"], response_types=["code"],
                token_endpoint_auth_method="none"),
            storage=storage, redirect_handler=self._send_person, callback_handler=self._return.come_back)
        storage.restore(oauth.context)
        return oauth

    async def close(self) -> None:
        await self._return.close()

    async def _send_person(self, authorization_url: str) -> None:
        self.say(f"Sign in at {urlsplit(authorization_url)._replace(query='').geturl()}: open\n  {authorization_url}")
        if self.open_browser and await asyncio.to_thread(webbrowser.open, authorization_url):
            self.say("(opened in your browser)")
        self.say(f"Waiting up to {WAIT_FOR_BROWSER_S // 60} minutes for the browser to come back...")
