"""What a fault test checks on the log once the faults are over."""

from __future__ import annotations

from collections import Counter
from subprocess import Popen
from typing import NamedTuple

from ledger.contract.events import TaskCompleted, TaskEvent
from ledger.settings import Settings
from tests.support.engine import all_events
from tests.support.spawn import confirmed_appends


class LogAfterFaults(NamedTuple):
    events: list[TaskEvent]
    on_topic: int
    confirmed: int
    unconfirmed: int


async def checked_log(settings: Settings, roles: list[Popen[str]], task_ids: list[str]) -> LogAfterFaults:
    """The topic once the faults are over, checked: nothing the log confirmed is lost, and every one
    of ``task_ids`` completed exactly once."""
    events = await all_events(settings)
    on_topic, confirmed, unconfirmed = nothing_lost(events, roles)
    completed_once(events, task_ids)
    return LogAfterFaults(events, on_topic, confirmed, unconfirmed)


def nothing_lost(events: list[TaskEvent], roles: list[Popen[str]]) -> tuple[int, int, int]:
    """(events on the topic, confirmed by the log, not confirmed), checked: every confirmed
    event is there, and nothing but what was appended. An event sent again by a new producer, or by a
    re-run after its append timed out, may be on the topic twice with one id: ids are counted once."""
    confirmed = unconfirmed = 0
    for role in roles:
        counted = confirmed_appends(role)
        confirmed, unconfirmed = confirmed + counted[0], unconfirmed + counted[1]
    distinct = len({event.event_id for event in events})
    assert confirmed <= len(events) and distinct <= confirmed + unconfirmed, \
        (len(events), distinct, confirmed, unconfirmed)
    return len(events), confirmed, unconfirmed


def completed_once(events: list[TaskEvent], task_ids: list[str]) -> None:
    completions = Counter(e.task_id for e in events if isinstance(e, TaskCompleted))
    assert all(completions[task_id] == 1 for task_id in task_ids), completions.most_common(3)
    assert set(completions.values()) <= {1}
