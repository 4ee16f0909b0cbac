"""The roles as separate processes: ``ledger dev`` as a new user runs it, servers and workers that
share one broker, and a worker SIGKILLed while one task waits and another runs."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import time
import uuid
from dataclasses import replace

import httpx2 as httpx
import mcp_types as types
import pytest

from ledger.contract.events import TaskCompleted, TaskCreated, TaskStarted
from ledger.kafka.appender import EventLog
from ledger.kafka.broker import free_port
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.engine import history
from tests.support.mcp_client import answer_first_pending, call_as_task, connect, get_task, poll_until, task_result
from tests.support.raw_http import ModernClient
from tests.support.spawn import LEDGER, role_environment, spawned, wait_for_line
from tests.support.stack import in_status

DEMO = "examples/demo.py"


def approve(params: types.ElicitRequestFormParams) -> types.ElicitResult:
    return types.ElicitResult(action="accept", content={"approved": True})


def counted(task: dict) -> int:
    """How far count_slowly has counted, from its status message ("counted 7 of 40")."""
    found = re.match(r"counted (\d+) of", task.get("statusMessage") or "")
    return int(found.group(1)) if found else 0


async def test_ledger_dev_as_a_new_user_runs_it() -> None:
    port = free_port()
    # A session of its own, as a terminal gives: Ctrl-C signals the whole foreground process group.
    process = subprocess.Popen(LEDGER + ["dev", "--port", str(port), "--metrics-port", str(free_port())],
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        banner = "".join(wait_for_line(process, "Press Ctrl-C", timeout=60))
        url = f"http://127.0.0.1:{port}/mcp"
        assert url in banner and "approve_expense, approve_or_escalate, remind, plan_trip, count_slowly" in banner
        assert "call approve_expense as a task" in banner and f"ledger-dev-broker-{port}.log" in banner
        assert f"ledger call approve_expense amount=1 description=example --url {url}" in banner
        assert "tansu" not in banner.lower()  # the broker's own output goes to its log file
        async with connect(url, approve) as client:
            relayed = await call_as_task(client, "approve_expense", {"amount": 20, "description": "train"})
            assert (await task_result(client, relayed["task"]["taskId"]))["content"][0]["text"] == "approved 20"
        async with connect(url) as client:
            trip = (await call_as_task(client, "plan_trip", {"destination": "Rome"}))["task"]["taskId"]
            await answer_first_pending(client, trip, {"start_date": "2027-03-01", "nights": 4})
            await answer_first_pending(client, trip, {"confirm": True})
            result = await task_result(client, trip)
        assert result["content"][0]["text"] == "booked Rome for 4 nights from 2027-03-01"
        os.killpg(process.pid, signal.SIGINT)
        assert process.wait(30) == 0
        output = process.stdout.read()
        assert "ledger dev: stopped" in output and "Traceback" not in output and "ERROR" not in output, output
        # One line per transition, as it happened: time, short task id, tool, what, who.
        short = trip[:8]
        assert re.search(rf"\d\d:\d\d:\d\d\.\d{{3}}  {short}  plan_trip  created by anonymous", output), output
        assert f"{short}  plan_trip  asked: Book 4 nights in Rome from 2027-03-01? (anonymous)" in output, output
        assert f"{short}  plan_trip  answered (accept) by anonymous; resumed" in output, output
        assert f"{short}  plan_trip  completed" in output, output
    finally:
        process.kill()


def test_role_errors_are_one_clear_line() -> None:
    for args, message in [
        (["server", "no_such_module:app"], "cannot import 'no_such_module'"),
        (["worker", "missing.py"], "no such file: missing.py"),
        (["worker", "examples/demo.py:nothing"], "has no attribute 'nothing'"),
        (["server", DEMO, "--port", "0"], "--port must be between 1 and 65535"),
    ]:
        result = subprocess.run(LEDGER + args, capture_output=True, text=True, timeout=60)
        assert result.returncode == 2, result
        assert message in result.stderr and "Traceback" not in result.stderr


@pytest.fixture
def shared(settings: Settings) -> Settings:
    return replace(settings, topic_prefix=f"roles-{uuid.uuid4().hex[:10]}")


async def test_create_on_one_server_answer_on_a_second_and_read_on_a_third(shared: Settings) -> None:
    await ensure_topics(shared)
    ports = [free_port(), free_port(), free_port()]
    with spawned(["worker", DEMO], shared, "ledger worker"), \
            spawned(["server", DEMO, "--port", str(ports[0])], shared, "serving"), \
            spawned(["server", DEMO, "--port", str(ports[1])], shared, "serving"), \
            spawned(["server", DEMO, "--port", str(ports[2])], shared, "serving"):
        first, second, third = (f"http://127.0.0.1:{p}/mcp" for p in ports)
        async with connect(first) as one, connect(second) as two, connect(third) as three:
            task_id = (await call_as_task(one, "approve_expense", {"amount": 8, "description": "map"}))["task"]["taskId"]
            assert (await get_task(two, task_id))["taskId"] == task_id
            await answer_first_pending(two, task_id, {"approved": True})
            await poll_until(three, task_id, lambda t: t["status"] == "completed")
            assert (await task_result(three, task_id))["content"][0]["text"] == "approved 8"


@pytest.mark.slow
async def test_a_sigkilled_worker_hands_waiting_and_running_tasks_to_another(shared: Settings) -> None:
    shared = replace(shared, hot_window_ms=60_000)  # the waiting task is hot in the worker that dies
    await ensure_topics(shared)
    port = free_port()
    with spawned(["server", DEMO, "--port", str(port)], shared, "serving"):
        url = f"http://127.0.0.1:{port}/mcp"
        async with connect(url) as client:
            with spawned(["worker", DEMO], shared, "ledger worker") as doomed:
                waiting = (await call_as_task(client, "approve_expense", {"amount": 4, "description": "ink"}))["task"]["taskId"]
                running = (await call_as_task(client, "count_slowly", {"n": 40}))["task"]["taskId"]
                await poll_until(client, waiting, lambda t: t["status"] == "input_required")
                await poll_until(client, running, lambda t: counted(t) >= 3)
                doomed.send_signal(signal.SIGKILL)
                doomed.wait(10)
            with spawned(["worker", DEMO], shared, "ledger worker"):
                await answer_first_pending(client, waiting, {"approved": True})
                await poll_until(client, waiting, lambda t: t["status"] == "completed", timeout=60)
                await poll_until(client, running, lambda t: t["status"] == "completed", timeout=60)
                assert (await task_result(client, waiting))["content"][0]["text"] == "approved 4"
                assert (await task_result(client, running))["content"][0]["text"] == "counted 40"
    for task_id in (waiting, running):
        events = await history(shared, task_id)
        assert sum(isinstance(e, TaskCompleted) for e in events) == 1
        actors = {e.actor for e in events if isinstance(e, TaskStarted)}
        assert len(actors) == 2, f"task {task_id} was not resumed by a second worker: {actors}"


@pytest.mark.slow
async def test_a_thousand_concurrent_approvals_all_complete(shared: Settings, broker_kind: str) -> None:
    if broker_kind == "kafka":
        pytest.skip("on Kafka the fault tests each run 1,000 flows and more (tests/faults/test_brokers.py)")
    await ensure_topics(shared)
    port = free_port()
    with spawned(["worker", DEMO], shared, "ledger worker"), \
            spawned(["server", DEMO, "--port", str(port)], shared, "serving"):
        async with connect(f"http://127.0.0.1:{port}/mcp") as client:
            gate = asyncio.Semaphore(100)

            async def create(i: int) -> str:
                async with gate:
                    created = await call_as_task(client, "approve_expense", {"amount": i, "description": f"item {i}"})
                    return created["task"]["taskId"]

            task_ids = await asyncio.gather(*(create(i) for i in range(1000)))

            async def finish(i: int, task_id: str) -> str:
                async with gate:
                    await answer_first_pending(client, task_id, {"approved": i % 2 == 0})
                    await poll_until(client, task_id, lambda t: t["status"] == "completed", timeout=120)
                    return (await task_result(client, task_id))["content"][0]["text"]

            texts = await asyncio.gather(*(finish(i, t) for i, t in enumerate(task_ids)))
    assert texts == [f"{'approved' if i % 2 == 0 else 'rejected'} {i}" for i in range(1000)]


async def test_a_server_catching_up_listens_reports_progress_and_stops_on_sigterm(settings: Settings) -> None:
    # Enough history that reading it takes the server several seconds.
    await ensure_topics(settings)
    async with EventLog(settings) as log:
        for start in range(0, 150_000, 5_000):
            await log.append_many([TaskCreated(task_id=f"old-{i}", principal=None, actor="server:test", tool="count_slowly",
                                               arguments_json='{"n":1}', protocol="test")
                                   for i in range(start, start + 5_000)])
    port = free_port()
    process = subprocess.Popen(LEDGER + ["server", DEMO, "--port", str(port)], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=role_environment(settings))
    try:
        wait_for_line(process, "listening on", timeout=60)
        async with httpx.AsyncClient(timeout=10) as http:
            assert (await http.get(f"http://127.0.0.1:{port}/healthz")).status_code == 200
            mcp = await http.post(f"http://127.0.0.1:{port}/mcp", json={"jsonrpc": "2.0", "id": 1, "method": "ping"},
                                  headers={"Accept": "application/json, text/event-stream"})
            assert mcp.status_code == 503 and "catching up with the log" in mcp.text, mcp.text
        wait_for_line(process, "catching up with the log:", timeout=60)
        process.send_signal(signal.SIGTERM)
        stopping = time.monotonic()
        assert process.wait(15) == 0
        assert time.monotonic() - stopping < 10
        output = process.stdout.read()
        assert "Traceback" not in output and "ledger server: serving" not in output, output
    finally:
        process.kill()
        process.wait()


async def test_ledger_dev_names_the_apps_own_tools_and_is_quiet_when_asked(tmp_path) -> None:
    app = tmp_path / "greetings.py"
    app.write_text("from ledger import App\napp = App('greetings')\n\n@app.tool\nasync def greet(name: str) -> str:\n"
                   "    return f'hello {name}'\n")
    port = free_port()
    process = subprocess.Popen(LEDGER + ["dev", str(app), "--port", str(port), "--metrics-port", str(free_port()),
                                         "--quiet"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        banner = "".join(wait_for_line(process, "Press Ctrl-C", timeout=60))
        assert "call greet as a task" in banner and "approve_expense" not in banner, banner
        async with ModernClient(f"http://127.0.0.1:{port}/mcp") as client:
            task_id = (await client.result("tools/call", {"name": "greet", "arguments": {"name": "Ada"}}))["taskId"]
            await in_status(client, task_id, "completed")
        process.send_signal(signal.SIGINT)
        assert process.wait(30) == 0
        assert task_id[:8] not in process.stdout.read()  # --quiet: no line per transition
    finally:
        process.kill()
        process.wait()
