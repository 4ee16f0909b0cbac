"""One readable line per task transition, as ``ledger dev`` prints them while it runs:

    16:40:01.123  3f2a1b9c  approve_expense  asked: Approve expense of 20.0 for 'train'? (anonymous)

made from the status rows a server's live view moves between, so it shows what any server or
worker did, from the log.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

from projections.status import TIMED_OUT, TaskRow

SHORT_ID = 8


def change(before: TaskRow | None, after: TaskRow | None) -> str | None:
    """What happened between two rows of a task, in a few words (None: nothing worth a line)."""
    if after is None:
        return None
    who = after.principal or "anonymous"
    if before is None:
        return f"created by {who}"
    if after.status != before.status and after.terminal:
        if after.status == "failed":
            return f"failed: {after.error or after.status_message}"
        if after.status == "cancelled":
            return f"cancelled: {after.status_message}"
        return "completed with an error result" if after.is_error else "completed"
    asked = [p for p in after.pending if before.pending_elicitation(p.elicitation_id) is None]
    if asked:
        return "; ".join(f"asked: {p.message}" for p in asked) + f" ({who})"
    answered = after.answers[len(before.answers):]
    if answered:
        resumed = "; resumed" if after.status == "working" else ""
        if all(a.action == TIMED_OUT for a in answered):
            return f"timed out: no answer by the question's deadline{resumed}"
        actions = ", ".join(a.action for a in answered)
        return f"answered ({actions}) by {who}{resumed}"
    if after.cancel_requested and not before.cancel_requested:
        return f"cancel requested by {who}"
    return None


def printer(out: TextIO = sys.stdout) -> Callable[[TaskRow | None, TaskRow | None], None]:
    """A view listener printing a line for each transition worth one."""
    def print_change(before: TaskRow | None, after: TaskRow | None) -> None:
        happened = change(before, after)
        if happened is not None and after is not None:
            stamp = time.strftime("%H:%M:%S", time.localtime(after.last_updated_at / 1000))
            millis = after.last_updated_at % 1000
            print(f"{stamp}.{millis:03d}  {after.task_id[:SHORT_ID]}  {after.tool}  {happened}", file=out, flush=True)
    return print_change
