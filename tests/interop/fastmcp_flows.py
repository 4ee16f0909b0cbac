"""The FastMCP 4 client against a ledger server, as its users write it; run as its own process.

    python tests/interop/fastmcp_flows.py URL tasks   # with fastmcp-tasks: tasks/get + tasks/update
    python tests/interop/fastmcp_flows.py URL mrtr    # without it: multi round-trip tools/call

It prints one JSON object: the result text of each flow.
Importing ``fastmcp_tasks`` turns the tasks extension on for every client of the process, which
is why each mode runs in a process of its own.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import mcp_types


async def answer(message: str, response_type: Any, params: Any, context: Any) -> mcp_types.ElicitResult:
    """A person who approves, picks two nights from 1 December, and confirms."""
    fields = params.requested_schema["properties"]
    if "approved" in fields:
        return mcp_types.ElicitResult(action="accept", content={"approved": True})
    if "nights" in fields:
        return mcp_types.ElicitResult(action="accept", content={"start_date": "2026-12-01", "nights": 2})
    return mcp_types.ElicitResult(action="accept", content={"confirm": True})


async def main(url: str, mode: str) -> dict[str, Any]:
    if mode == "tasks":
        import fastmcp_tasks  # noqa: F401  (the import is what enables the extension)
    from fastmcp import Client

    report: dict[str, Any] = {}
    async with Client(url, elicitation_handler=answer, timeout=60) as client:
        report["approve_expense"] = (await client.call_tool(
            "approve_expense", {"amount": 12.5, "description": "dinner"})).content[0].text
        report["plan_trip"] = (await client.call_tool("plan_trip", {"destination": "Lisbon"})).content[0].text
        if mode == "tasks":
            from fastmcp_tasks import call_tool_task

            task = await call_tool_task(client, "count_slowly", {"n": 200})
            await task.wait(state="working", timeout=30)
            await task.cancel()
            report["cancelled"] = (await task.status()).status
    return report


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(sys.argv[1], sys.argv[2]))), flush=True)
