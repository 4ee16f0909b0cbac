"""A task's journal as a worker keeps it: what was asked, answered and recorded, folded from the log.

The worker decides what a task needs from its journal alone (level-triggered), so it does the
same thing whether it saw each event live, read them back after a restart, or took the partition
over from a worker that died.

A worker holds the journal of every open task of its partitions, most of them parked on a
question for hours, so a journal keeps the events it needs again Avro-encoded (about a third of
the memory of the decoded event) and decodes one when a run asks for it.
"""

from __future__ import annotations

from ledger.codec import Codec
from ledger.events import (
    ElicitationRequested,
    ResponseSubmitted,
    StepRecorded,
    TaskCreated,
    TaskEvent,
    TaskStarted,
    TERMINAL_EVENTS,
)

CODEC = Codec()


class Journal:
    """One task's replay journal.

    ``apply`` says whether an event changed the journal: a repeat (a producer retry's copy, or a
    worker's own write read back) changes nothing, and neither does an event the fold ignores.
    """

    __slots__ = ("task_id", "principal", "tool", "partition", "offset", "attempts", "ended",
                 "_created", "_asked", "_answers", "_steps")

    def __init__(self, created: TaskCreated, partition: int, offset: int) -> None:
        self.task_id = created.task_id
        self.principal = created.principal
        self.tool = created.tool
        self.partition = partition
        self.offset = offset  # of the created event: the partition cannot be committed past it
        self.attempts = 0
        self.ended = False
        self._created = CODEC.encode(created)
        self._asked: list[tuple[str, bytes]] = []  # (elicitation id, encoded event) by sequence
        self._answers: dict[str, bytes] | None = None
        self._steps: dict[int, bytes] | None = None

    @property
    def created(self) -> TaskCreated:
        return CODEC.decode(self._created)  # type: ignore[return-value]

    def apply(self, event: TaskEvent) -> bool:
        """Fold ``event`` in; False when it changed nothing."""
        match event:
            case TaskStarted():
                if event.attempt <= self.attempts:
                    return False
                self.attempts = event.attempt
            case ElicitationRequested():
                if event.sequence != len(self._asked):
                    return False
                self._asked.append((event.elicitation_id, CODEC.encode(event)))
            case ResponseSubmitted():
                # The first answer in log order wins, as in the status projection.
                answers = self._answers or {}
                if event.elicitation_id in answers or all(asked != event.elicitation_id for asked, _ in self._asked):
                    return False
                answers[event.elicitation_id] = CODEC.encode(event)
                self._answers = answers
            case StepRecorded():
                steps = self._steps or {}
                if event.sequence in steps:
                    return False
                steps[event.sequence] = CODEC.encode(event)
                self._steps = steps
            case _ if isinstance(event, TERMINAL_EVENTS) and not self.ended:
                self.ended = True
            case _:
                return False
        return True

    def elicitation(self, sequence: int) -> ElicitationRequested | None:
        if sequence >= len(self._asked):
            return None
        return CODEC.decode(self._asked[sequence][1])  # type: ignore[return-value]

    def response(self, elicitation_id: str) -> ResponseSubmitted | None:
        encoded = self._answers.get(elicitation_id) if self._answers else None
        return CODEC.decode(encoded) if encoded is not None else None  # type: ignore[return-value]

    def step(self, sequence: int) -> StepRecorded | None:
        encoded = self._steps.get(sequence) if self._steps else None
        return CODEC.decode(encoded) if encoded is not None else None  # type: ignore[return-value]

    @property
    def waiting(self) -> bool:
        """Whether the task is parked: it asked a question that is not answered yet."""
        return bool(self._asked) and not (self._answers and self._asked[-1][0] in self._answers)
