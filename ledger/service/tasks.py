"""What a server does with tasks, whatever the wire: create, read, answer, cancel, list.

Every change is an event appended (acks=all) before the caller hears back, and the caller then
reads its own write from the live view. Refused answers and cancels are appended too, as
``RequestRejected``, so the history holds every attempt (docs/architecture.md, the invariants).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import time
import uuid
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from typing import Any

from ledger import hops
from ledger.contract.elicitation import canonical_json, content_errors
from ledger.contract.events import CancelRequested, RequestRejected, ResponseSubmitted, TaskCreated, TaskEvent
from ledger.contract.values import printable, problem_in
from ledger.engine.app import App, InvalidArguments
from ledger.kafka.appender import EventLog
from ledger.metrics import Metrics
from ledger.service.budget import WriteBudget
from ledger.service.cursors import decode_cursor, encode_cursor
from ledger.service.errors import CancelPending, LogBehind, Refused, TaskNotFound
from ledger.service.live_view import LiveView
from ledger.settings import MIN_TTL_MS, Settings
from projections.status import TIMED_OUT, TaskRow

ACTIONS = ("accept", "decline", "cancel")
PAGE_SIZE = 50
PROBE_WINDOW_S = 60.0
PROBES_REMEMBERED = 10_000
MAX_TTL_MS = 10 * 365 * 24 * 3600 * 1000

log = logging.getLogger(__name__)


class TaskService:
    def __init__(self, app: App, settings: Settings, log: EventLog, view: LiveView, actor: str,
                 metrics: Metrics | None = None) -> None:
        self.app = app
        self.metrics = metrics
        self.settings = settings
        self.log = log
        self.view = view
        self.actor = actor
        self._locks = _TaskLocks()
        self._budget = WriteBudget(settings.principal_events_per_s)
        self._recording: set[asyncio.Task[Any]] = set()
        # (principal, task id) -> (when its refused access was last recorded, how many since): see get
        self._probes: OrderedDict[tuple[str | None, str], tuple[float, int]] = OrderedDict()

    async def create(
        self, tool_name: str, arguments: dict[str, Any] | None, *, principal: str | None,
        ttl_ms: int | None, protocol: str, idempotency_key: str | None = None,
    ) -> TaskRow:
        """Append the created event and return the task as every server will now show it.

        With ``idempotency_key``, the principal's call with that key within ``LEDGER_IDEMPOTENCY_WINDOW_MS``
        returns the task the first such call created, whichever server took it: the key names the task id,
        so repeats that reach the log at once name one task, and the first created event there is its.
        """
        tool = self.app.get(tool_name)
        tool.parse_arguments(arguments, strict=True)
        if ttl_ms is not None and not 0 <= ttl_ms <= MAX_TTL_MS:
            raise InvalidArguments(f"task.ttl must be between 0 and {MAX_TTL_MS:,} ms (ten years), got {ttl_ms!r}")
        ttl_ms = self.settings.task_ttl_ms if ttl_ms is None else max(ttl_ms, MIN_TTL_MS)
        arguments_json = canonical_json(arguments or {})
        if len(arguments_json) > self.settings.max_input_bytes:
            raise InvalidArguments(f"arguments are {len(arguments_json):,} bytes of JSON; the limit is "
                                   f"{self.settings.max_input_bytes:,} (LEDGER_MAX_INPUT_BYTES)")
        task_id, digest = str(uuid.uuid4()), None
        if idempotency_key is not None:
            digest = request_digest(tool.name, arguments_json)
            task_id, earlier = await self._keyed(principal, idempotency_key)
            if earlier is not None:
                return _same_call(earlier, digest, idempotency_key)
        created = TaskCreated(
            task_id=task_id, principal=principal, actor=self.actor, tool=tool.name,
            arguments_json=arguments_json, ttl_ms=ttl_ms,
            poll_interval_ms=self.settings.poll_interval_ms, protocol=protocol,
            idempotency_key=idempotency_key, request_digest=digest,
        )
        self._budget.charge(principal, 1)
        row = await self._append(created)
        return row if idempotency_key is None else _same_call(row, digest, idempotency_key)

    async def _keyed(self, principal: str | None, key: str) -> tuple[str, TaskRow | None]:
        """The task id a keyed call names now, and its task when one was created within the window.

        A key's first task id is derived from the principal and the key; once that task is older than the
        window, the next id is derived from it, and so on: every server walks the same chain."""
        if (problem := problem_in(key, "the idempotency key")) is not None or not 1 <= len(key) <= MAX_KEY_LENGTH:
            raise InvalidArguments(problem or f"the idempotency key must be 1 to {MAX_KEY_LENGTH} characters, "
                                              f"got {len(key)}")
        window_start = time.time_ns() // 1_000_000 - self.settings.idempotency_window_ms
        task_id = keyed_task_id(principal, key, "")
        while (row := await self.view.load(task_id)) is not None and row.created_at <= window_start:
            task_id = keyed_task_id(principal, key, task_id)
        return task_id, row

    def get(self, task_id: str, principal: str | None) -> TaskRow:
        """The principal's task; another principal's task is "not found", and the attempt is recorded."""
        row = self.view.get(task_id)
        if row is None:
            raise TaskNotFound(task_id)
        if row.principal != principal:
            self._record_probe(row, principal)
            raise TaskNotFound(task_id)
        return row

    def _record_probe(self, row: TaskRow, principal: str | None) -> None:
        """Record that ``principal`` asked for another's task: once per principal and task a window, with
        how many more times it asked (5,000 probes were 5,000 events in the owner's timeline)."""
        key, now = (principal, row.task_id), time.monotonic()
        recorded_at, held = self._probes.get(key, (-PROBE_WINDOW_S, 0))
        if now - recorded_at < PROBE_WINDOW_S:
            self._probes[key] = (recorded_at, held + 1)
            return
        self._probes[key] = (now, 0)
        self._probes.move_to_end(key)
        if len(self._probes) > PROBES_REMEMBERED:
            self._probes.popitem(last=False)
        more = f" (and {held} more times in the {PROBE_WINDOW_S:g} s before)" if held else ""
        reason = f"not the owner: {printable(principal or 'an unauthenticated client')} asked for it{more}"
        for probe in self._audited(principal, [self._rejection(row, "access", reason, None)]):
            self._record_in_background(probe)

    async def find(self, task_id: str, principal: str | None,
                   knows: Callable[[TaskRow], bool] = lambda row: True, *, surely: bool = False) -> TaskRow:
        """``get``, except that a task this server has not seen yet, or whose row does not yet show
        what ``knows`` asks for, is looked for once more after the view has read the log as it is
        now (another server may have written it a moment ago). When the view could not read that
        far in time, the row is the one it has; or, ``surely``, ``LogBehind`` unless that row knows."""
        row = await self.view.load(task_id)
        if row is None or not knows(row):
            read = await self.view.settle(self.settings.read_timeout_ms / 1000)
            row = self.view.get(task_id)
            if not read and surely and (row is None or not knows(row)):
                raise LogBehind(f"this server could not read the log far enough within "
                                f"{self.settings.read_timeout_ms} ms to know what the request names")
        return self.get(task_id, principal)

    def _record_in_background(self, event: TaskEvent) -> None:
        # The caller is answered "not found" at once; the audit record follows it onto the log.
        recording = asyncio.get_running_loop().create_task(self.log.append(event))
        self._recording.add(recording)
        recording.add_done_callback(self._recorded)

    def _recorded(self, recording: asyncio.Task[Any]) -> None:
        self._recording.discard(recording)
        if not recording.cancelled() and recording.exception() is not None:
            log.error("could not record a refused access: %s", recording.exception())

    async def wait(self, task_id: str, principal: str | None, done: Callable[[TaskRow], bool],
                   timeout: float | None) -> TaskRow:
        """The task once ``done`` holds for it (or as it is at ``timeout``)."""
        await self.find(task_id, principal)
        row = await self.view.wait(task_id, lambda r: r is None or done(r), timeout)
        if row is None:
            raise TaskNotFound(task_id)
        return row

    async def settle(self, row: TaskRow) -> TaskRow:
        """The task once it needs its client again (it asks, or it ended), or as it is after
        ``LEDGER_SETTLE_MS``: the client's next poll then finds the next step instead of ``working``."""
        if awaits_client(row) or self.settings.settle_ms == 0:
            return row
        settled = await self.view.wait(row.task_id, lambda r: r is None or awaits_client(r),
                                       self.settings.settle_ms / 1000)
        hops.hop("settled", row.task_id)
        return settled or row

    async def answer(
        self, task_id: str, principal: str | None, elicitation_id: str, action: str,
        content: Any, *, protocol: str,
    ) -> TaskRow:
        """Apply a person's answer; a repeat of an applied answer is acknowledged, not re-applied."""
        return await self.answer_all(task_id, principal, {elicitation_id: (action, content)}, protocol=protocol)

    async def answer_all(
        self, task_id: str, principal: str | None, answers: Mapping[str, tuple[str, Any]], *, protocol: str,
        ignore_stale: bool = False,
    ) -> TaskRow:
        """Apply answers to several of a task's elicitations (by id): all of them, or none.

        Each refused answer is recorded as a rejection and the call raises ``Refused`` naming them;
        an answer that repeats the applied one is recorded as a duplicate and acknowledged. Which of
        two answers to one question counts is decided by the log (the first there): an answer that
        reached it second, from another server, raises ``Refused`` too (the history shows it ignored). With
        ``ignore_stale`` (the 2026-07-28 ``tasks/update``), answers to elicitations that are not
        outstanding (never asked, answered already, superseded, or the task ended) are ignored, and
        recorded together as one compact event, and the outstanding ones are applied.
        """
        async with self._locks.hold(task_id):
            # The client may have a question from another server that read the log further.
            # Answers this server cannot place are set aside as not outstanding only once it has read the
            # whole log as it was: else they might answer a question it has not read yet.
            row = await self.find(task_id, principal, lambda row: row.terminal or all(
                row.pending_elicitation(e) is not None or row.answer(e) is not None for e in answers),
                surely=ignore_stale)
            refusals: list[RequestRejected] = []
            recorded: list[TaskEvent] = []
            fresh: list[ResponseSubmitted] = []
            stale: list[str] = []
            for elicitation_id, (action, content) in answers.items():
                if ignore_stale and row.pending_elicitation(elicitation_id) is None:
                    stale.append(elicitation_id)
                    continue
                reason = _why_not(row, elicitation_id, action, content, self.settings.max_input_bytes)
                if reason is None:
                    fresh.append(ResponseSubmitted(
                        task_id=task_id, principal=principal, actor=self.actor, elicitation_id=elicitation_id,
                        action=action, content_json=canonical_json(content) if action == "accept" else None,
                        protocol=protocol,
                    ))
                    continue
                payload = sent_json({"action": action, "content": content})
                rejection = self._rejection(row, "elicitation-response", reason, protocol, elicitation_id, payload)
                (recorded if reason == DUPLICATE else refusals).append(rejection)
            if refusals:
                if audited := self._audited(principal, refusals):
                    await self.log.append_many(audited)
                if len(refusals) == 1:
                    raise Refused(refusals[0].reason)
                named = "; ".join(f"elicitation {r.elicitation_id}: {r.reason}" for r in refusals[:IGNORED_KEYS_NAMED])
                more = f"; and {len(refusals) - IGNORED_KEYS_NAMED} more" if len(refusals) > IGNORED_KEYS_NAMED else ""
                raise Refused(named + more)
            if stale:
                recorded.append(self._ignored(row, stale, answers, protocol))
            self._budget.charge(principal, len(fresh))
            events: list[TaskEvent] = [*self._audited(principal, recorded), *fresh]
            if not events:
                return row
            positions = await self.log.append_many(events)
            await self.view.reached(positions[-1], self.settings.read_timeout_ms / 1000)
            await self.view.load(task_id)
            row = self.get(task_id, principal)
            if not ignore_stale:
                # Another server may have taken another answer a moment before: the log decides.
                for answer in fresh:
                    taken = row.answer(answer.elicitation_id)
                    if taken is not None and taken.event_id == answer.event_id:
                        continue
                    if taken is not None and taken.action == TIMED_OUT:
                        raise Refused(f"not taken: elicitation {printable(answer.elicitation_id)!r} timed out before "
                                      f"this answer reached the log; the task goes on without an answer")
                    raise Refused(f"not taken: another answer to elicitation {printable(answer.elicitation_id)!r} "
                                  f"reached the log first (through this server or another); the task goes on with "
                                  f"that one")
            return row

    def _ignored(self, row: TaskRow, keys: list[str], answers: Mapping[str, tuple[str, Any]],
                 protocol: str) -> RequestRejected:
        """One record of the answers a request sent for elicitations that were not outstanding: how
        many, the first few keys, and a digest of what was sent (never the content itself)."""
        named = ", ".join(repr(key[:64]) for key in keys[:IGNORED_KEYS_NAMED])
        more = f" and {len(keys) - IGNORED_KEYS_NAMED} more" if len(keys) > IGNORED_KEYS_NAMED else ""
        sent = sent_json({key: answers[key] for key in keys})
        return self._rejection(row, "elicitation-response", f"ignored: {len(keys)} answer(s) to elicitations not "
                               f"outstanding ({named}{more})", protocol, None, sent)

    async def cancel(self, task_id: str, principal: str | None, *, protocol: str, reason: str | None = None,
                     confirm: bool = True) -> TaskRow:
        """Ask the owner of the task's partition to cancel it, and answer from what it did.

        The worker that owns the partition writes the task's one terminal event, in log order: it
        cancels a task that has not ended and ignores the request otherwise. With ``confirm`` (the
        2025-11-25 wire, which must show the task cancelled before answering) this waits for that
        outcome and raises ``Refused`` when the task ended otherwise first; without it (2026-07-28,
        where cancellation is eventually consistent) it answers once the request is on the log.
        """
        async with self._locks.hold(task_id):
            row = await self.find(task_id, principal)
            if row.terminal:
                for refusal in self._audited(principal, [self._rejection(row, "cancel", f"already {row.status}",
                                                                         protocol)]):
                    await self.log.append(refusal)
                if confirm:
                    raise Refused(f"Cannot cancel task: already in terminal status '{row.status}'")
                return row
            if not row.cancel_requested:
                self._budget.charge(principal, 1)
                row = await self._append(CancelRequested(task_id=task_id, principal=principal, actor=self.actor,
                                                         reason=reason, protocol=protocol))
        if not confirm:
            return await self.view.wait(task_id, lambda r: r is None or r.terminal, self.settings.settle_ms / 1000) or row
        row = await self.view.wait(task_id, lambda r: r is None or r.terminal, self.settings.read_timeout_ms / 1000)
        if row is None:
            raise TaskNotFound(task_id)
        if not row.terminal:
            raise CancelPending(task_id, self.settings.read_timeout_ms)
        if row.status != "cancelled":
            raise Refused(f"Cannot cancel task: already in terminal status '{row.status}'")
        return row

    async def page(self, principal: str | None, cursor: str | None,
                   limit: int = PAGE_SIZE) -> tuple[list[TaskRow], str | None]:
        """One page of the principal's tasks, and the cursor of the next page (None at the end)."""
        after = None if cursor is None else decode_cursor(cursor)
        rows = await self.view.page(principal, after, limit + 1)
        if len(rows) <= limit:
            return rows, None
        rows = rows[:limit]
        return rows, encode_cursor((rows[-1].created_at, rows[-1].task_id))

    async def _append(self, event: TaskEvent) -> TaskRow:
        position = await self.log.append(event)
        await self.view.reached(position, self.settings.read_timeout_ms / 1000)
        row = await self.view.load(event.task_id)
        assert row is not None, "an applied event of an existing task leaves its row"
        return row

    def _audited(self, principal: str | None, records: list[TaskEvent]) -> list[TaskEvent]:
        """``records`` if the principal's write budget has room for them; none (counted) otherwise."""
        if not records or self._budget.allows(principal, len(records)):
            return records
        if self.metrics is not None:
            self.metrics.dropped_audit_records.inc(len(records))
        log.warning("%s is over its write budget (LEDGER_PRINCIPAL_EVENTS_PER_S): %d audit record(s) of refused "
                    "requests not written", principal or "the anonymous principal", len(records))
        return []

    def _rejection(self, row: TaskRow, operation: str, reason: str, protocol: str | None,
                   elicitation_id: str | None = None, payload_json: str | None = None) -> RequestRejected:
        if self.metrics is not None:
            self.metrics.rejected_inputs.labels(operation, reason_kind(reason)).inc()
        return RequestRejected(
            task_id=row.task_id, principal=row.principal, actor=self.actor, operation=operation,
            elicitation_id=None if elicitation_id is None else printable(elicitation_id), reason=reason,
            payload_json=digest(payload_json), protocol=protocol,
        )


DUPLICATE = "duplicate: this answer was already applied"
IGNORED_KEYS_NAMED = 5


def sent_json(value: Any) -> str:
    """What a client sent, as text to digest: NaN included, where the log itself holds standard JSON only."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def digest(payload_json: str | None) -> str | None:
    """What the audit keeps of a refused or ignored payload: its size and SHA-256, so a flood of bad
    answers cannot fill the log with copies of itself, and a known payload can still be matched."""
    if payload_json is None:
        return None
    data = payload_json.encode("utf-8", "surrogatepass")
    return canonical_json({"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()})


MAX_KEY_LENGTH = 256
KEYED_TASKS = uuid.UUID("0f6f0b1e-6a41-4d8c-9a0f-4f3c2f6b7d15")  # fixed forever: keyed task ids on logs depend on it


def keyed_task_id(principal: str | None, key: str, previous: str) -> str:
    """The task id of a keyed call: the principal's own (another principal's key never names it), and after
    ``previous`` (the task the key named before, once that one's window passed; "" for the first)."""
    return str(uuid.uuid5(KEYED_TASKS, json.dumps([principal, key, previous])))


def request_digest(tool: str, arguments_json: str) -> str:
    """What a repeat of a keyed call must match: its tool and (canonical) arguments."""
    return hashlib.sha256(f"{tool}\n{arguments_json}".encode("utf-8", "surrogatepass")).hexdigest()


def _same_call(row: TaskRow, digest: str | None, key: str) -> TaskRow:
    if row.request_digest != digest:
        raise InvalidArguments(f"the idempotency key {printable(key)!r} was used with another tool or other "
                               f"arguments (task {row.task_id}); a new call needs a new key")
    return row


REASON_KINDS = (
    ("duplicate", "duplicate"), ("ignored", "not outstanding"), ("timed out", "timed out"),
    ("action must be", "bad action"),
    ("content is", "oversize"),
    ("content does not match", "schema"), ("task has no pending", "unknown elicitation"),
    ("elicitation", "conflicting"), ("task is already", "task ended"), ("already", "task ended"),
    ("not the owner", "not owner"),
)


def awaits_client(row: TaskRow) -> bool:
    """Nothing more happens to the task until its client answers, or ever."""
    return row.terminal or bool(row.pending)


def reason_kind(reason: str) -> str:
    """A refusal's reason as one of a few labels (the full text is in the event)."""
    return next((kind for prefix, kind in REASON_KINDS if reason.startswith(prefix)), "other")


def _why_not(row: TaskRow, elicitation_id: str, action: Any, content: Any, max_bytes: int) -> str | None:
    """Why an answer cannot be applied to ``row``: a reason, ``DUPLICATE``, or None when it can."""
    if action not in ACTIONS:
        return f"action must be one of {', '.join(ACTIONS)}, got {printable(repr(action))}"
    if (problem := problem_in(elicitation_id, "elicitation id") or problem_in(content, "content")) is not None:
        return problem
    size = len(canonical_json(content)) if content is not None else 0
    if size > max_bytes:
        return f"content is {size:,} bytes of JSON; the limit is {max_bytes:,} (LEDGER_MAX_INPUT_BYTES)"
    previous = row.answer(elicitation_id)
    if previous is not None and previous.action == TIMED_OUT:
        return f"timed out: elicitation {printable(elicitation_id)} was not answered by its deadline, and the task " \
               f"went on without an answer"
    if previous is not None:
        content_json = canonical_json(content) if action == "accept" else None
        if previous.action == action and previous.content_json == content_json:
            return DUPLICATE
        return f"elicitation {printable(elicitation_id)} was already answered differently"
    if row.terminal:
        return f"task is already {row.status}"
    pending = row.pending_elicitation(elicitation_id)
    if pending is None:
        return f"task has no pending elicitation {printable(elicitation_id)!r}"
    if action == "accept":
        problem = content_errors(pending.requested_schema_json, content)
        if problem is not None:
            return f"content does not match the requested schema: {problem}"
    return None


class _TaskLocks:
    """One lock per task, kept only while somebody holds or waits for it."""

    def __init__(self) -> None:
        self._entries: dict[str, tuple[asyncio.Lock, list[int]]] = {}

    @asynccontextmanager
    async def hold(self, task_id: str) -> AsyncIterator[None]:
        lock, users = self._entries.setdefault(task_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._entries[task_id]


