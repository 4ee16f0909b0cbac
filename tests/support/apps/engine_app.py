"""Tools that exercise the worker: journaled steps, changing questions, failures, slow runs."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

from pydantic import Field

from ledger import App, Context, Retry

app = App("engine-tests")

YES = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
QUESTIONS_ASKED: dict[str, int] = {}


@app.tool
async def journaled(ledger_file: str, ctx: Context) -> str:
    """Two side effects around a question; the file shows how often each really ran."""
    path = Path(ledger_file)
    first = await ctx.step("charge", lambda: _append(path, "charge"))
    await ctx.report_progress(1, 2, "charged")
    answer = await ctx.elicit("Ship it?", YES)
    second = await ctx.step("ship", lambda: _append(path, "ship"))
    await ctx.report_progress(2, 2, "shipped")
    return f"{first}+{second}:{answer.content['ok']}"


@app.tool
async def bulky(parts: int, ctx: Context) -> str:
    """Large journaled steps before a question: a history that takes many fetches to read back."""
    for part in range(parts):
        await ctx.step(f"part {part}", lambda: "x" * 100_000)
    await ctx.elicit("All parts made; ship?", YES)
    return f"shipped {parts}"


@app.tool
async def napping(seconds: float, ledger_file: str, ctx: Context) -> str:
    """A step, a sleep, a question that names the journal's clock: a re-run must see the same time."""
    created = ctx.now().isoformat()
    await ctx.step("note", lambda: _append(Path(ledger_file), "note"))
    await ctx.sleep(seconds)
    woke = ctx.now().isoformat()
    await ctx.elicit(f"Woke at {woke}; go on?", YES)
    return f"{created} {woke} {ctx.now().isoformat()}"


@app.tool(retry=Retry(max_attempts=3, initial_delay=0.2, backoff=2.0, non_retryable=(ValueError,)))
async def flaky(ledger_file: str, fail_attempts: int, ctx: Context) -> str:
    """A journaled step, then an error on each attempt up to ``fail_attempts``; a negative one is a ValueError."""
    charged = await ctx.step("charge", lambda: _append(Path(ledger_file), "charge"))
    if fail_attempts < 0:
        raise ValueError("the amount is not a number")
    if ctx.attempt <= fail_attempts:
        raise ConnectionError(f"the bank hung up on attempt {ctx.attempt}")
    return f"charged {charged} on attempt {ctx.attempt}"


@app.tool
async def fickle(ctx: Context) -> str:
    """Asks a different question each time it runs: a replay must notice."""
    count = QUESTIONS_ASKED[ctx.task_id] = QUESTIONS_ASKED.get(ctx.task_id, 0) + 1
    await ctx.elicit(f"Question number {count}?", YES)
    return "unreachable after a replay"


@app.tool
async def broken(reason: str) -> str:
    raise RuntimeError(reason)


@app.tool
async def sleepy(seconds: float, ctx: Context) -> str:
    await ctx.report_progress(0, seconds, "started")
    await asyncio.sleep(seconds)
    return "slept"


@app.tool(max_concurrency=2)
async def hog(seconds: Annotated[float, Field(gt=0, le=60)], ctx: Context) -> str:
    """A long run, of which a worker runs two at most."""
    await ctx.report_progress(0, seconds, "started")
    await asyncio.sleep(seconds)
    return "hogged"


@app.tool
async def chatty(reports: int, ctx: Context) -> str:
    """Progress as fast as it can report it, then a pause, more of it, and the end."""
    for i in range(1, reports + 1):
        await ctx.report_progress(i, 2 * reports, f"burst one {i}")
    await asyncio.sleep(1)
    for i in range(reports + 1, 2 * reports + 1):
        await ctx.report_progress(i, 2 * reports, f"burst two {i}")
    return "reported"


def _append(path: Path, line: str) -> int:
    with path.open("a") as f:
        f.write(line + "\n")
    return len(path.read_text().splitlines())


@app.tool
async def paced_steps(seconds: float, ctx: Context) -> str:
    """A step, a pause, another step: a run long enough to be caught in the middle."""
    await ctx.step("before", lambda: "before")
    await asyncio.sleep(seconds)
    await ctx.step("after", lambda: "after")
    return "paced"
