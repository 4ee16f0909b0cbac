"""A task's journal as a worker keeps it: what was asked, answered and recorded, folded from the log.

The worker decides what a task needs from its journal alone (level-triggered), so it does the
same thing whether it saw each event live, read them back after a restart, or took the partition
over from a worker that died.

A worker holds the journal of every open task of its partitions, most of them parked on a
question for hours, so a journal keeps little: the tool's arguments, each question as the three
fields a replay checks, and answers and step results Avro-encoded (about a third of the memory of
the decoded event), decoded when a run asks for one.
"""

from __future__ import annotations

from typing import NamedTuple

from ledger.contract.codec import Codec
from ledger.contract.events import (
    MULTI_ROUND,
    TERMINAL_EVENTS,
    AttemptFailed,
    CancelRequested,
    ElicitationExpired,
    ElicitationRequested,
    ResponseSubmitted,
    StepRecorded,
    TaskCreated,
    TaskEvent,
    TaskStarted,
    TimerFired,
    TimerSet,
)
from ledger.settings import MIN_TTL_MS

CODEC = Codec()
CANCELLED_BY_REQUEST = "The task was cancelled by request."


def abandoned(request_state_ttl_ms: int) -> str:
    """Why a multi round-trip task left waiting past its requestState's life is cancelled."""
    return (f"Abandoned: no round of the multi round-trip request answered its question within "
            f"{request_state_ttl_ms / 1000:g} s (LEDGER_REQUEST_STATE_TTL_MS), after which its requestState "
            f"cannot continue it.")


class Asked(NamedTuple):
    """A question the task asked, as a replay compares it with the one it asks again."""

    elicitation_id: str
    message: str
    requested_schema_json: str
    asked_at: int  # Unix ms
    deadline: int | None  # Unix ms when it stops waiting for an answer; None: never


