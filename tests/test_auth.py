"""Tasks belong to the principal that created them: bearer tokens, "not found" for everyone else (and
the attempt on the log), no unauthenticated serving beyond loopback, and Host checks."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import httpx2 as httpx
import pytest

from ledger.contract.events import RequestRejected
from ledger.kafka.broker import free_port
from ledger.settings import Settings
from tests.support.engine import history
from tests.support.raw_http import ModernClient, RawSession, bearer
from tests.support.spawn import LEDGER, role_environment
from tests.support.stack import in_status, until

APPROVE = {"name": "approve_expense", "arguments": {"amount": 5, "description": "ink"}}


@pytest.fixture(scope="module")
def stack_tokens() -> dict[str, str]:
    return {"alice-secret": "alice", "bob-secret": "bob"}


async def waiting_task(alice: ModernClient) -> tuple[str, str]:
    task_id = (await alice.result("tools/call", APPROVE))["taskId"]
    return task_id, next(iter((await in_status(alice, task_id, "input_required"))["inputRequests"]))


async def test_requests_without_a_valid_token_are_refused(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    for token in (None, "guessed"):
        async with ModernClient(url, token=token) as client:
            response = await client.post("tools/list")
            assert response.status_code == 401 and "Bearer" in response.headers.get("www-authenticate", "")
    async with httpx.AsyncClient() as http:
        assert (await http.get(url.replace("/mcp", "/ui/api/tasks"))).status_code == 401
        assert (await http.get(url.replace("/mcp", "/healthz"))).status_code == 200


async def test_another_principal_finds_nothing_and_the_attempts_are_recorded(stack: tuple[str, Settings]) -> None:
    url, settings = stack
    async with ModernClient(url, token="alice-secret") as alice, ModernClient(url, token="bob-secret") as bob, \
            RawSession(url, token="bob-secret") as bob_legacy:
        task_id, key = await waiting_task(alice)
        attempts = [
            await bob.call("tasks/get", {"taskId": task_id}),
            await bob.call("tasks/update", {"taskId": task_id, "inputResponses": {
                key: {"action": "accept", "content": {"approved": True}}}}),
            await bob.call("tasks/cancel", {"taskId": task_id}),
            await bob_legacy.call("tasks/get", {"taskId": task_id}),
            await bob_legacy.call("tasks/result", {"taskId": task_id}),
        ]
        for response in attempts:
            assert response["error"]["code"] == -32602 and "not found" in response["error"]["message"], response
        listed = await bob_legacy.call("tasks/list", {})
        assert task_id not in {t["taskId"] for t in listed["result"]["tasks"]}
        history_tool = await bob.result("tools/call", {"name": "task_history", "arguments": {"task_id": task_id}})
        assert history_tool["isError"]
        resource = await bob.call("resources/read", {"uri": f"ledger://tasks/{task_id}"})
        assert resource["error"]["code"] == -32002
        async with httpx.AsyncClient(headers=bearer("bob-secret")) as http:
            assert (await http.get(url.replace("/mcp", f"/ui/api/tasks/{task_id}"))).status_code == 404
        task = await alice.result("tasks/get", {"taskId": task_id})
        assert task["status"] == "input_required"  # nothing bob did changed it

        for _ in range(200):  # probing on: 5,000 of these were 5,000 events in alice's timeline
            await bob.call("tasks/get", {"taskId": task_id})

    async def recorded() -> list | None:
        refused = [e for e in await history(settings, task_id)
                   if isinstance(e, RequestRejected) and e.operation == "access"]
        return refused or None

    refused = await until(recorded)
    await asyncio.sleep(1)  # a negative check: more records would be on the log by now
    refused = await recorded()
    # Once per principal and task a minute, the next record saying how many more times it asked.
    assert len(refused) == 1 and "bob" in refused[0].reason and refused[0].principal == "alice", refused


async def test_the_owner_sees_and_answers_its_task(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with ModernClient(url, token="alice-secret") as alice:
        task_id, key = await waiting_task(alice)
        await alice.result("tasks/update", {"taskId": task_id, "inputResponses": {
            key: {"action": "accept", "content": {"approved": True}}}})

        assert (await in_status(alice, task_id, "completed"))["result"]["content"][0]["text"] == "approved 5"
        page = await alice.result("tools/call", {"name": "list_tasks", "arguments": {}})
        assert all(t["principal"] == "alice" for t in page["structuredContent"]["tasks"])


async def test_a_host_that_is_not_ours_is_refused(stack: tuple[str, Settings]) -> None:
    url, _ = stack
    async with ModernClient(url, token="alice-secret") as alice:
        response = await alice.post("tools/list", headers={"Host": "rebound.example:80"})
        assert response.status_code in (400, 403, 421), response.status_code


def test_no_unauthenticated_serving_beyond_loopback(settings: Settings, tmp_path: Path) -> None:
    refused = subprocess.run(LEDGER + ["server", "examples/demo.py", "--host", "0.0.0.0", "--port", str(free_port())],
                             capture_output=True, text=True, timeout=60, env=role_environment(settings))
    assert refused.returncode == 2
    assert "refusing to serve without authentication on 0.0.0.0" in refused.stderr
    assert "Traceback" not in refused.stderr
    bad = tmp_path / "tokens"
    bad.write_text("only-a-token\n")
    malformed = subprocess.run(LEDGER + ["server", "examples/demo.py"], capture_output=True, text=True, timeout=60,
                               env={**role_environment(settings), "LEDGER_TOKENS_FILE": str(bad)})
    assert malformed.returncode == 2 and "expected 'TOKEN PRINCIPAL'" in malformed.stderr
