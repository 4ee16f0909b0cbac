"""The web timeline at ``/ui``: the page as a user sees it in headless Chromium, its JSON API and its live events."""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import uuid
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.browser import Chromium
from tests.support.raw_http import ModernClient
from tests.support.stack import answer_through_tasks, in_status, serving, tokened_stack, until


async def start(client: ModernClient, tool: str, arguments: dict[str, Any]) -> str:
    return (await client.result("tools/call", {"name": tool, "arguments": arguments}))["taskId"]


class Rows(HTMLParser):
    """The ``<tr>`` elements of a page, by class: ``{"task": [attrs, ...], "entry": [attrs, ...]}``."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.rows: dict[str, list[dict[str, str | None]]] = {}
        self.feed(html)

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "tr":
            shown = dict(attrs)
            for name in (shown.get("class") or "").split():
                self.rows.setdefault(name, []).append(shown)


async def test_the_page_shows_tasks_and_the_selected_timeline_and_follows_them_live(stack: tuple[str, Settings],
                                                                                   tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    url, _ = stack
    base = url.removesuffix("/mcp")
    async with ModernClient(url) as client, httpx.AsyncClient(base_url=base, timeout=30) as http, \
            Chromium(tmp_path / "profile") as browser:
        trip = await start(client, "plan_trip", {"destination": "Rome"})
        await answer_through_tasks(client, trip, {"start_date": "2027-03-01", "nights": 4})
        expense = await start(client, "approve_expense", {"amount": 6, "description": "map"})
        await in_status(client, expense, "input_required")

        async def stored() -> bool:
            listed = {t["taskId"]: t["status"] for t in (await http.get("/ui/api/tasks")).json()["tasks"]}
            kinds = [e["kind"] for e in (await http.get(f"/ui/api/tasks/{trip}")).json()["history"]]
            return listed.get(trip) == listed.get(expense) == "input_required" and kinds.count("asked") == 2
        await until(stored)

        page = await browser.open(f"{base}/ui#task={trip}")
        rendered = "document.querySelector('tr.task') && document.querySelector('tr.entry') && document.body.outerHTML"
        rows = Rows(await until(lambda: browser.evaluate(page, rendered))).rows
        statuses = {row["data-task-id"]: row["data-status"] for row in rows["task"]}
        assert statuses[trip] == statuses[expense] == "input_required", statuses
        kinds = [row["data-kind"] for row in rows["entry"]]
        assert kinds == ["created", "started", "asked", "answered", "asked"], kinds
        screenshot = tmp_path / "ui.png"
        screenshot.write_bytes(base64.b64decode((await browser.send("Page.captureScreenshot", page))["data"]))
        assert screenshot.stat().st_size > 0 and screenshot.read_bytes().startswith(b"\x89PNG")

        # Live: once its event stream is open, the page follows the tasks without a reload.
        def shows(expression: str) -> Any:
            return lambda: browser.evaluate(page, expression)
        await until(shows("document.getElementById('live').textContent === 'live'"), 5)
        await answer_through_tasks(client, expense, {"approved": True})
        await until(shows(f"!!document.querySelector('tr.task[data-task-id=\"{expense}\"][data-status=completed]')"), 5)
        await answer_through_tasks(client, trip, {"confirm": True})
        await until(shows(f"!!document.querySelector('tr.task[data-task-id=\"{trip}\"][data-status=completed]')"), 5)
        await until(shows("!!document.querySelector('tr.entry[data-kind=completed]')"), 5)


async def test_the_api_refuses_unknown_statuses_and_tasks(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with httpx.AsyncClient(base_url=url.removesuffix("/mcp"), timeout=30) as http:
        bad = await http.get("/ui/api/tasks", params={"status": "sleeping"})
        assert bad.status_code == 400 and "status" in bad.json()["error"]
        assert (await http.get("/ui/api/tasks/no-such")).status_code == 404
        page = await http.get("/ui")
        assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")


async def test_the_event_stream_announces_a_new_task(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with httpx.AsyncClient(base_url=url.removesuffix("/mcp"), timeout=30) as http, \
            http.stream("GET", "/ui/api/events") as response, ModernClient(url) as client:
        assert response.headers["content-type"].startswith("text/event-stream")
        lines = response.aiter_lines()
        assert await anext(lines) == ": connected"  # the stream listens from here on
        task_id = await start(client, "approve_expense", {"amount": 3, "description": "coffee"})
        async with asyncio.timeout(5):
            event = None
            async for line in lines:
                if line.startswith("event:"):
                    event = line[6:].strip()
                elif line.startswith("data:") and event == "task" and json.loads(line[5:])["taskId"] == task_id:
                    break
            else:
                pytest.fail("the stream ended without announcing the task")


@pytest.fixture(scope="module")
async def tokened(bootstrap: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[str]:
    """The MCP endpoint URL of a server that takes tokens for alice and bob."""
    async with tokened_stack(bootstrap, tmp_path_factory.mktemp("ui-auth"),
                             {"alice-secret": "alice", "bob-secret": "bob"}) as stack:
        yield stack[0]


async def test_the_page_signs_in_with_a_token_and_shows_only_that_principals_tasks(tokened: str,
                                                                                   tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    base = tokened.removesuffix("/mcp")
    async with ModernClient(tokened, token="alice-secret") as alice, ModernClient(tokened, token="bob-secret") as bob, \
            Chromium(tmp_path / "profile") as browser:
        alices = await start(alice, "approve_expense", {"amount": 1, "description": "alice's"})
        bobs = await start(bob, "approve_expense", {"amount": 2, "description": "bob's"})
        await in_status(alice, alices, "input_required")
        await in_status(bob, bobs, "input_required")
        page = await browser.open(f"{base}/ui")

        def shows(expression: str) -> Any:
            return lambda: browser.evaluate(page, expression)

        async def sign_in(token: str) -> None:
            await until(shows("!document.getElementById('signin').hidden"), 10)
            await browser.evaluate(page, f"document.getElementById('token').value = {json.dumps(token)}; "
                                         "document.getElementById('signin').requestSubmit()")

        def listed(task_id: str) -> str:
            return f"!!document.querySelector('tr.task[data-task-id=\"{task_id}\"]')"

        await sign_in("not-a-token")
        await until(shows("document.getElementById('signin-error').textContent === 'that token is not valid here'"), 10)
        await sign_in("alice-secret")
        await until(shows(listed(alices)), 10)
        assert not await browser.evaluate(page, listed(bobs))
        assert await browser.evaluate(page, "document.getElementById('who').textContent") == "signed in as alice"
        assert await browser.evaluate(page, "document.cookie") == ""  # HttpOnly: no script reads the session
        await until(shows("document.getElementById('live').textContent === 'live'"), 10)
        later = await start(alice, "approve_expense", {"amount": 3, "description": "alice's second"})
        await until(shows(listed(later)), 10)  # the event stream is signed in through the cookie

        await browser.evaluate(page, "document.getElementById('signout').click()")
        await until(shows("!document.querySelector('tr.task')"), 10)
        await sign_in("bob-secret")
        await until(shows(listed(bobs)), 10)
        assert not await browser.evaluate(page, listed(alices))


async def test_the_session_cookie_signs_in_the_page_only(tokened: str) -> None:
    base = tokened.removesuffix("/mcp")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        assert (await http.get("/ui/api/tasks")).status_code == 401
        assert (await http.post("/ui/login", json={"token": "alice-secret"},
                                headers={"Origin": "http://evil.example"})).status_code == 403
        signed = await http.post("/ui/login", json={"token": "alice-secret"})
        assert signed.status_code == 200 and signed.json() == {"principal": "alice"}
        cookie = signed.headers["set-cookie"].lower()
        assert "httponly" in cookie and "samesite=strict" in cookie and "path=/ui" in cookie
        assert (await http.get("/ui/api/tasks")).status_code == 200
        assert (await http.get("/ui/api/me")).json() == {"signInRequired": True, "signedIn": True, "principal": "alice",
                                                         "signInAt": None}
        session = http.cookies["ledger_ui"]
        signature = session.split(".")[1]
        forged = base64.urlsafe_b64encode(json.dumps({"p": "bob", "exp": 2**40}).encode()).decode().rstrip("=")
        async with httpx.AsyncClient(base_url=base, timeout=30) as stranger:
            assert (await stranger.get("/ui/api/tasks", headers={"Cookie": f"ledger_ui={forged}.{signature}"})
                    ).status_code == 401
            mcp = await stranger.post("/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"}, headers={
                "Accept": "application/json, text/event-stream", "Cookie": f"ledger_ui={session}"})
            assert mcp.status_code == 401  # the cookie is for the page, never for MCP
        await http.post("/ui/logout")
        assert (await http.get("/ui/api/tasks")).status_code == 401


async def test_signing_out_on_one_server_ends_the_session_on_every_server(bootstrap: str, tmp_path: Path) -> None:
    # Two servers that share the signing key accept each other's cookies; the sign-out goes through the
    # log, so the old cookie, kept by whoever copied it, reads nothing anywhere afterwards.
    from examples.demo import app as demo

    tokens_file = tmp_path / "tokens"
    tokens_file.write_text("alice-secret alice\n")
    settings = Settings.from_env(bootstrap=bootstrap, topic_prefix=f"test-{uuid.uuid4().hex[:12]}", partitions=2,
                                 tokens_file=str(tokens_file), request_state_key="shared by both servers, 32 characters or more")
    await ensure_topics(settings)
    async with serving(demo, settings, "one") as one, serving(demo, settings, "two") as two:
        first, second = one.removesuffix("/mcp"), two.removesuffix("/mcp")
        async with httpx.AsyncClient(base_url=first, timeout=30) as http:
            signed = await http.post("/ui/login", json={"token": "alice-secret"})
            assert signed.status_code == 200, signed.text
            cookie = {"Cookie": f"ledger_ui={http.cookies['ledger_ui']}"}
            async with httpx.AsyncClient(base_url=second, timeout=30) as elsewhere:
                kept = await elsewhere.post("/ui/login", json={"token": "alice-secret"})
            other_session = {"Cookie": f"ledger_ui={kept.cookies['ledger_ui']}"}
            async with httpx.AsyncClient(timeout=30) as anywhere:
                for base in (first, second):
                    assert (await anywhere.get(f"{base}/ui/api/tasks", headers=cookie)).status_code == 200
                assert (await http.post("/ui/logout")).json() == {"signedIn": False}
                assert (await anywhere.get(f"{first}/ui/api/tasks", headers=cookie)).status_code == 401

                async def refused_on_the_other_server() -> bool:
                    return (await anywhere.get(f"{second}/ui/api/tasks", headers=cookie)).status_code == 401

                await until(refused_on_the_other_server, 10)
                for base in (first, second):  # only that session ended: another of alice's goes on
                    assert (await anywhere.get(f"{base}/ui/api/tasks", headers=other_session)).status_code == 200
    async with serving(demo, settings, "three") as three:  # a server started later knows it too
        async with httpx.AsyncClient(timeout=30) as anywhere:
            late = await anywhere.get(f"{three.removesuffix('/mcp')}/ui/api/tasks", headers=cookie)
            assert late.status_code == 401


async def test_sign_in_refuses_what_it_cannot_read_clearly(tokened: str) -> None:
    # Each of these was an HTTP 500: a body nested past the parser's depth, and a token holding a lone
    # surrogate (which no verifier can encode).
    base = tokened.removesuffix("/mcp")
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        for body in (b"[" * 100_000 + b"]" * 100_000, b'{"token": "\\ud800secret"}'):
            refused = await http.post("/ui/login", content=body, headers={"Content-Type": "application/json"})
            assert refused.status_code == 400 and "token" in refused.json()["error"], (body[:20], refused.text)
        as_text = await http.post("/ui/login", content=b'{"token": "alice-secret"}',
                                  headers={"Content-Type": "text/plain"})
        assert as_text.status_code == 400  # a page of any site may post text/plain without asking
        other_port = await http.post("/ui/login", json={"token": "alice-secret"},
                                     headers={"Origin": "http://127.0.0.1:5555"})
        assert other_port.status_code == 403


async def test_a_person_answers_from_the_inbox_and_the_tool_completes(stack: tuple[str, Settings],
                                                                      tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    url, _ = stack
    base = url.removesuffix("/mcp")
    async with ModernClient(url) as client, Chromium(tmp_path / "profile") as browser:
        trip = await start(client, "plan_trip", {"destination": "Oslo"})
        await in_status(client, trip, "input_required")
        page = await browser.open(f"{base}/ui")
        form = f"document.querySelector('form.question[data-task-id=\"{trip}\"]')"

        def shows(expression: str) -> Any:
            return lambda: browser.evaluate(page, expression)

        await until(shows(f"!!{form} && {form}.textContent.includes('When do you want to go to Oslo?')"), 10)
        card = await browser.evaluate(page, f"{form}.textContent")
        assert trip in card and "created" in card and "waiting" in card  # the full id, copyable, and the times
        # A required field left empty: the server refuses, the error shows beside the field, nothing changes.
        await browser.evaluate(page, f"{form}.querySelector('[data-field=start_date]').value = '2027-03-01';"
                                     f"{form}.querySelector('button[value=accept]').click()")
        await until(shows(f"{form}.querySelector('[data-error-for=nights]').textContent === 'required'"), 10)
        assert (await client.result("tasks/get", {"taskId": trip}))["status"] == "input_required"
        await browser.evaluate(page, f"{form}.querySelector('[data-field=nights]').value = '3';"
                                     f"{form}.querySelector('button[value=accept]').click()")
        await until(shows(f"!!{form} && {form}.textContent.includes('Book 3 nights in Oslo from 2027-03-01?')"), 10)
        await browser.evaluate(page, f"{form}.querySelector('[data-field=confirm]').checked = true;"
                                     f"{form}.querySelector('button[value=accept]').click()")
        done = await in_status(client, trip, "completed")
        assert done["result"]["content"][0]["text"] == "booked Oslo for 3 nights from 2027-03-01"
        await until(shows(f"!{form}"), 10)  # answered: gone from the inbox
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        history = (await http.get(f"/ui/api/tasks/{trip}")).json()["history"]
    answered = [entry for entry in history if entry["kind"] == "answered"]
    assert len(answered) == 2 and all(entry["protocol"] == "web" for entry in answered), answered
    assert [entry["protocol"] for entry in history if entry["kind"] == "refused"] == ["web"]


async def test_the_inbox_says_until_when_a_question_waits_and_every_time_in_one_form(stack: tuple[str, Settings],
                                                                                    tmp_path: Path) -> None:
    if shutil.which("chromium") is None:
        pytest.skip("Chromium is not installed (apt-get install chromium); .ci/run installs it")
    url, _ = stack
    async with ModernClient(url) as client, Chromium(tmp_path / "profile") as browser:
        expense = await start(client, "approve_or_escalate", {"amount": 8, "description": "taxi",
                                                               "answer_within_minutes": 180})
        waiting = await in_status(client, expense, "input_required")
        [request] = waiting["inputRequests"].values()
        answer_by = request["params"]["_meta"]["ledger/answer-by"]
        page = await browser.open(f"{url.removesuffix('/mcp')}/ui")
        form = f"document.querySelector('form.question[data-task-id=\"{expense}\"]')"
        await until(lambda: browser.evaluate(page, f"!!{form}"), 10)
        card = await browser.evaluate(page, f"{form}.textContent")
        due = answer_by[:19].replace("T", " ") + " UTC"
        assert f"answer by {due} (in 3 h), or the task goes on without an answer" in card, card
        assert "created 20" in card and " UTC · asked 20" in card, card  # UTC, 24-hour, as the timeline has them
        row = f"document.querySelector('tr.task[data-task-id=\"{expense}\"]')"
        await until(lambda: browser.evaluate(page, f"!!{row}"), 10)
        cells = await browser.evaluate(page, f"[...{row}.cells].map(cell => cell.textContent)")
        assert cells[0] == expense and cells[1] == "approve_or_escalate", cells  # the whole id, to copy
        assert cells[3].startswith("Approve expense of 8.0 for 'taxi'? (answer by ") and cells[4].endswith(" s"), cells
