"""A task's journal as a worker keeps it: what was asked, answered and recorded, folded from the log.

The worker decides what a task needs from its journal alone (level-triggered), so it does the
same thing whether it saw each event live, read them back after a restart, or took the partition
over from a worker that died.
"""

from __future__ import annotations

from ledger.events import (
    ElicitationRequested,
    ResponseSubmitted,
    StepRecorded,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskEvent,
    TaskExpired,
    TaskFailed,
    TaskStarted,
)

ENDING = (TaskCompleted, TaskFailed, TaskCancelled, TaskExpired)


class Journal:
    """One task's replay journal. ``apply`` ignores events already applied (by ``event_id``)."""

    __slots__ = ("created", "partition", "offset", "attempts", "ended", "_asked", "_answers", "_steps", "_seen")

    def __init__(self, created: TaskCreated, partition: int, offset: int) -> None:
        self.created = created
        self.partition = partition
        self.offset = offset  # of the created event: the partition cannot be committed past it
        self.attempts = 0
        self.ended = False
        self._asked: list[ElicitationRequested] = []
        self._answers: dict[str, ResponseSubmitted] = {}
        self._steps: dict[int, StepRecorded] = {}
        self._seen: set[str] = {created.event_id}

    @property
    def task_id(self) -> str:
        return self.created.task_id

    def apply(self, event: TaskEvent) -> bool:
        """Fold ``event`` in; False when it was already applied."""
        if event.event_id in self._seen:
            return False
        self._seen.add(event.event_id)
        match event:
            case TaskStarted():
                self.attempts = max(self.attempts, event.attempt)
            case ElicitationRequested():
                if event.sequence == len(self._asked):
                    self._asked.append(event)
            case ResponseSubmitted():
                # The first answer in log order wins, as in the status projection.
                if any(a.elicitation_id == event.elicitation_id for a in self._asked):
                    self._answers.setdefault(event.elicitation_id, event)
            case StepRecorded():
                self._steps.setdefault(event.sequence, event)
            case _ if isinstance(event, ENDING):
                self.ended = True
        return True

    def elicitation(self, sequence: int) -> ElicitationRequested | None:
        return self._asked[sequence] if sequence < len(self._asked) else None

    def response(self, elicitation_id: str) -> ResponseSubmitted | None:
        return self._answers.get(elicitation_id)

    def step(self, sequence: int) -> StepRecorded | None:
        return self._steps.get(sequence)

    @property
    def waiting_for(self) -> ElicitationRequested | None:
        """The elicitation the task is parked on, if it asked one that is not answered yet."""
        if self._asked and self._asked[-1].elicitation_id not in self._answers:
            return self._asked[-1]
        return None
