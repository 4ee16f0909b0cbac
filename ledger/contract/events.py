"""Task events: the immutable records every task transition is written as.

Each class mirrors one record of the ``payload`` union in ``schemas/task_event.vN.avsc`` with the
envelope fields (``event_id``, ``task_id``, ``occurred_at``, ``principal``, ``actor``) flattened
in. ``tests/test_events.py`` proves the two agree field for field.
"""

from __future__ import annotations

import copy
import time
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any, ClassVar, Literal, Self

from pydantic import BaseModel, ConfigDict, Field

ResponseAction = Literal["accept", "decline", "cancel"]
# The protocol path (``<version>/mrtr``) of what a multi round-trip request of 2026-07-28 recorded.
MULTI_ROUND = "mrtr"


# BaseModel's slots, set through their descriptors: half the cost of object.__setattr__ by name.
_new_object = object.__new__
_set_attribute = object.__setattr__
_set_fields_set = BaseModel.__dict__["__pydantic_fields_set__"].__set__
_set_extra = BaseModel.__dict__["__pydantic_extra__"].__set__
_set_private = BaseModel.__dict__["__pydantic_private__"].__set__


# The namespace of derived ids (a UUID of its own, fixed forever: ids already on logs depend on it).
DERIVED_IDS = uuid.UUID("5b1f8f5e-4f0e-4b8e-9a57-0d3c2a6f1e42")


def _new_event_id() -> str:
    return str(uuid.uuid4())


def derived_id(task_id: str, actor: str, kind: str, position: int | str) -> str:
    """The id of what ``actor`` records at ``position`` of a task's journal (``kind``: what it is).

    A worker's events take derived ids: an append retried after its deadline, by a new producer or by
    a re-run of the tool, writes the same transition with the same id, and every fold keeps one copy.
    The actor is part of it: a fenced worker's event (``projections.fence``) never shares an id with
    the one its successor writes in its place.
    """
    return str(uuid.uuid5(DERIVED_IDS, f"{task_id}\n{actor}\n{kind}\n{position}"))


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def iso(ms: int) -> str:
    """An event time (ms since the epoch) as ISO 8601 UTC, to the millisecond, as MCP shows times."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


class TaskEvent(BaseModel):
    """Envelope shared by every event. Subclasses add the payload of one transition."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    avro_name: ClassVar[str]
    _field_names: ClassVar[frozenset[str]]
    _payload_names: ClassVar[tuple[str, ...]]

    event_id: str = Field(default_factory=_new_event_id, pattern=r"^[0-9a-f-]{36}$")
    task_id: str = Field(min_length=1)
    occurred_at: int = Field(default_factory=now_ms, description="Unix time in milliseconds.")
    principal: str | None = None
    actor: str = Field(min_length=1, description="server:<instance>, worker:<id> or cli:<host>.")

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.avro_name = f"ledger.{cls.__name__}"

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        cls._field_names = frozenset(cls.model_fields)
        cls._payload_names = tuple(n for n in cls.model_fields if n not in TaskEvent.model_fields)

    @classmethod
    def trusted(cls, fields: dict[str, Any]) -> Self:
        """Build an event from fields already typed by the Avro decoder, skipping validation.

        The decode path runs for every record of every replay; pydantic's ``model_construct``
        costs as much as the Avro decode itself, so this sets the instance state directly.
        ``fields`` must hold exactly the model's fields (the writer schema, resolved to the
        current one, guarantees it) and is taken over, not copied.
        """
        event = _new_object(cls)
        _set_attribute(event, "__dict__", fields)
        _set_fields_set(event, cls._field_names)
        _set_extra(event, None)
        _set_private(event, None)
        return event

    def model_copy(self, *, update: Mapping[str, Any] | None = None, deep: bool = False) -> Self:
        """A copy with ``update`` applied, unvalidated as pydantic's is; also for events from ``trusted``,
        whose fields-set is one frozen set shared by the class, which pydantic's copy would update."""
        fields = {**self.__dict__, **(update or {})}
        return self.trusted(copy.deepcopy(fields) if deep else fields)

    def payload(self) -> dict[str, Any]:
        """The fields of this event's payload record (everything but the envelope)."""
        return {name: self.__dict__[name] for name in self._payload_names}


