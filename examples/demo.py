"""The demo tools `ledger dev` serves: an approval, one that escalates when nobody answers in time, a
reminder that sleeps first, a two-question trip plan, and a slow count."""

from __future__ import annotations

import asyncio
from datetime import timedelta
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
async def approve_or_escalate(
    amount: float, description: str, ctx: Context,
    answer_within_minutes: Annotated[float, Field(gt=0, le=30 * 24 * 60)] = 48 * 60,
) -> str:
    """Ask a person to approve an expense; with no answer in time (48 h unless told), ask their manager."""
    question = f"Approve expense of {amount} for {description!r}?"
    answer = await ctx.elicit(question, APPROVAL, timeout=timedelta(minutes=answer_within_minutes))
    if answer.timed_out:
        answer = await ctx.elicit(f"Escalated to you: nobody answered within {answer_within_minutes:g} min. "
                                  f"{question}", APPROVAL)
    if answer.accepted and answer.content.get("approved") is True:
        return f"approved {amount:g}"
    return f"rejected {amount:g}"


@app.tool(task_support="optional")
async def remind(
    about: str, ctx: Context, after_minutes: Annotated[float, Field(gt=0, le=30 * 24 * 60)] = 60,
) -> str:
    """Sleep (holding nothing, through any restart), then ask whether something is done."""
    await ctx.sleep(timedelta(minutes=after_minutes))
    answer = await ctx.elicit(f"Reminder, {after_minutes:g} min on: {about}. Is it done?", CONFIRMATION)
    done = answer.accepted and answer.content.get("confirm") is True
    return f"{about}: {'done' if done else 'not done'} ({ctx.now():%Y-%m-%d %H:%M:%S} UTC)"


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
