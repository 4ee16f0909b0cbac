"""The demo tools `ledger dev` serves: an approval, a two-question trip plan, and a slow count."""

from __future__ import annotations

import asyncio
from typing import Annotated

from pydantic import Field

from ledger import App, Context

app = App("ledger-demo", instructions="Demo tools whose background tasks wait for a person.")

APPROVAL = {
    "type": "object",
    "properties": {"approved": {"type": "boolean"}, "note": {"type": "string"}},
    "required": ["approved"],
}
DATES = {
    "type": "object",
    "properties": {"start_date": {"type": "string", "format": "date"}, "nights": {"type": "integer"}},
    "required": ["start_date", "nights"],
}
CONFIRMATION = {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}


@app.tool(task_support="optional")
async def approve_expense(amount: float, description: str, ctx: Context) -> str:
    """Ask a person to approve an expense."""
    answer = await ctx.elicit(f"Approve expense of {amount} for {description!r}?", APPROVAL)
    if answer.accepted and answer.content.get("approved") is True:
        return f"approved {amount:g}"
    return f"rejected {amount:g}"


@app.tool(task_support="optional")
async def plan_trip(destination: str, ctx: Context) -> str:
    """Plan a trip: ask for dates, then for confirmation."""
    dates = await ctx.elicit(f"When do you want to go to {destination}?", DATES)
    if not dates.accepted:
        return f"trip to {destination} not planned"
    nights = dates.content["nights"]
    start = dates.content["start_date"]
    confirmation = await ctx.elicit(f"Book {nights} nights in {destination} from {start}?", CONFIRMATION)
    if confirmation.accepted and confirmation.content.get("confirm") is True:
        return f"booked {destination} for {nights} nights from {start}"
    return f"trip to {destination} for {nights} nights not booked"


@app.tool(task_support="optional", max_concurrency=16)
async def count_slowly(n: Annotated[int, Field(ge=0, le=10_000)], ctx: Context) -> str:
    """Count to n (at most 10,000), a step every 0.1 s, reporting progress; a worker runs 16 at most."""
    for i in range(1, n + 1):
        await asyncio.sleep(0.1)
        await ctx.report_progress(i, n, f"counted {i} of {n}")
    return f"counted {n}"