class TaskCreated(TaskEvent):
    tool: str
    arguments_json: str
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None
    protocol: str | None = None
    idempotency_key: str | None = None
    request_digest: str | None = None


def starts_new_task(event: TaskEvent) -> bool:
    """Whether ``event`` names a task no fold can hold yet: an unkeyed ``TaskCreated``, whose id is a fresh
    UUID. A keyed call's task id is derived from its key, so its created event may repeat on the log."""
    return type(event) is TaskCreated and event.idempotency_key is None  # type: ignore[attr-defined]


class TaskStarted(TaskEvent):
    attempt: int = Field(ge=1)


class ElicitationRequested(TaskEvent):
    elicitation_id: str
    sequence: int = Field(ge=0)
    mode: Literal["form", "url"] = "form"
    message: str
    requested_schema_json: str
    url: str | None = None
    timeout_ms: int | None = Field(default=None, ge=0)

    @property
    def deadline(self) -> int | None:
        """When the question stops waiting for an answer (Unix ms), if it has a timeout."""
        return None if self.timeout_ms is None else self.occurred_at + self.timeout_ms


class ResponseSubmitted(TaskEvent):
    elicitation_id: str
    action: ResponseAction
    content_json: str | None = None
    protocol: str | None = None


class ElicitationExpired(TaskEvent):
    """A question's deadline passed before any answer reached the log; the first of it and an answer,
    in log order, is what the question got."""

    elicitation_id: str
    timeout_ms: int = Field(ge=0)


class TimerSet(TaskEvent):
    """The tool sleeps until this event's time plus ``duration_ms``; the partition's owner then writes
    ``TimerFired``."""

    sequence: int = Field(ge=0)
    duration_ms: int = Field(ge=0)

    @property
    def due(self) -> int:
        return self.occurred_at + self.duration_ms


class TimerFired(TaskEvent):
    sequence: int = Field(ge=0)


class AttemptFailed(TaskEvent):
    """An attempt of a tool with a retry policy raised; the next starts ``retry_delay_ms`` after this."""

    attempt: int = Field(ge=1)
    error_type: str
    message: str
    retry_delay_ms: int = Field(ge=0)

    @property
    def retry_at(self) -> int:
        return self.occurred_at + self.retry_delay_ms


class ProgressReported(TaskEvent):
    progress: float
    total: float | None = None
    message: str | None = None


class StepRecorded(TaskEvent):
    name: str
    sequence: int = Field(ge=0)
    result_json: str


class TaskCompleted(TaskEvent):
    result_json: str
    is_error: bool = False


class TaskFailed(TaskEvent):
    error_type: str
    message: str


class CancelRequested(TaskEvent):
    reason: str | None = None
    protocol: str | None = None


class TaskCancelled(TaskEvent):
    reason: str | None = None


class TaskExpired(TaskEvent):
    ttl_ms: int


class RequestRejected(TaskEvent):
    operation: str
    elicitation_id: str | None = None
    reason: str
    payload_json: str | None = None
    protocol: str | None = None


class PartitionClaimed(TaskEvent):
    """A worker took the partition the record is on; its ``task_id`` is ``partition-N``.

    From this record on, in log order, only the claiming worker's events count among those workers
    write: a worker that lost the partition without knowing it is fenced off (``projections.fence``).
    """

    partition: int = Field(ge=0)

    @classmethod
    def of(cls, partition: int, actor: str) -> PartitionClaimed:
        return cls(task_id=f"partition-{partition}", actor=actor, partition=partition)


EVENT_TYPES: dict[str, type[TaskEvent]] = {
    cls.avro_name: cls
    for cls in (
        TaskCreated,
        TaskStarted,
        ElicitationRequested,
        ResponseSubmitted,
        ProgressReported,
        StepRecorded,
        TaskCompleted,
        TaskFailed,
        CancelRequested,
        TaskCancelled,
        TaskExpired,
        RequestRejected,
        PartitionClaimed,
        ElicitationExpired,
        TimerSet,
        TimerFired,
        AttemptFailed,
    )
}

TERMINAL_EVENTS: tuple[type[TaskEvent], ...] = (TaskCompleted, TaskFailed, TaskCancelled, TaskExpired)
