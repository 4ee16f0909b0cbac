"""The hop trace (ledger/hops.py; ``bench/flow.py --trace``): a server and a worker started with
LEDGER_HOP_TRACE mark each hop of a task's flow in one file, on the clock they share, in the order the
hops happen."""

from __future__ import annotations

import uuid
from dataclasses import replace
from pathlib import Path

from ledger.kafka.broker import free_port
from ledger.kafka.topics import ensure_topics
from ledger.settings import Settings
from tests.support.mcp_client import answer_first_pending, call_as_task, connect, poll_until
from tests.support.spawn import DEMO, spawned


def in_order(marks: list[tuple[str, str]], expected: list[tuple[str, str]]) -> bool:
    """Whether ``expected`` occurs in ``marks`` in this order (other marks between them)."""
    remaining = iter(marks)
    return all(mark in remaining for mark in expected)


async def test_a_traced_flow_marks_every_hop_in_the_order_it_happened(settings: Settings, tmp_path: Path) -> None:
    traced = replace(settings, topic_prefix=f"hops-{uuid.uuid4().hex[:10]}")
    await ensure_topics(traced)
    trace, port = tmp_path / "hops", free_port()
    env = {"LEDGER_HOP_TRACE": str(trace)}
    with spawned(["worker", DEMO], traced, "ledger worker", env=env) as worker, \
            spawned(["server", DEMO, "--port", str(port)], traced, "serving", env=env) as server:
        async with connect(f"http://127.0.0.1:{port}/mcp") as client:
            task_id = (await call_as_task(client, "approve_expense", {"amount": 3, "description": "tea"}))["task"]["taskId"]
            await poll_until(client, task_id, lambda t: t["status"] == "input_required")
            await answer_first_pending(client, task_id, {"approved": True})
            await poll_until(client, task_id, lambda t: t["status"] == "completed")
    roles = {server.pid: "server", worker.pid: "worker"}
    lines = sorted(line.split(" ") for line in trace.read_text().splitlines())
    marks = [(roles[int(pid)], hop) for _, pid, hop, tasks in lines if task_id in tasks.split(",")]
    # What causes what (a confirmation may come after the reader has the event: Kafka confirms and serves it
    # once two brokers hold it).
    asked = [("server", "append.sent"), ("worker", "fetched"), ("worker", "run.started"), ("worker", "append.sent"),
             ("server", "fetched"), ("server", "view.applied")]
    answered = [("server", "append.sent"), ("worker", "fetched"), ("worker", "run.woken"), ("worker", "append.sent"),
                ("server", "fetched")]
    assert in_order(marks, asked + answered), marks
    assert marks.count(("server", "append.acked")) == marks.count(("server", "append.sent")) == 2, marks
    assert marks.count(("worker", "append.acked")) == marks.count(("worker", "append.sent")) == 2, marks
    requests = [hop for _, pid, hop, _ in lines if roles[int(pid)] == "server" and hop.startswith(("http.", "mcp."))]
    assert in_order(requests, ["http.received", "mcp.tools/call", "mcp.handled", "http.answered"]), requests