class Journal:
    """One task's replay journal.

    ``apply`` says whether an event changed the journal: a repeat (a producer retry's copy, or a
    worker's own write read back) changes nothing, and neither does an event the fold ignores.
    """

    __slots__ = ("task_id", "principal", "tool", "arguments_json", "created_at", "partition", "offset", "ttl_ms",
                 "expires_at", "expired", "rounds", "attempts", "failures", "retry_at", "ended", "end_read", "ending",
                 "cancel_reason", "_asked", "_answers", "_steps", "_timers", "_fired")

    def __init__(self, created: TaskCreated, partition: int, offset: int) -> None:
        self.task_id = created.task_id
        self.principal = created.principal
        self.tool = created.tool
        self.arguments_json = created.arguments_json
        self.created_at = created.occurred_at
        self.partition = partition
        self.offset = offset  # of the created event: the partition cannot be committed past it
        # Unix ms when the task's ttl runs out (None: never); ``expired`` once the worker saw it run out.
        self.ttl_ms = created.ttl_ms
        # A task from before ttls were enforced may carry a shorter one than ledger now gives (even 0).
        self.expires_at = None if created.ttl_ms is None else created.occurred_at + max(created.ttl_ms, MIN_TTL_MS)
        self.expired = False
        # Created by a multi round-trip request: only that request's client can answer its questions.
        self.rounds = (created.protocol or "").endswith(f"/{MULTI_ROUND}")
        self.attempts = 0  # runs started (TaskStarted): a re-run after parking counts too
        self.failures = 0  # attempts that raised under a retry policy (AttemptFailed)
        self.retry_at: int | None = None  # when the next attempt may start (Unix ms), while it waits to
        self.ended = False
        # The worker applies its own writes at once; an end counts for commits only once read back
        # from the log, where the fence may have ignored it (projections.fence).
        self.end_read = False
        # The task's terminal event is being appended: nothing else may end it meanwhile (one writer,
        # one terminal event; see Worker.end).
        self.ending = False
        self.cancel_reason: str | None = None  # set once a cancel was requested
        self._asked: list[Asked] = []  # by sequence
        # None until the first: most parked tasks have neither, and an empty dict costs 64 bytes.
        self._answers: dict[str, bytes] | None = None
        self._steps: dict[int, bytes] | None = None
        self._timers: list[int] | None = None  # each ctx.sleep's due time (Unix ms), by sequence
        self._fired: dict[int, int] | None = None  # sequence -> when it fired (Unix ms)

    def apply(self, event: TaskEvent) -> bool:
        """Fold ``event`` in; False when it changed nothing."""
        match event:
            case TaskStarted():
                if event.attempt <= self.attempts:
                    return False
                self.attempts = event.attempt
                self.retry_at = None
            case AttemptFailed():
                if event.attempt != self.failures + 1:
                    return False
                self.failures = event.attempt
                self.retry_at = event.retry_at
            case ElicitationRequested():
                if event.sequence != len(self._asked):
                    return False
                self._asked.append(Asked(event.elicitation_id, event.message, event.requested_schema_json,
                                         event.occurred_at, event.deadline))
            case ResponseSubmitted() | ElicitationExpired():
                # The first answer in log order wins, as in the status projection; a deadline that passed
                # is the answer when it reached the log first.
                answers = self._answers or {}
                asked = any(question.elicitation_id == event.elicitation_id for question in self._asked)
                if not asked or event.elicitation_id in answers:
                    return False
                answers[event.elicitation_id] = CODEC.encode(event)
                self._answers = answers
            case StepRecorded():
                steps = self._steps or {}
                if event.sequence in steps:
                    return False
                steps[event.sequence] = CODEC.encode(event)
                self._steps = steps
            case TimerSet():
                timers = self._timers or []
                if event.sequence != len(timers):
                    return False
                timers.append(event.due)
                self._timers = timers
            case TimerFired():
                fired = self._fired or {}
                if self._timers is None or event.sequence >= len(self._timers) or event.sequence in fired:
                    return False
                fired[event.sequence] = event.occurred_at
                self._fired = fired
            case CancelRequested():
                if self.cancel_reason is not None:
                    return False
                self.cancel_reason = event.reason or CANCELLED_BY_REQUEST
            case _ if isinstance(event, TERMINAL_EVENTS) and not self.ended:
                self.ended = True
            case _:
                return False
        return True

    def elicitation(self, sequence: int) -> Asked | None:
        return self._asked[sequence] if sequence < len(self._asked) else None

    def last_asked_at(self) -> int | None:
        """When the task asked its latest question (Unix ms), if it asked one."""
        return self._asked[-1].asked_at if self._asked else None

    def asked_at(self, elicitation_id: str) -> int | None:
        """When the question was asked (Unix ms), if this task asked it."""
        return next((q.asked_at for q in self._asked if q.elicitation_id == elicitation_id), None)

    def response(self, elicitation_id: str) -> ResponseSubmitted | ElicitationExpired | None:
        encoded = self._answers.get(elicitation_id) if self._answers else None
        return CODEC.decode(encoded) if encoded is not None else None  # type: ignore[return-value]

    def timer(self, sequence: int) -> int | None:
        """When the ``sequence``-th sleep is due (Unix ms), if the tool went to sleep that often."""
        return self._timers[sequence] if self._timers is not None and sequence < len(self._timers) else None

    def fired_at(self, sequence: int) -> int | None:
        """When the ``sequence``-th sleep ended (Unix ms), if it did."""
        return self._fired.get(sequence) if self._fired else None

    def due(self) -> int | None:
        """When what the task waits on is due (Unix ms): its next attempt, its timer, or its question's
        deadline; None when it waits on nothing, or on a question without one."""
        if self.retry_at is not None:
            return self.retry_at
        if self.sleeping:
            return self._timers[-1]  # type: ignore[index]
        return self._asked[-1].deadline if self.asking else None

    def overdue(self, now: int) -> Asked | int | None:
        """What the task waits on, if it is due by ``now`` (Unix ms): the question whose deadline passed,
        or the sequence of the timer whose time came."""
        due = self.due()
        if due is None or due > now or self.retry_at is not None:
            return None
        return len(self._timers) - 1 if self.sleeping else self._asked[-1]  # type: ignore[arg-type]

    def step(self, sequence: int) -> StepRecorded | None:
        encoded = self._steps.get(sequence) if self._steps else None
        return CODEC.decode(encoded) if encoded is not None else None  # type: ignore[return-value]

    def ahead_of(self, elicitations: int, steps: int, sleeps: int) -> bool:
        """Whether the journal holds a question, step or sleep beyond a run that has asked ``elicitations``,
        run ``steps`` and slept ``sleeps`` times so far: the run is re-running what an earlier run already did."""
        return elicitations < len(self._asked) or (self._steps is not None and steps <= max(self._steps)) or \
            (self._timers is not None and sleeps < len(self._timers))

    @property
    def waiting(self) -> bool:
        """Whether the task is parked: on a question not answered yet, asleep, or until its next attempt."""
        return self.retry_at is not None or self.asking or self.sleeping

    @property
    def asking(self) -> bool:
        """Whether the task asked a question that is not answered (nor timed out) yet."""
        return bool(self._asked) and not (self._answers and self._asked[-1].elicitation_id in self._answers)

    @property
    def sleeping(self) -> bool:
        """Whether the task sleeps on a timer that has not fired yet."""
        return self._timers is not None and len(self._fired or ()) < len(self._timers)
