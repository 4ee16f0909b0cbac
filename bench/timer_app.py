"""The tool bench/timers.py seeds the histories of: it waits on a time, a sleep or a question's deadline,
then finishes."""

from __future__ import annotations

from ledger import App, Context

app = App("timer-bench")

QUESTION = "Still there?"
SCHEMA = {"type": "object", "properties": {"yes": {"type": "boolean"}}, "required": ["yes"]}


@app.tool
async def wait_then_finish(kind: str, ctx: Context) -> str:
    if kind == "sleep":
        await ctx.sleep(1)  # the recorded duration counts, not this one
    else:
        await ctx.elicit(QUESTION, SCHEMA, timeout=1)
    return "finished"
