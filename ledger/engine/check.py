"""``ledger check``: the deploy-safety check. Every open task's journal is re-run against an app's current
code, with no side effect: its recorded steps return their recorded values, its answered questions their
answers, its ended sleeps at once, and the check of a task ends at the first thing its journal does not
hold (a step or question past it, or the question or sleep it waits on). A task whose code now asks
something else, or in another order, raises ``NonDeterminismError`` there, as a worker's re-run would
after the deploy: the check names it before the deploy instead.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterable
from typing import NamedTuple

from ledger.contract.events import (
    TERMINAL_EVENTS,
    ElicitationExpired,
    PartitionClaimed,
    ProgressReported,
    ResponseSubmitted,
    TaskCreated,
    TaskEvent,
)
from ledger.engine.app import App, InvalidArguments, UnknownTool
from ledger.engine.context import Context, NonDeterminismError, PastJournal
from ledger.engine.journal import Journal
from ledger.kafka.records import LogRecord
from projections.fence import Fence

ACTOR = "check:ledger"
RUN_TIMEOUT_S = 10.0


class Verdict(NamedTuple):
    task_id: str
    tool: str
    difference: str | None  # None: the code follows the journal as far as it goes


class _ReplayOnly:
    """The host of a checked run: nothing is written, nothing past the journal runs."""

    runs_side_effects = False

    async def append(self, event: TaskEvent) -> None:
        if not isinstance(event, ProgressReported):  # a report is no journal entry: the run goes on
            raise PastJournal

    async def answer(self, elicitation_id: str) -> ResponseSubmitted | ElicitationExpired:
        raise PastJournal

    async def wake(self, sequence: int) -> int:
        raise PastJournal


async def open_journals(batches: AsyncIterable[list[LogRecord]]) -> list[Journal]:
    """The journals of the tasks still open at the end of ``batches`` (the log read from its start), folded
    as the workers fold them: the claims decide whose writes count."""
    fence = Fence()
    journals: dict[str, Journal] = {}
    async for batch in batches:
        for record in batch:
            event = record.event
            if not fence.admits(record) or isinstance(event, PartitionClaimed):
                continue
            journal = journals.get(event.task_id)
            if journal is None:
                if isinstance(event, TaskCreated):
                    journals[event.task_id] = Journal(event, record.partition, record.offset)
            elif isinstance(event, TERMINAL_EVENTS):
                del journals[event.task_id]
            else:
                journal.apply(event)
    return list(journals.values())


async def check(app: App, journal: Journal, timeout_s: float = RUN_TIMEOUT_S) -> Verdict:
    """Re-run ``journal``'s task against ``app`` up to the end of the journal."""
    def verdict(difference: str | None) -> Verdict:
        return Verdict(journal.task_id, journal.tool, difference)

    if not journal.ahead_of(0, 0, 0):
        return verdict(None)  # nothing recorded yet that the code could disagree with
    context = Context(journal, _ReplayOnly(), ACTOR)
    try:
        tool = app.get(journal.tool)
        await asyncio.wait_for(tool.call(json.loads(journal.arguments_json), context), timeout_s)
    except PastJournal:
        return verdict(None)
    except NonDeterminismError as exc:
        return verdict(str(exc))
    except UnknownTool:
        return verdict(f"the app has no tool {journal.tool!r} any more")
    except InvalidArguments as exc:
        return verdict(f"the recorded arguments no longer fit: {exc}")
    except TimeoutError:
        return verdict(f"did not reach the end of its journal within {timeout_s:g} s (a long wait that is not "
                       f"ctx.sleep?): not checked")
    except Exception as exc:
        if not context.replaying:
            return verdict(None)  # past everything it recorded: what the code does next is new, not different
        return verdict(f"raised {type(exc).__name__}: {exc} before the end of its journal")
    if context.replaying:
        return verdict("ended before the end of its journal: the code no longer asks or does what it recorded next")
    return verdict(None)
