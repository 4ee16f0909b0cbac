"""Flow latency of approve_expense through the `_meta` pattern, with server and worker as
separate processes on the embedded broker: create, create→input_required, answer→completed.

    python bench/latency.py [--flows 200] [--concurrency 1,16]

Status is read by polling tasks/get every 2 ms, so figures include up to ~2 ms of polling.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from ledger.broker import EmbeddedBroker, free_port  # noqa: E402
from ledger.settings import Settings  # noqa: E402
from ledger.topics import ensure_topics  # noqa: E402
from tests.raw_http import RawSession  # noqa: E402
from tests.spawn import spawned  # noqa: E402

PENDING = "io.modelcontextprotocol/pending-elicitations"
RESPONSE = "io.modelcontextprotocol/elicitation-response"


async def until(session: RawSession, task_id: str, status: str) -> dict:
    while True:
        task = (await session.call("tasks/get", {"taskId": task_id}))["result"]
        if task["status"] == status:
            return task
        await asyncio.sleep(0.002)


async def flow(session: RawSession, i: int) -> tuple[float, float, float]:
    start = time.perf_counter()
    created = await session.call("tools/call", {"name": "approve_expense", "task": {},
                                                "arguments": {"amount": i, "description": "bench"}})
    created_at = time.perf_counter()
    task_id = created["result"]["task"]["taskId"]
    task = await until(session, task_id, "input_required")
    asked_at = time.perf_counter()
    elicitation_id = task["_meta"][PENDING][0]["elicitationId"]
    answered_at = time.perf_counter()
    await session.call("tasks/get", {"taskId": task_id, "_meta": {RESPONSE: {
        "elicitationId": elicitation_id, "action": "accept", "content": {"approved": True}}}})
    await until(session, task_id, "completed")
    done_at = time.perf_counter()
    return created_at - start, asked_at - start, done_at - answered_at


def pct(values: list[float], q: float) -> float:
    return sorted(values)[min(len(values) - 1, int(q * len(values)))] * 1000


async def run(url: str, flows: int, concurrency: int) -> str:
    async with RawSession(url) as session:
        gate = asyncio.Semaphore(concurrency)

        async def gated(i: int) -> tuple[float, float, float]:
            async with gate:
                return await flow(session, i)

        started = time.perf_counter()
        results = await asyncio.gather(*(gated(i) for i in range(flows)))
        elapsed = time.perf_counter() - started
    create, asked, completed = (list(column) for column in zip(*results))
    return (f"| {concurrency} | {flows} | {flows / elapsed:.0f} | {statistics.median(create) * 1000:.1f} / "
            f"{pct(create, 0.99):.1f} | {statistics.median(asked) * 1000:.1f} / {pct(asked, 0.99):.1f} | "
            f"{statistics.median(completed) * 1000:.1f} / {pct(completed, 0.99):.1f} |")


async def main(flows: int, levels: list[int]) -> None:
    with EmbeddedBroker(port=free_port(), output=None) as broker:
        settings = Settings.from_env(bootstrap=broker.bootstrap, topic_prefix=f"bench-{uuid.uuid4().hex[:8]}")
        await ensure_topics(settings)
        port = free_port()
        with spawned(["worker", "examples/demo.py"], settings, "ledger worker"), \
                spawned(["server", "examples/demo.py", "--port", str(port)], settings, "serving"):
            url = f"http://127.0.0.1:{port}/mcp"
            await run(url, 20, 4)  # warm up: group assignment, connections
            print("| concurrency | flows | flows/s | create p50/p99 ms | create→input_required p50/p99 ms "
                  "| answer→completed p50/p99 ms |")
            print("|---|---|---|---|---|---|")
            for level in levels:
                print(await run(url, flows, level), flush=True)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--flows", type=int, default=200)
    parser.add_argument("--concurrency", default="1,16")
    args = parser.parse_args()
    asyncio.run(main(args.flows, [int(c) for c in args.concurrency.split(",")]))
