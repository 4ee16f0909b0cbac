"""What a running tool sees of its task: ``elicit``, ``step``, ``sleep``, ``now``, ``report_progress``,
``task_id``.

Every call is journaled. When a task resumes after its coroutine was dropped, the tool runs again
from the top and each call is answered from the journal instead of being repeated: an answered
elicitation returns its recorded answer, a recorded step its recorded result, a sleep that ended
returns at once. A replay that asks something other than what was recorded raises
``NonDeterminismError``, never a wrong answer.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Generic, Protocol, TypeVar, overload

from pydantic import BaseModel

from ledger.contract.elicitation import requested_schema, same_schema, schema_json
from ledger.contract.events import (
    ElicitationExpired,
    ElicitationRequested,
    ProgressReported,
    ResponseAction,
    ResponseSubmitted,
    StepRecorded,
    TaskEvent,
    TimerSet,
    derived_id,
)
from ledger.engine.journal import Asked, Journal

T = TypeVar("T", bound=BaseModel)
Timeout = float | timedelta | None  # seconds


class NonDeterminismError(RuntimeError):
    """A replayed tool asked a different question, or ran a different step, than its journal records."""


class PastJournal(BaseException):
    """Raised by a host that only replays (``ledger check``) where the run reaches what its journal does not
    hold. A BaseException, like the worker's ``Parked``, so that a tool's ``except Exception`` lets it by."""


@dataclass(frozen=True, slots=True)
class Elicited(Generic[T]):
    """A person's answer: ``action`` and, when accepted, the content (validated).

    ``timed_out``: nobody answered before the question's deadline; the action is then ``cancel``.
    """

    action: ResponseAction
    content: Any = None
    timed_out: bool = False

    @property
    def accepted(self) -> bool:
        return self.action == "accept"


class RunHost(Protocol):
    """The worker side of a run: appending events and waiting for an answer. ``runs_side_effects`` is False
    for a host that only replays: a step past the journal raises ``PastJournal`` instead of running."""

    runs_side_effects: bool

    async def append(self, event: TaskEvent) -> None: ...

    async def answer(self, elicitation_id: str) -> ResponseSubmitted | ElicitationExpired: ...

    async def wake(self, sequence: int) -> int:
        """Wait for the ``sequence``-th timer to fire; when it fired (Unix ms)."""
        ...


class Context:
    def __init__(self, journal: Journal, host: RunHost, actor: str) -> None:
        self._journal = journal
        self._host = host
        self._actor = actor
        self._next_elicitation = 0
        self._next_step = 0
        self._next_sleep = 0
        self._reports = 0
        self._clock = journal.created_at  # the time of the last thing the run read from its journal or wrote

    @property
    def task_id(self) -> str:
        return self._journal.task_id

    @property
    def principal(self) -> str | None:
        return self._journal.principal

    @property
    def attempt(self) -> int:
        """Which attempt this run is, from 1: more than 1 after the tool raised under its retry policy."""
        return self._journal.failures + 1

    @overload
    async def elicit(self, message: str, schema: type[T], *, timeout: Timeout = None) -> Elicited[T]: ...

    @overload
    async def elicit(self, message: str, schema: dict[str, Any], *, timeout: Timeout = None) -> Elicited[Any]: ...

    async def elicit(self, message: str, schema: type[BaseModel] | dict[str, Any], *,
                     timeout: Timeout = None) -> Elicited[Any]:
        """Ask the person for input; the task waits (holding nothing) until they answer.

        With ``timeout`` (seconds, or a ``timedelta``) the question waits that long from when it was
        first asked, as the log recorded it: if no answer reached the log by then, the tool goes on
        with ``timed_out`` set and the action ``cancel``, and a later answer is not taken. A re-run keeps
        the recorded deadline whatever ``timeout`` it passes.
        """
        timeout_ms = None if timeout is None else _milliseconds(timeout, "an elicitation's timeout")
        asked_json = schema_json(requested_schema(schema))
        sequence = self._next_elicitation
        self._next_elicitation += 1
        recorded: Asked | ElicitationRequested | None = self._journal.elicitation(sequence)
        if recorded is None:
            recorded = ElicitationRequested(
                event_id=derived_id(self.task_id, self._actor, "asked", sequence),
                task_id=self.task_id,
                principal=self.principal,
                actor=self._actor,
                elicitation_id=derived_id(self.task_id, self._actor, "question", sequence),
                sequence=sequence,
                message=message,
                requested_schema_json=asked_json,
                timeout_ms=timeout_ms,
            )
            await self._host.append(recorded)
        elif recorded.message != message or not same_schema(recorded.requested_schema_json, asked_json):
            raise NonDeterminismError(
                f"elicitation #{sequence} of task {self.task_id} differs from its journal: "
                f"recorded {recorded.message!r} with schema {recorded.requested_schema_json}, "
                f"replay asked {message!r} with schema {asked_json}"
            )
        response = self._journal.response(recorded.elicitation_id) or await self._host.answer(recorded.elicitation_id)
        self._clock = max(self._clock, response.occurred_at)
        return _elicited(response, schema)

    async def sleep(self, duration: float | timedelta) -> None:
        """Wait ``duration`` (seconds, or a ``timedelta``) holding nothing: the task parks as on a question,
        and the partition's worker resumes it at the time, whatever restarted meanwhile. A re-run keeps the
        recorded time whatever ``duration`` it passes, and a sleep that ended returns at once."""
        duration_ms = _milliseconds(duration, "a sleep")
        sequence = self._next_sleep
        self._next_sleep += 1
        if self._journal.timer(sequence) is None:
            timer = TimerSet(event_id=derived_id(self.task_id, self._actor, "timer", sequence), task_id=self.task_id,
                             principal=self.principal, actor=self._actor, sequence=sequence, duration_ms=duration_ms)
            await self._host.append(timer)
        fired_at = self._journal.fired_at(sequence) or await self._host.wake(sequence)
        self._clock = max(self._clock, fired_at)

    def now(self) -> datetime:
        """The time as the journal has it: when the task was created, or when what the tool last waited on
        (an answer, a sleep) came, or its last step was recorded. A re-run sees the same time at the same
        point, where the wall clock would differ."""
        return datetime.fromtimestamp(self._clock / 1000, UTC)

    async def step(self, name: str, fn: Callable[[], Any]) -> Any:
        """Run a side effect once: a replay returns its recorded (JSON) result instead of running it."""
        sequence = self._next_step
        self._next_step += 1
        recorded = self._journal.step(sequence)
        if recorded is not None:
            if recorded.name != name:
                raise NonDeterminismError(
                    f"step #{sequence} of task {self.task_id} differs from its journal: "
                    f"recorded {recorded.name!r}, replay ran {name!r}"
                )
            self._clock = max(self._clock, recorded.occurred_at)
            return json.loads(recorded.result_json)
        if not self._host.runs_side_effects:
            raise PastJournal
        value = fn()
        if inspect.isawaitable(value):
            value = await value
        result_json = json.dumps(value, separators=(",", ":"))
        step = StepRecorded(event_id=derived_id(self.task_id, self._actor, "step", sequence), task_id=self.task_id,
                            principal=self.principal, actor=self._actor, name=name, sequence=sequence,
                            result_json=result_json)
        await self._host.append(step)
        self._clock = max(self._clock, step.occurred_at)
        return json.loads(result_json)

    @property
    def replaying(self) -> bool:
        """Whether the run is still going over what its journal holds (a question, step or sleep ahead)."""
        return self._journal.ahead_of(self._next_elicitation, self._next_step, self._next_sleep)

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        if self.replaying:
            return  # a re-run repeating a report that an earlier run wrote before reaching its journaled point
        report = self._reports
        self._reports += 1
        # A run's reports are numbered from its attempt: a re-run, a new attempt, numbers its own.
        position = f"{self._journal.attempts}.{report}"
        await self._host.append(
            ProgressReported(event_id=derived_id(self.task_id, self._actor, "progress", position), task_id=self.task_id,
                             principal=self.principal, actor=self._actor, progress=progress, total=total,
                             message=message)
        )


def _milliseconds(duration: float | timedelta, what: str) -> int:
    seconds = duration.total_seconds() if isinstance(duration, timedelta) else duration
    if isinstance(seconds, bool) or not isinstance(seconds, int | float) or not 0 <= seconds < float("inf"):
        raise ValueError(f"{what} is seconds (a number of 0 or more) or a timedelta, got {duration!r}")
    return round(seconds * 1000)


def _elicited(response: ResponseSubmitted | ElicitationExpired,
              schema: type[BaseModel] | dict[str, Any]) -> Elicited[Any]:
    if isinstance(response, ElicitationExpired):
        return Elicited("cancel", timed_out=True)
    if response.action != "accept":
        return Elicited(response.action)
    content = json.loads(response.content_json) if response.content_json else {}
    if isinstance(schema, type):
        content = schema.model_validate(content)
    return Elicited("accept", content)

