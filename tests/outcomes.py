"""What a fault test checks on the log once the faults are over."""

from __future__ import annotations

from collections import Counter
from subprocess import Popen

from ledger.events import TaskCompleted, TaskEvent
from tests.spawn import confirmed_appends


def nothing_lost(events: list[TaskEvent], roles: list[Popen[str]]) -> tuple[int, int, int]:
    """(events on the topic, confirmed by the log, not confirmed), checked: every confirmed
    event is there, and nothing but what was appended."""
    confirmed = unconfirmed = 0
    for role in roles:
        counted = confirmed_appends(role)
        confirmed, unconfirmed = confirmed + counted[0], unconfirmed + counted[1]
    assert confirmed <= len(events) <= confirmed + unconfirmed, (len(events), confirmed, unconfirmed)
    return len(events), confirmed, unconfirmed


def completed_once(events: list[TaskEvent], task_ids: list[str]) -> None:
    completions = Counter(e.task_id for e in events if isinstance(e, TaskCompleted))
    assert all(completions[task_id] == 1 for task_id in task_ids), completions.most_common(3)
    assert set(completions.values()) <= {1}
