"""What a running tool sees of its task: ``elicit``, ``step``, ``report_progress``, ``task_id``.

Every call is journaled. When a task resumes after its coroutine was dropped, the tool runs again
from the top and each call is answered from the journal instead of being repeated: an answered
elicitation returns its recorded answer, a recorded step its recorded result. A replay that asks
something other than what was recorded raises ``NonDeterminismError``, never a wrong answer.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar, overload

from pydantic import BaseModel

from ledger.contract.elicitation import requested_schema, same_schema, schema_json
from ledger.contract.events import (
    ElicitationRequested,
    ProgressReported,
    ResponseAction,
    ResponseSubmitted,
    StepRecorded,
    TaskEvent,
    derived_id,
)
from ledger.engine.journal import Asked, Journal

T = TypeVar("T", bound=BaseModel)


class NonDeterminismError(RuntimeError):
    """A replayed tool asked a different question, or ran a different step, than its journal records."""


@dataclass(frozen=True, slots=True)
class Elicited(Generic[T]):
    """A person's answer: ``action`` and, when accepted, the content (validated)."""

    action: ResponseAction
    content: Any = None

    @property
    def accepted(self) -> bool:
        return self.action == "accept"


class RunHost(Protocol):
    """The worker side of a run: appending events and waiting for an answer."""

    async def append(self, event: TaskEvent) -> None: ...

    async def answer(self, elicitation_id: str) -> ResponseSubmitted: ...


class Context:
    def __init__(self, journal: Journal, host: RunHost, actor: str) -> None:
        self._journal = journal
        self._host = host
        self._actor = actor
        self._next_elicitation = 0
        self._next_step = 0
        self._reports = 0

    @property
    def task_id(self) -> str:
        return self._journal.task_id

    @property
    def principal(self) -> str | None:
        return self._journal.principal

    @overload
    async def elicit(self, message: str, schema: type[T]) -> Elicited[T]: ...

    @overload
    async def elicit(self, message: str, schema: dict[str, Any]) -> Elicited[Any]: ...

    async def elicit(self, message: str, schema: type[BaseModel] | dict[str, Any]) -> Elicited[Any]:
        """Ask the person for input; the task waits (holding nothing) until they answer."""
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
            )
            await self._host.append(recorded)
        elif recorded.message != message or not same_schema(recorded.requested_schema_json, asked_json):
            raise NonDeterminismError(
                f"elicitation #{sequence} of task {self.task_id} differs from its journal: "
                f"recorded {recorded.message!r} with schema {recorded.requested_schema_json}, "
                f"replay asked {message!r} with schema {asked_json}"
            )
        response = self._journal.response(recorded.elicitation_id) or await self._host.answer(recorded.elicitation_id)
        return _elicited(response, schema)

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
            return json.loads(recorded.result_json)
        value = fn()
        if inspect.isawaitable(value):
            value = await value
        result_json = json.dumps(value, separators=(",", ":"))
        await self._host.append(
            StepRecorded(event_id=derived_id(self.task_id, self._actor, "step", sequence), task_id=self.task_id,
                         principal=self.principal, actor=self._actor, name=name, sequence=sequence,
                         result_json=result_json)
        )
        return json.loads(result_json)

    async def report_progress(self, progress: float, total: float | None = None, message: str | None = None) -> None:
        if self._journal.ahead_of(self._next_elicitation, self._next_step):
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


def _elicited(response: ResponseSubmitted, schema: type[BaseModel] | dict[str, Any]) -> Elicited[Any]:
    if response.action != "accept":
        return Elicited(response.action)
    content = json.loads(response.content_json) if response.content_json else {}
    if isinstance(schema, type):
        content = schema.model_validate(content)
    return Elicited("accept", content)

