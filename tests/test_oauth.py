"""ledger as an OAuth 2.1 resource server, against a real OpenID provider (``tests/oidc``): the MCP
SDK's OAuth client finds the issuer from a 401 and signs in (authorization code + PKCE), its tasks
belong to issuer and subject, another person's token is refused and recorded, and every token not
issued for this server is refused with the status the specs give."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import os
import shutil
import subprocess
import time
from asyncio.subprocess import PIPE
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx2 as httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp.shared.exceptions import MCPError

from ledger.contract.events import RequestRejected
from ledger.http.auth import protected_resource
from ledger.kafka.broker import free_port
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings, SettingsError
from tests.support.browser import Chromium
from tests.support.engine import history
from tests.support.mcp_client import answer_first_pending, call_as_task, connect, get_task, poll_until
from tests.support.oidc import (
    ScriptedPerson,
    claims_for,
    openid_provider,
    provider_signed,
    registered_client,
    service_token,
    signed_in_http,
)
from tests.support.raw_http import ModernClient
from tests.support.spawn import LEDGER
from tests.support.stack import demo_stack, serving, until

SCOPES = "ledger:read ledger:write"
APPROVE = {"amount": 5, "description": "ink"}


@pytest.fixture(scope="module")
def issuer() -> Iterator[str]:
    with openid_provider() as url:
        yield url


@pytest.fixture(scope="module")
def stack_settings(issuer: str) -> dict[str, Any]:
    return {"oauth_issuer": issuer, "oauth_scopes": SCOPES}


async def status_with(url: str, token: str | None) -> tuple[int, str]:
    async with ModernClient(url, token=token) as client:
        response = await client.post("tools/list")
        return response.status_code, response.headers.get("www-authenticate", "")


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unsigned(header: dict[str, Any], claims: dict[str, Any]) -> str:
    return f"{_b64(json.dumps(header).encode())}.{_b64(json.dumps(claims).encode())}"


async def test_a_client_without_a_token_is_pointed_at_the_issuer(stack: tuple[str, Settings], issuer: str) -> None:
    url, _ = stack
    origin = url.removesuffix("/mcp")
    metadata_url = f"{origin}/.well-known/oauth-protected-resource/mcp"
    status, challenge = await status_with(url, None)
    # RFC 6750 §3.1: no error code for a request that sent no token
    assert status == 401 and challenge == f'Bearer resource_metadata="{metadata_url}", scope="{SCOPES}"', challenge
    status, challenge = await status_with(url, "not-a-token")
    assert status == 401 and challenge.startswith('Bearer error="invalid_token"') and metadata_url in challenge
    async with httpx.AsyncClient() as http:
        for where in (metadata_url, f"{origin}/.well-known/oauth-protected-resource"):
            metadata = (await http.get(where)).json()
            assert metadata["resource"] == url and metadata["authorization_servers"] == [issuer], metadata
            assert metadata["scopes_supported"] == SCOPES.split()


async def test_the_sdk_oauth_client_signs_in_and_the_task_is_its_subjects(stack: tuple[str, Settings],
                                                                          issuer: str) -> None:
    url, settings = stack
    seen: list[str] = []
    async with signed_in_http(url, "alice", seen) as http, connect(url, http=http) as alice:
        task_id = (await call_as_task(alice, "approve_expense", APPROVE))["task"]["taskId"]
        assert f"GET {url.removesuffix('/mcp')}/.well-known/oauth-protected-resource/mcp" in seen, seen
        assert f"POST {issuer}/reg" in seen and f"POST {issuer}/token" in seen, seen

        async with signed_in_http(url, "bob") as bob_http, connect(url, http=bob_http) as bob:
            with pytest.raises(MCPError, match="not found"):
                await get_task(bob, task_id)

        await answer_first_pending(alice, task_id, {"approved": True})
        done = await poll_until(alice, task_id, lambda task: task["status"] == "completed")
        assert done["status"] == "completed"

    async def recorded() -> list[Any] | None:
        events = await history(settings, task_id)
        return events if any(isinstance(e, RequestRejected) for e in events) else None

    events = await until(recorded)
    assert {e.principal for e in events} == {f"{issuer}#alice"}, {e.principal for e in events}
    refused = [e for e in events if isinstance(e, RequestRejected)]
    assert f"{issuer}#bob" in refused[0].reason, refused


async def test_tokens_not_issued_for_this_server_are_refused(stack: tuple[str, Settings], issuer: str) -> None:
    url, _ = stack
    now = int(time.time())
    good = await provider_signed(issuer, claims_for(issuer, url))
    header = jwt.get_unverified_header(good)
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    async with httpx.AsyncClient() as http:
        jwks = (await http.get(f"{issuer}/jwks")).json()
    public_pem = jwt.PyJWK(jwks["keys"][0]).key.public_bytes(serialization.Encoding.PEM,
                                                              serialization.PublicFormat.SubjectPublicKeyInfo)
    hs256_header = {**header, "alg": "HS256"}
    hs256_input = unsigned(hs256_header, claims_for(issuer, url)).encode()
    with openid_provider() as other_issuer:
        another_issuers = await service_token(other_issuer, url)
    refused = {
        "for another resource": await service_token(issuer, "http://127.0.0.1:1/other"),
        "expired an hour ago": await provider_signed(issuer, claims_for(issuer, url, iat=now - 3900, exp=now - 3600)),
        "not valid for an hour": await provider_signed(issuer, claims_for(issuer, url, nbf=now + 3600)),
        "naming another issuer": await provider_signed(issuer, claims_for(issuer, url, iss="http://127.0.0.1:1")),
        "without a subject": await provider_signed(issuer, {k: v for k, v in claims_for(issuer, url).items()
                                                            if k != "sub"}),
        "from another issuer": another_issuers,
        "signed by another key": jwt.encode(claims_for(issuer, url), stranger, algorithm="RS256", headers=header),
        "with alg none": unsigned({**header, "alg": "none"}, claims_for(issuer, url)) + ".",
        "HS256 keyed with the issuer's public key": hs256_input.decode() + "." + _b64(
            hmac.new(public_pem, hs256_input, hashlib.sha256).digest()),
        "an ID token's type": await provider_signed(issuer, claims_for(issuer, url), {"typ": "id+jwt"}),
    }
    for why, token in refused.items():
        status, challenge = await status_with(url, token)
        assert status == 401 and 'error="invalid_token"' in challenge, (why, status, challenge)
    # the same checks pass the tokens that are good: the refusals above are the checks' doing
    for token in (good, await service_token(issuer, url)):
        assert (await status_with(url, token))[0] == 200


async def test_a_token_without_a_required_scope_gets_403_naming_the_scopes(stack: tuple[str, Settings],
                                                                          issuer: str) -> None:
    url, _ = stack
    status, challenge = await status_with(url, await service_token(issuer, url, scope="ledger:read"))
    assert status == 403 and 'error="insufficient_scope"' in challenge and f'scope="{SCOPES}"' in challenge, challenge


async def test_a_person_signs_in_to_the_web_page_with_an_access_token(stack: tuple[str, Settings],
                                                                      issuer: str) -> None:
    url, _ = stack
    origin = url.removesuffix("/mcp")
    async with httpx.AsyncClient() as http:
        signed_in = await http.post(f"{origin}/ui/login", json={"token": await service_token(issuer, url)})
        assert signed_in.json() == {"principal": f"{issuer}#ledger-service"}
        refused = await http.post(f"{origin}/ui/login",
                                  json={"token": await service_token(issuer, "http://127.0.0.1:1/other")})
        assert refused.status_code == 401
        narrow = await http.post(f"{origin}/ui/login", json={"token": await service_token(issuer, url, "ledger:read")})
        assert narrow.status_code == 403 and narrow.json()["error"] == "that token lacks the scope ledger:write"
        assert (await http.get(f"{origin}/ui/api/tasks")).status_code == 200  # the session signed in above
        assert (await http.get(f"{origin}/ui/api/tasks", headers={
            "Authorization": f"Bearer {await service_token(issuer, url, 'ledger:read')}"})).status_code == 403


async def test_a_person_signs_in_to_the_web_page_at_the_issuer(bootstrap: str, issuer: str) -> None:
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    client_id, secret = await registered_client(issuer, f"{origin}/ui/login/callback")
    async with demo_stack(bootstrap, port=port, oauth_issuer=issuer, oauth_scopes=SCOPES, oauth_client_id=client_id,
                          oauth_client_secret=secret), httpx.AsyncClient(follow_redirects=True) as browser:
        me = (await browser.get(f"{origin}/ui/api/me")).json()
        assert me["signInAt"] == "/ui/login/start" and not me["signedIn"], me
        landed = await browser.get(f"{origin}/ui/login/start", params={"login_hint": "bob"})
        hops = [str(r.url).split("?")[0] for r in landed.history]
        assert str(landed.url) == f"{origin}/ui" and f"{issuer}/auth" in hops, hops
        assert "ledger_ui_flow" not in browser.cookies  # the flow's state is spent
        me = (await browser.get(f"{origin}/ui/api/me")).json()
        assert me["signedIn"] and me["principal"] == f"{issuer}#bob", me

        stray = await browser.get(f"{origin}/ui/login/callback", params={"code": "made-up", "state": "made-up"})
        assert stray.status_code == 400 and "not started on this page" in stray.text
        started = await browser.get(f"{origin}/ui/login/start", follow_redirects=False)
        state = dict(parse_qsl(urlsplit(started.headers["location"]).query))["state"]
        made_up = await browser.get(f"{origin}/ui/login/callback", params={"code": "made-up", "state": state})
        assert made_up.status_code == 401 and "not good here" in made_up.text  # the issuer refused the code


async def test_the_page_signs_a_person_in_at_the_issuer_in_a_browser(bootstrap: str, issuer: str,
                                                                     tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    port = free_port()
    origin = f"http://127.0.0.1:{port}"
    client_id, secret = await registered_client(issuer, f"{origin}/ui/login/callback")
    async with demo_stack(bootstrap, port=port, oauth_issuer=issuer, oauth_scopes=SCOPES, oauth_client_id=client_id,
                          oauth_client_secret=secret) as (url, _), Chromium(tmp_path / "profile") as browser:
        async with ModernClient(url, token=await provider_signed(issuer, claims_for(issuer, url))) as alice:
            task_id = (await alice.result("tools/call", {"name": "approve_expense",
                                                         "arguments": APPROVE}))["taskId"]
        page = await browser.open(f"{origin}/ui")

        def shows(expression: str) -> Any:
            return lambda: browser.evaluate(page, expression)

        await until(shows("!document.getElementById('signin-issuer').hidden"), 10)
        await browser.evaluate(page, "document.getElementById('signin-issuer').click()")  # the provider: alice
        await until(shows(f"document.getElementById('who').textContent === 'signed in as {issuer}#alice'"), 20)
        await until(shows(f"!!document.querySelector('tr.task[data-task-id=\"{task_id}\"]')"), 10)
        assert await browser.evaluate(page, "location.href") == f"{origin}/ui"


async def test_ledger_call_signs_a_person_in_at_the_issuer_once(stack: tuple[str, Settings], issuer: str,
                                                                 tmp_path: Path) -> None:
    url, _ = stack
    config = {**os.environ, "XDG_CONFIG_HOME": str(tmp_path)}
    def command(amount: int) -> list[str]:
        return [*LEDGER, "call", "approve_expense", f"amount={amount}", "description=train", "--url", url, "--no-browser"]

    first = await asyncio.create_subprocess_exec(*command(20), stdin=PIPE, stdout=PIPE, stderr=PIPE, env=config)
    assert first.stderr is not None
    said = [(await asyncio.wait_for(first.stderr.readline(), 30)).decode() for _ in range(2)]
    assert said[0].startswith(f"Sign in at {issuer}/auth: open"), said
    person = ScriptedPerson("bob")
    async with person.browser:
        await person.open(said[1].strip())
        back = await person.browser.get(person.landed_at)  # the browser comes back to the command's listener
    assert back.status_code == 200 and "Signed in" in back.text
    out, _ = await asyncio.wait_for(first.communicate(b"a\ny\n\n"), 60)
    assert first.returncode == 0 and out.decode().rstrip().endswith("approved 20"), out
    task_id = out.decode().split()[1]  # "task <id> (approve_expense)"

    kept = tmp_path / "ledger" / "signins.json"
    assert kept.stat().st_mode & 0o777 == 0o600
    signin = json.loads(kept.read_text())[url]
    signin["expiresAt"] = time.time() - 1  # the next command refreshes the token instead of asking the browser
    kept.write_text(json.dumps({url: signin}))
    again = await asyncio.to_thread(subprocess.run, command(21), input="a\ny\n\n",
                                    capture_output=True, text=True, timeout=60, env=config)
    assert again.returncode == 0 and "Sign in" not in again.stderr and again.stdout.rstrip().endswith("approved 21")
    refreshed = json.loads(kept.read_text())[url]
    assert refreshed["tokens"]["access_token"] != signin["tokens"]["access_token"]

    for login, sees in (("bob", True), ("alice", False)):  # the task is the signed-in person's
        token = await provider_signed(issuer, claims_for(issuer, url, sub=login))
        async with ModernClient(url, token=token) as client:
            response = await client.call("tasks/get", {"taskId": task_id})
        assert ("result" in response) is sees, (login, response)
    signed_out = await asyncio.to_thread(subprocess.run, [*LEDGER, "sign-out", "--url", url], capture_output=True,
                                         text=True, timeout=60, env=config)
    assert signed_out.stdout.strip() == f"signed out of {url}" and url not in json.loads(kept.read_text())


async def test_a_refused_sign_in_at_the_terminal_is_one_line(stack: tuple[str, Settings], tmp_path: Path) -> None:
    url, _ = stack
    call = await asyncio.create_subprocess_exec(
        *LEDGER, "call", "approve_expense", "amount=3", "description=pens", "--url", url, "--no-browser",
        stdin=PIPE, stdout=PIPE, stderr=PIPE, env={**os.environ, "XDG_CONFIG_HOME": str(tmp_path)})
    assert call.stderr is not None
    said = [(await asyncio.wait_for(call.stderr.readline(), 30)).decode() for _ in range(2)]
    redirect_uri = dict(parse_qsl(urlsplit(said[1].strip()).query))["redirect_uri"]
    async with httpx.AsyncClient() as browser:  # the person said no at the issuer
        back = await browser.get(redirect_uri, params={"error": "access_denied", "error_description": "not today"})
    assert "did not complete" in back.text
    _, err = await asyncio.wait_for(call.communicate(), 30)
    assert call.returncode == 2 and err.decode().splitlines()[-1] == (
        f"ledger: signing in for {url} failed: the issuer refused: not today"), err
    kept = json.loads((tmp_path / "ledger" / "signins.json").read_text())[url]
    assert "client" in kept and "tokens" not in kept  # the registration is kept for the next try, no token


async def test_opaque_tokens_are_introspected(bootstrap: str) -> None:
    with openid_provider(OIDC_AT_FORMAT="opaque") as issuer:
        async with demo_stack(bootstrap, oauth_issuer=issuer, oauth_client_id="ledger-service",
                              oauth_client_secret="ledger-service-secret") as (url, _):
            token = await service_token(issuer, url)
            assert token.count(".") != 2  # opaque indeed
            assert (await status_with(url, token))[0] == 200
            assert (await status_with(url, await service_token(issuer, "http://127.0.0.1:1/other")))[0] == 401
            assert (await status_with(url, token + "x"))[0] == 401


async def test_a_key_rotation_at_the_issuer_costs_one_fetch_of_its_keys(bootstrap: str, tmp_path: Path) -> None:
    port = free_port()
    issuer, keys = f"http://127.0.0.1:{port}", str(tmp_path / "keys.json")

    async def jwks_fetches() -> int:
        async with httpx.AsyncClient() as http:
            return (await http.get(f"{issuer}/test/stats")).json()["jwksFetches"]

    async with demo_stack(bootstrap, oauth_issuer=issuer, oauth_scopes=SCOPES) as (url, _):
        with openid_provider(port, OIDC_KEYS=keys):
            before = await service_token(issuer, url)
            assert (await status_with(url, before))[0] == 200
        with openid_provider(port, OIDC_KEYS=keys, OIDC_ROTATE="1"):  # restarted with a new signing key
            after = await service_token(issuer, url)
            assert jwt.get_unverified_header(after)["kid"] != jwt.get_unverified_header(before)["kid"]
            assert (await status_with(url, after))[0] == 200  # the server fetched the keys for the new kid
            assert (await status_with(url, before))[0] == 200  # the old key is still published
            assert await jwks_fetches() == 1
            for made_up in range(5):
                token = await provider_signed(issuer, claims_for(issuer, url), {"kid": f"made-up-{made_up}"})
                assert (await status_with(url, token))[0] == 401
            assert await jwks_fetches() == 1  # unknown kids within 10 s of the last fetch fetch nothing


async def test_an_unreachable_issuer_is_503_not_a_sign_in_loop(bootstrap: str) -> None:
    from examples.demo import app as demo

    with openid_provider() as issuer:
        gone = "http://127.0.0.1:9"  # discard: nothing answers
        settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"test-{time.time_ns()}", oauth_issuer=gone)
        token = await provider_signed(issuer, claims_for(gone, "http://127.0.0.1/mcp"))
        await ensure_topics(settings)
        async with serving(demo, settings) as url:
            async with ModernClient(url, token=token) as client:
                response = await client.post("tools/list")
            assert response.status_code == 503 and response.headers["retry-after"], response.text
            assert "cannot be reached" in response.json()["error_description"]


def test_a_server_on_every_address_is_told_to_name_its_audience() -> None:
    settings = Settings(oauth_issuer="https://id.example.com")
    with pytest.raises(SettingsError, match="LEDGER_OAUTH_AUDIENCE"):
        protected_resource(settings, "0.0.0.0", 8000)
    assert protected_resource(settings, "::1", 8000).url == "http://[::1]:8000/mcp"
    with pytest.raises(SettingsError, match="set one"):
        Settings.from_env({"LEDGER_OAUTH_ISSUER": "https://id.example.com", "LEDGER_TOKENS_FILE": "tokens"})
