"""The worker: a consumer-group member that runs tools, parks them on elicitations and resumes them.

For each partition it owns, the worker folds every task's events into a ``Journal`` and decides
from the journal alone what the task needs: a run (created, or its last question was answered),
nothing (waiting for a person), or to stop (ended). A waiting tool's coroutine is kept for the
hot window so an answer resumes it in place; after that it is dropped and the answer re-runs the
tool with the journal answering what was already asked (``ledger.engine.context``).

The committed offset of a partition never passes the created event of a task that has not ended,
so whoever owns the partition next reads every event of every unfinished task. With the shared
projection store (``LEDGER_DATABASE_URL``) a worker given a partition instead restores the journals
of its open tasks from the database's history records and reads the log on from the database's
checkpoint: one question left open for a month costs its own few records, not a month of log.

Which partitions' writes count is decided on the log by claims (``ledger.engine.claims``): a worker
starts nothing on a partition before it has read up to its own claim there, and stops at once when
it reads another worker's.
"""

from __future__ import annotations

import asyncio
import heapq
import json
import logging
import os
import socket
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from ledger import hops
from ledger.contract.events import (
    TERMINAL_EVENTS,
    AttemptFailed,
    ElicitationExpired,
    ElicitationRequested,
    PartitionClaimed,
    ProgressReported,
    ResponseSubmitted,
    TaskCancelled,
    TaskCompleted,
    TaskCreated,
    TaskEvent,
    TaskExpired,
    TaskFailed,
    TaskStarted,
    TimerFired,
    TimerSet,
    derived_id,
    now_ms,
)
from ledger.engine.app import App, InvalidArguments, UnknownTool, tool_result
from ledger.engine.claims import Claims
from ledger.engine.context import Context, NonDeterminismError
from ledger.engine.journal import Asked, Journal, abandoned
from ledger.engine.metrics import WorkerGauges, WorkerMetrics
from ledger.engine.progress import CoalescedProgress
from ledger.kafka.appender import EventLog
from ledger.kafka.group import GroupConsumer
from ledger.kafka.records import LogRecord
from ledger.settings import Settings
from projections.fence import Fence
from projections.postgres import ForeignDatabase, PostgresStore, refuse_foreign

log = logging.getLogger(__name__)
T = TypeVar("T")

COMMIT_INTERVAL_S = 0.5
COMMIT_TIMEOUT_S = 5.0
RETRY_AFTER_S = 1.0
SWEEP_INTERVAL_S = 5.0
STATUS_INTERVAL_S = 30.0
STUCK_RUN_S = 30.0  # a stopped run ends at its next await: one still waiting this long is reported
REMEMBERED_ENDINGS = 50_000
# Expiry entries held before those of ended tasks are dropped (when they outnumber open tasks two to one).
EXPIRIES_KEPT = 10_000


class Parked(BaseException):
    """Unwinds a tool whose hot window passed; a BaseException so tools' ``except Exception`` let it by."""


class AppendFailed(BaseException):
    """The log did not take a run's event; the run stops and the task is retried, not failed.

    A BaseException, like ``Parked``, so that a tool's ``except Exception`` cannot swallow it.
    """


class PartitionLost(RuntimeError):
    """A run tried to write on a partition its worker no longer holds."""


class Slots:
    """Execution slots; a resumed run waiting for one goes before new runs."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def try_take(self) -> bool:
        if self.used < self.limit and not self._waiters:
            self.used += 1
            return True
        return False

    async def take(self) -> None:
        if self.try_take():
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self.give()
            elif waiter in self._waiters:  # give() may have dropped it already
                self._waiters.remove(waiter)
            raise

    def give(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self.used -= 1


class Run:
    """One execution of a tool for a task, from a start (or replay) until it ends or parks."""

    runs_side_effects = True

    def __init__(self, worker: Worker, journal: Journal) -> None:
        self.worker = worker
        self.journal = journal
        # While it waits in place: what the journal holds once it may go on, and the future that wakes it.
        self.waiting: tuple[Callable[[], Any], asyncio.Future[Any]] | None = None
        self.stopped = False
        self.holding_slot = True
        self.unrecorded = False  # an append failed: the task is retried after a pause
        self.finished = "stopped"
        self.started_at = time.perf_counter()
        self.stopped_at = 0.0
        self.reported_stuck = False
        self.task: asyncio.Task[None] | None = None
        self.progress = CoalescedProgress(self._write, journal.task_id)
        self._starting: TaskStarted | None = None  # the run's start, until it is written
        self._start_written: asyncio.Future[None] | None = None  # its write, when it went on its own

    def stop(self) -> None:
        """Stop without recording anything: the task ended elsewhere or moved to another worker."""
        if not self.stopped:
            self.stopped, self.stopped_at = True, time.perf_counter()
        if self.task is not None:
            self.task.cancel()

    def stuck_at(self, longer_than: float) -> str | None:
        """Where a run stopped more than ``longer_than`` s ago still waits (it should have ended at
        once), or None."""
        if not self.stopped or self.task is None or self.task.done() or \
                time.perf_counter() - self.stopped_at <= longer_than:
            return None
        awaiting, chain = self.task.get_coro(), []
        while (frame := getattr(awaiting, "cr_frame", None)) is not None:  # the await chain, outermost first
            chain.append(f"{frame.f_code.co_name} ({frame.f_code.co_filename}:{frame.f_lineno})")
            awaiting = awaiting.cr_await
        return " -> ".join(chain) or repr(awaiting)

    async def append(self, event: TaskEvent) -> None:
        try:
            if isinstance(event, ProgressReported):
                await self.progress.report(event)
                return
            await self.progress.flush()
            await self._write(event)
        except Exception as exc:
            raise AppendFailed(f"{type(exc).__name__}: {exc}") from exc

    async def end(self, event: TaskEvent) -> None:
        try:
            await self.progress.flush()
            await self.worker.end(self.journal, event, after=await self._unwritten_start())
        except Exception as exc:
            raise AppendFailed(f"{type(exc).__name__}: {exc}") from exc

    def begin(self, started: TaskStarted) -> None:
        """Write a task's first start with the run's first event when the tool gets to one at once (one
        produce instead of two in a row: a tool that asks straight away asks a log round trip sooner), else
        on its own as soon as the run waits on anything else. The journal counts the attempt from now: the
        ids of the run's events are numbered by it."""
        self.journal.apply(started)
        self._starting = started
        asyncio.get_running_loop().call_soon(self._write_start_alone)

    def _write_start_alone(self) -> None:
        if self._starting is None or self.stopped:
            return
        starting, self._starting = self._starting, None
        self._start_written = asyncio.ensure_future(self.worker.append(self.journal, starting))
        self._start_written.add_done_callback(self._start_outcome)

    def _start_outcome(self, written: asyncio.Future[None]) -> None:
        if not written.cancelled() and (exc := written.exception()) is not None and not self.stopped:
            log.warning("task %s: the start of its run was not written (%s); its next event fails the same way "
                        "and the run is retried", self.journal.task_id, exc)

    async def _unwritten_start(self) -> tuple[TaskEvent, ...]:
        """The run's start when it is still to be written (taken: the caller writes it first); else nothing,
        once its own write is done, so that no event of the run lands on the log ahead of its start."""
        if self._starting is not None:
            starting, self._starting = self._starting, None
            return (starting,)
        if self._start_written is not None:
            await asyncio.shield(self._start_written)
        return ()

    async def _write(self, event: TaskEvent) -> None:
        await self.worker.append(self.journal, *await self._unwritten_start(), event)

    async def answer(self, elicitation_id: str) -> ResponseSubmitted | ElicitationExpired:
        return await self._wait(lambda: self.journal.response(elicitation_id))

    async def wake(self, sequence: int) -> int:
        return await self._wait(lambda: self.journal.fired_at(sequence))

    async def _wait(self, resolved: Callable[[], T | None]) -> T:
        """Wait in place, within the hot window, for what the journal will hold once the task may go on
        (``reconcile`` calls ``resolved`` when the journal changes); park the run when the window closes."""
        worker = self.worker
        if worker.settings.hot_window_ms == 0 or worker.hot >= worker.settings.max_hot_tasks:
            raise Parked
        woken: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self.waiting = (resolved, woken)
        worker.hot += 1
        self.holding_slot = False
        worker.release_slot(self)
        try:
            value = await asyncio.wait_for(woken, worker.settings.hot_window_ms / 1000)
        except TimeoutError:
            raise Parked from None
        finally:
            self.waiting = None
            worker.hot -= 1
        hops.hop("run.woken", self.journal.task_id)
        await worker.slots.take()
        worker.running_by_tool[self.journal.tool] += 1
        self.holding_slot = True
        return value

    def start(self) -> None:
        self.task = asyncio.create_task(self.execute(), name=f"task {self.journal.task_id}")
        # A callback, not a finally: a task stopped before its first step never runs its body, and its
        # run must still give back its slot and leave the worker's runs.
        self.task.add_done_callback(self._ended)

    async def execute(self) -> None:
        journal, worker = self.journal, self.worker
        worker.metrics.runs_started.inc()
        hops.hop("run.started", journal.task_id)
        if journal.attempts:
            worker.metrics.replays.inc()
        try:
            attempt = journal.attempts + 1
            started = self._event(TaskStarted, derived_id(journal.task_id, worker.actor, "started", attempt),
                                  attempt=attempt)
            if attempt == 1:
                self.begin(started)
            else:
                # A re-run may follow a run whose last append the log took without confirming it: writing
                # the start first gives the journal a round trip to fold what that run left (its end, say).
                await self.append(started)
            outcome = await self._call()
            if outcome is None and not self.stopped:
                self.finished = "parked"
            if isinstance(outcome, AttemptFailed) and not self.stopped:
                await self.append(outcome)
                self.finished = "retrying"
            elif outcome is not None and not self.stopped:
                await self.end(outcome)
                self.finished = "completed" if isinstance(outcome, TaskCompleted) else "failed"
        except (Parked, asyncio.CancelledError):
            pass
        except AppendFailed as exc:
            if not self.stopped:
                log.error("task %s: could not append to the log (%s); retrying in %.0fs",
                          journal.task_id, exc, RETRY_AFTER_S)
                self.unrecorded = True

    def _ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("task %s: its run broke", self.journal.task_id, exc_info=task.exception())
        metrics = self.worker.metrics
        metrics.runs_finished.labels(self.finished).inc()
        metrics.run_seconds.observe(time.perf_counter() - self.started_at)
        self.progress.close()
        self.worker.run_ended(self)

    async def _call(self) -> TaskEvent | None:
        """The event that ends the task, or the failed attempt its retry policy runs again after, or None when
        the run parked or was stopped."""
        journal, worker = self.journal, self.worker
        try:
            tool = worker.app.get(journal.tool)
            arguments = json.loads(journal.arguments_json)
            value = await tool.call(arguments, Context(journal, self, worker.actor))
        except Parked:
            return None
        except asyncio.CancelledError:
            if self.stopped:
                return None
            raise
        except (NonDeterminismError, InvalidArguments, UnknownTool) as exc:
            if isinstance(exc, NonDeterminismError):
                worker.metrics.nondeterminism_errors.inc()
            log.error("task %s failed: %s", journal.task_id, exc)
            return self._ending(TaskFailed, error_type=type(exc).__name__, message=str(exc))
        except Exception as exc:
            if self.stopped:
                return None
            message = str(exc) or type(exc).__name__
            attempt = journal.failures + 1
            delay_ms = tool.retry.delay_ms(attempt) if tool.retry is not None and tool.retry.retries(exc) else None
            if delay_ms is not None:
                log.warning("task %s: attempt %d of tool %s raised %s: %s; retrying in %.1f s", journal.task_id,
                            attempt, journal.tool, type(exc).__name__, message, delay_ms / 1000)
                return self._event(AttemptFailed, derived_id(journal.task_id, worker.actor, "attempt failed", attempt),
                                   attempt=attempt, error_type=type(exc).__name__, message=message,
                                   retry_delay_ms=delay_ms)
            log.exception("task %s: tool %s raised", journal.task_id, journal.tool)
            if tool.retry is not None and attempt > 1:
                message = f"attempt {attempt} of {tool.retry.max_attempts}: {message}"
            return self._ending(TaskFailed, error_type=type(exc).__name__, message=message)
        result = tool_result(value)
        return self._ending(TaskCompleted, result_json=json.dumps(result, separators=(",", ":")),
                           is_error=bool(result.get("isError")))

    def _ending(self, cls: type[TaskEvent], **fields: object) -> TaskEvent:
        return self._event(cls, ending_id(self.journal, self.worker.actor), **fields)

    def _event(self, cls: type[TaskEvent], event_id: str, **fields: object) -> TaskEvent:
        journal = self.journal
        return cls(event_id=event_id, task_id=journal.task_id, principal=journal.principal, actor=self.worker.actor,
                   **fields)


def ending_id(journal: Journal, actor: str) -> str:
    """The one id of every terminal event ``actor`` writes for the task: a task ends once."""
    return derived_id(journal.task_id, actor, "ended", 0)


def _commit_outcome(commit: asyncio.Future[None]) -> None:
    """Read a commit's outcome: a rebalance in progress, a slow coordinator or brokers away defer it,
    and the next commit carries its offsets."""
    if not commit.cancelled() and commit.exception() is not None:
        log.warning("an offset commit was deferred: %s", commit.exception() or type(commit.exception()).__name__)


class Worker:
    """Runs the tools of ``app`` for the partitions the group gives it."""

    def __init__(self, app: App, settings: Settings, *, worker_id: str | None = None) -> None:
        self.app = app
        self.settings = settings
        self.worker_id = worker_id or f"{socket.gethostname()}-{os.getpid()}"
        self.actor = f"worker:{self.worker_id}"
        self.slots = Slots(settings.worker_concurrency)
        self.hot = 0
        self._log = EventLog(settings, client_id=f"{settings.client_id}-{self.worker_id}")
        self._consumer = GroupConsumer(
            settings,
            group_id=f"{settings.topic_prefix}.workers",
            on_assigned=self._assigned,
            on_revoked=self._revoked,
            starts=self._restore if settings.database_url else None,
            client_id=f"{settings.client_id}-{self.worker_id}",
            # Each partition has one owner in the group, so each undecodable record is copied once.
            dead_letters=self._log.record_dead_letter,
        )
        self._journals: dict[int, dict[str, Journal]] = {}
        self._fence = Fence()
        self._database: PostgresStore | None = None  # with LEDGER_DATABASE_URL: where journals are restored from
        self._restored: dict[int, tuple[str | None, list[LogRecord]]] = {}  # partition -> (owner, records)
        self._claims = Claims(self.actor, self.worker_id, lambda claim: self._log.append(claim, claim.partition),
                              self._consumer.position, RETRY_AFTER_S)
        self._catching_up = self._claims.catching_up
        self._cancelling: dict[str, asyncio.Task[None]] = {}  # by task id
        self._recording_due: dict[str, asyncio.Task[None]] = {}  # timeouts and timers being written, by task id
        self._runs: dict[str, Run] = {}
        self.running_by_tool: Counter[str] = Counter()  # runs holding a slot, by tool (max_concurrency)
        self._ready: deque[Journal] = deque()
        self._queued: set[Journal] = set()
        self._retrying: set[str] = set()
        self._ended: OrderedDict[str, None] = OrderedDict()
        # A heap of (when, task id, partition): ttls, question deadlines, sleeps, retries' delays, and
        # multi round-trip tasks abandoned on a question.
        self._expiries: list[tuple[int, str, int]] = []
        self._committing: asyncio.Future[None] | None = None
        self._committed: dict[int, int] = {}
        self._last_commit = 0.0
        self._last_sweep = 0.0
        self._last_status = 0.0
        self._closing = False
        self._ready_signal: asyncio.Event | None = None
        self.metrics = WorkerMetrics()
        self.metrics.registry.register(self._log.series())
        self.metrics.watch(WorkerGauges(
            hot=lambda: self.hot, parked=self.parked, queued=self.queued,
            free_slots=lambda: self.slots.limit - self.slots.used, lag=self.consumer_lag,
            holes_waited=self.holes_waited, timers=self.timers))

    async def run(self, ready: asyncio.Event | None = None) -> None:
        """Consume and run until cancelled; on the way out stop runs and commit what is safe.

        ``ready`` is set once the group has given this worker its first partitions.
        """
        if self.settings.database_url:
            self._database = await asyncio.to_thread(PostgresStore, self.settings.database_url)
            try:
                await refuse_foreign(self._database, self.settings)
            except ForeignDatabase:
                self._database.close()
                raise
        await self._log.start()
        try:
            self._ready_signal = ready
            await self._consumer.start()
            try:
                while True:
                    await self._handle(await self._consumer.fetch(self._until_due()))
            finally:
                self._closing = True
                self._claims.stop()
                for pending in (*self._cancelling.values(), *self._recording_due.values()):
                    pending.cancel()
                for run in list(self._runs.values()):
                    run.stop()
                await self._commit(force=True)
                await self._consumer.stop()
        finally:
            await self._log.stop()
            if self._database is not None:
                self._database.close()

    def owned_partitions(self) -> set[int]:
        return set(self._journals)

    def parked(self) -> int:
        """Tasks waiting for a person with no run in memory."""
        return sum(journal.waiting and journal.task_id not in self._runs
                   for journals in self._journals.values() for journal in journals.values())

    def queued(self) -> int:
        return len(self._ready)

    def timers(self) -> tuple[int, float]:
        """How many open tasks wait on a time (a sleep, a retry's delay, a question's deadline), and how many
        seconds the most overdue of them is past it."""
        dues = [due for journals in self._journals.values() for journal in journals.values()
                if (due := journal.due()) is not None]
        return len(dues), max(0, now_ms() - min(dues)) / 1000 if dues else 0.0

    def consumer_lag(self) -> dict[int, int]:
        return self._consumer.lag_by_partition()

    def holes_waited(self) -> int:
        return self._consumer.holes_waited

    def health(self) -> str:
        return f"{self.worker_id}, partitions {sorted(self._journals)}"

    def describe(self, task_id: str) -> dict[str, object]:
        """What this worker knows of a task and of its partitions: for a stuck task's report."""
        journal = next((j[task_id] for j in self._journals.values() if task_id in j), None)
        return {
            "worker": self.worker_id, "partitions": sorted(self._journals), "catching_up": sorted(self._catching_up),
            "claims_pending": self._claims.pending(), "positions": {p: self._consumer.position(p) for p in self._journals},
            "journal": None if journal is None else {"partition": journal.partition, "ended": journal.ended,
                                                     "waiting": journal.waiting, "attempts": journal.attempts},
            "run": task_id in self._runs, "queued": sum(j.task_id == task_id for j in self._ready),
            "slots": f"{self.slots.used}/{self.slots.limit}", "last_commit_s_ago":
                round(asyncio.get_running_loop().time() - self._last_commit, 1),
        }

    async def append(self, journal: Journal, *events: TaskEvent) -> None:
        """Append the task's ``events`` (one produce) and fold them into its journal."""
        if self._journals.get(journal.partition, {}).get(journal.task_id) is not journal:
            raise PartitionLost(f"partition {journal.partition} is no longer this worker's")
        await self._log.append_many(events)
        for event in events:
            journal.apply(event)

    async def end(self, journal: Journal, event: TaskEvent, after: Sequence[TaskEvent] = ()) -> None:
        """Append the task's terminal event (after ``after``), unless it ended or another terminal event is on
        its way: this worker, the partition's one writer, gives each task exactly one."""
        if journal.ended or journal.ending:
            return
        journal.ending = True
        try:
            await self.append(journal, *after, event)
        finally:
            journal.ending = False

    async def _end_early(self, journal: Journal) -> None:
        """End a task that was cancelled, or whose ttl ran out, with its one terminal event."""
        if journal.cancel_reason is not None:
            ending: TaskEvent = TaskCancelled(event_id=ending_id(journal, self.actor), task_id=journal.task_id,
                                              principal=journal.principal, actor=self.actor,
                                              reason=journal.cancel_reason)
        else:
            ending = TaskExpired(event_id=ending_id(journal, self.actor), task_id=journal.task_id,
                                 principal=journal.principal, actor=self.actor, ttl_ms=journal.ttl_ms)
        try:
            await self.end(journal, ending)
        except PartitionLost:
            return
        except Exception as exc:  # the log is not taking writes; the request stays in the journal
            log.error("task %s: could not record its end (%s); retrying in %.0fs", journal.task_id, exc,
                      RETRY_AFTER_S)
            self._retrying.add(journal.task_id)
            asyncio.get_running_loop().call_later(RETRY_AFTER_S, self._retry, journal)
        finally:
            del self._cancelling[journal.task_id]

    def _until_due(self) -> int | None:
        """How long a fetch may wait before the next time in the heap comes (ms); None when none comes before
        the longest wait anyway."""
        if not self._expiries:
            return None
        until = self._expiries[0][0] - now_ms()
        return max(0, until) if until < self.settings.idle_fetch_wait_ms else None

    def _record_due(self, journal: Journal, due: Asked | int) -> None:
        if journal.task_id not in self._recording_due:
            self._recording_due[journal.task_id] = asyncio.create_task(self._write_due(journal, due),
                                                                       name=f"due {journal.task_id}")

    async def _write_due(self, journal: Journal, due: Asked | int) -> None:
        """Write that the task's question timed out (``due`` the question) or its timer fired (``due`` its
        sequence). It is folded when read back, not now: an answer may be on the log ahead of a timeout,
        and then that answer is the one the question got."""
        event: TaskEvent
        if isinstance(due, Asked):
            event = ElicitationExpired(
                event_id=derived_id(journal.task_id, self.actor, "timed out", due.elicitation_id),
                task_id=journal.task_id, principal=journal.principal, actor=self.actor,
                elicitation_id=due.elicitation_id, timeout_ms=due.deadline - due.asked_at)  # type: ignore[operator]
        else:
            event = TimerFired(event_id=derived_id(journal.task_id, self.actor, "fired", due),
                               task_id=journal.task_id, principal=journal.principal, actor=self.actor, sequence=due)
        try:
            if self._journals.get(journal.partition, {}).get(journal.task_id) is journal:
                await self._log.append(event)
        except Exception as exc:
            log.error("task %s: could not record that what it waits on is due (%s); retrying in %.0fs",
                      journal.task_id, exc, RETRY_AFTER_S)
            self._retrying.add(journal.task_id)
            asyncio.get_running_loop().call_later(RETRY_AFTER_S, self._retry, journal)
        finally:
            del self._recording_due[journal.task_id]

    async def _handle(self, records: list[LogRecord]) -> None:
        touched: dict[str, Journal] = {}
        for record in records:
            journal = self._fold(record)
            if journal is not None:
                touched[journal.task_id] = journal
        for journal in touched.values():
            self.reconcile(journal)
        self._expire_due()
        self._sweep()
        await self._commit()

    def _expire_due(self) -> None:
        """Mark the open tasks whose ttl ran out, and the multi round-trip tasks abandoned on a question;
        ``reconcile`` ends each with its one terminal event (``TaskExpired``, ``TaskCancelled``), records that a
        question whose deadline passed timed out or a sleep's time came, and starts an attempt whose delay
        passed."""
        if not self._expiries:
            return
        now = int(time.time() * 1000)
        while self._expiries and self._expiries[0][0] <= now:
            _, task_id, partition = heapq.heappop(self._expiries)
            journal = self._journals.get(partition, {}).get(task_id)
            if journal is None or journal.ended:
                continue
            if journal.expires_at is not None and journal.expires_at <= now:
                journal.expired = True
            elif (abandoned_at := self._abandoned_at(journal)) is not None and abandoned_at <= now:
                journal.cancel_reason = journal.cancel_reason or abandoned(self.settings.request_state_ttl_ms)
            elif (due := journal.due()) is None or due > now:
                continue
            self.reconcile(journal)
        if len(self._expiries) > EXPIRIES_KEPT and len(self._expiries) > 2 * sum(map(len, self._journals.values())):
            # Entries of tasks that ended or moved away stay until their time: drop them in one pass.
            self._expiries = [(at, journal.task_id, journal.partition)
                              for journals in self._journals.values() for journal in journals.values()
                              if not journal.ended
                              for at in (journal.expires_at, self._abandoned_at(journal), journal.due())
                              if at is not None]
            heapq.heapify(self._expiries)

    def _abandoned_at(self, journal: Journal) -> int | None:
        """When a multi round-trip task waiting on a question is abandoned: its client's requestState
        runs out, and no client but that request's can answer it (Unix ms; None for other tasks)."""
        asked_at = journal.last_asked_at() if journal.rounds and journal.asking else None
        return None if asked_at is None else asked_at + self.settings.request_state_ttl_ms

    def _fold(self, record: LogRecord, *, restoring: bool = False) -> Journal | None:
        """Fold ``record`` into its task's journal; ``restoring``: a record the database kept, which the fence
        of its time admitted."""
        journals = self._journals.get(record.partition)
        if journals is None:
            return None
        event = record.event
        if isinstance(event, PartitionClaimed):
            self._read_claim(record)
            return None
        if not restoring and not self._fence.admits(record):
            return None
        journal = journals.get(event.task_id)
        if journal is None:
            if not isinstance(event, TaskCreated) or event.task_id in self._ended:
                return None
            journal = journals[event.task_id] = Journal(event, record.partition, record.offset)
            if journal.expires_at is not None:
                heapq.heappush(self._expiries, (journal.expires_at, journal.task_id, journal.partition))
            return journal
        changed = journal.apply(event)
        # Read back too: the worker applied its own question when it appended it.
        if isinstance(event, ElicitationRequested | TimerSet | AttemptFailed):
            for at in (self._abandoned_at(journal), journal.due()):
                if at is not None:
                    heapq.heappush(self._expiries, (at, journal.task_id, journal.partition))
        if changed and isinstance(event, ResponseSubmitted) and record.partition not in self._catching_up:
            asked_at = journal.asked_at(event.elicitation_id)
            if asked_at is not None:
                self.metrics.elicitation_wait.observe(max(0, event.occurred_at - asked_at) / 1000)
        if isinstance(event, TERMINAL_EVENTS):
            journal.end_read = True
            if record.partition in self._catching_up and event.task_id not in self._runs:
                # Nothing is left to do for it: what a catch-up holds is bounded by the open tasks,
                # not by the history it reads (every task since the oldest open one's first event).
                del journals[event.task_id]
                self._remember_ended(event.task_id)
                return None
            return journal
        return journal if changed else None

    def _read_claim(self, record: LogRecord) -> None:
        self._fence.admits(record)
        verdict = self._claims.read(record)
        if verdict == "own":
            self._read_to_own_claim(record.partition, record.offset)
        elif verdict == "lost":
            log.warning("worker %s: %s claimed partition %d at offset %d; this worker lost it without being told "
                        "(paused or cut off from its group) and stops its runs there", self.worker_id,
                        record.event.actor, record.partition, record.offset)
            self._let_go({record.partition})

    def _read_to_own_claim(self, partition: int, offset: int) -> None:
        if partition not in self._catching_up:
            return
        began = self._catching_up.pop(partition)
        journals = self._journals.get(partition, {})
        log.debug("worker %s: partition %d read to its claim at offset %d, %d tasks open in it", self.worker_id,
                  partition, offset, len(journals))
        if not self._catching_up:  # one line for an assignment, not one per partition
            log.info("worker %s: all %d partitions read to its claims (%.1f s), %d tasks open", self.worker_id,
                     len(self._journals), asyncio.get_running_loop().time() - began,
                     sum(map(len, self._journals.values())))
        for journal in list(journals.values()):
            self.reconcile(journal)

    def reconcile(self, journal: Journal) -> None:
        """Do what the journal says the task needs."""
        if self._closing or journal.partition in self._catching_up or \
                self._journals.get(journal.partition, {}).get(journal.task_id) is not journal:
            return
        run = self._runs.get(journal.task_id)
        if (journal.cancel_reason is not None or journal.expired) and not journal.ended:
            # A run whose terminal event is being appended is let finish: that event ends the task.
            if not journal.ending and journal.task_id not in self._cancelling:
                if run is not None:
                    run.stop()
                self._cancelling[journal.task_id] = asyncio.create_task(self._end_early(journal),
                                                                        name=f"end {journal.task_id}")
            return
        if journal.ended:
            # The end read may be the run's own, read back before its append was acknowledged: that
            # run is let finish, so it counts as the run that completed the task.
            if run is not None and not journal.ending:
                run.stop()
            if journal.end_read:
                del self._journals[journal.partition][journal.task_id]
                self._remember_ended(journal.task_id)
            return
        now = now_ms()
        if journal.retry_at is not None and journal.retry_at <= now:
            journal.retry_at = None  # the next attempt may run; its TaskStarted records that it did
        if journal.waiting:
            if (due := journal.overdue(now)) is not None:
                self._record_due(journal, due)
            return
        if run is None:
            if journal not in self._queued:
                self._queued.add(journal)
                self._ready.append(journal)
            self._start_ready()
        elif run.waiting is not None:
            resolved, woken = run.waiting
            value = resolved()
            if value is not None and not woken.done():
                woken.set_result(value)

    def _start_ready(self) -> None:
        held_back: list[Journal] = []  # tools at their max_concurrency; they keep their place in the queue
        while self._ready and self.slots.try_take():
            journal = self._ready.popleft()
            tracked = self._journals.get(journal.partition, {}).get(journal.task_id) is journal
            if not tracked or journal.ended or journal.waiting or journal.cancel_reason is not None or \
                    journal.expired or journal.task_id in self._runs:
                self._queued.discard(journal)
                self.slots.give()
                continue
            if self._at_limit(journal.tool):
                held_back.append(journal)
                self.slots.give()
                continue
            self._queued.discard(journal)
            run = Run(self, journal)
            self._runs[journal.task_id] = run
            self.running_by_tool[journal.tool] += 1
            run.start()
        self._ready.extendleft(reversed(held_back))

    def _at_limit(self, tool_name: str) -> bool:
        tool = self.app.tools.get(tool_name)
        return tool is not None and tool.max_concurrency is not None and \
            self.running_by_tool[tool_name] >= tool.max_concurrency

    def release_slot(self, run: Run) -> None:
        self.running_by_tool[run.journal.tool] -= 1
        self.slots.give()
        self._start_ready()

    def run_ended(self, run: Run) -> None:
        task_id = run.journal.task_id
        if self._runs.get(task_id) is run:
            del self._runs[task_id]
        if run.holding_slot:
            self.release_slot(run)
        # An answer may have arrived between the hot window closing and the run unwinding, or the
        # partition may have come back (a new journal) while this run was being stopped.
        if run.unrecorded:
            self._retrying.add(task_id)
            asyncio.get_running_loop().call_later(RETRY_AFTER_S, self._retry, run.journal)
        else:
            self._retry(run.journal)

    def _retry(self, journal: Journal) -> None:
        self._retrying.discard(journal.task_id)
        current = self._journals.get(journal.partition, {}).get(journal.task_id)
        if current is not None:
            self.reconcile(current)

    def _sweep(self) -> None:
        """Every few seconds, check that each task that needs a run has one, and say so if not.

        Reconciling on every event should leave nothing behind; this is the safety net that turns
        a missed wake-up into a logged warning and a late run instead of a task stuck forever.
        """
        now = asyncio.get_running_loop().time()
        if now - self._last_sweep < SWEEP_INTERVAL_S:
            return
        self._last_sweep = now
        self._claims.report_slow(now)
        for run in self._runs.values():
            if not run.reported_stuck and (where := run.stuck_at(STUCK_RUN_S)) is not None:
                run.reported_stuck = True
                log.warning("task %s: its run was stopped %.0f s ago and has not ended; it waits in %s",
                            run.journal.task_id, STUCK_RUN_S, where)
        for partition, journals in self._journals.items():
            if partition in self._catching_up:
                continue
            for journal in journals.values():
                if journal.ended or journal.waiting:
                    continue
                if journal.task_id in self._runs or journal.task_id in self._retrying:
                    continue
                if journal not in self._queued:
                    log.warning("task %s needed a run and had none; starting it", journal.task_id)
                    self.reconcile(journal)
        if now - self._last_status < STATUS_INTERVAL_S:
            return
        self._last_status = now
        log.info("worker %s: partitions %s, %d tasks open, %d running, %d hot, %d queued, %d/%d slots, "
                 "%d holes waited for, %d undecodable records skipped", self.worker_id, sorted(self._journals),
                 sum(map(len, self._journals.values())), len(self._runs), self.hot, len(self._ready), self.slots.used,
                 self.slots.limit, self._consumer.holes_waited, self._consumer.dead_letter_count)

    def _remember_ended(self, task_id: str) -> None:
        # A producer retry can land a duplicate created event after the task ended.
        self._ended[task_id] = None
        if len(self._ended) > REMEMBERED_ENDINGS:
            self._ended.popitem(last=False)

    def _safe_offsets(self, partitions: set[int]) -> dict[int, int]:
        """Per partition, the last claim read at or before both the oldest unfinished task and the read
        position: whoever reads on from there reads every unfinished task, and first the claim that
        says whose writes count."""
        offsets = {}
        for partition in partitions:
            position = self._consumer.position(partition)
            if position is None:
                continue
            journals = self._journals.get(partition)
            # Journals are kept in created-offset order, so the first is the oldest unfinished task.
            bound = min(next(iter(journals.values())).offset if journals else position, position)
            claim = self._claims.last_at_or_before(partition, bound)
            if claim is not None:
                offsets[partition] = claim
        return offsets

    async def _commit(self, force: bool = False, partitions: set[int] | None = None) -> None:
        now = asyncio.get_running_loop().time()
        if not force and now - self._last_commit < COMMIT_INTERVAL_S:
            return
        self._last_commit = now
        if partitions is None and not self._closing:
            self._claims.again(set(self._journals))
        offsets = self._safe_offsets(partitions if partitions is not None else set(self._journals))
        changed = {p: o for p, o in offsets.items() if self._committed.get(p) != o}
        if not changed or (self._committing is not None and not self._committing.done()):
            return  # nothing new, or the last commit still waits on the coordinator: the next carries it
        # Bounded: the loop that reads the log (and so every run's wake-up) waits for this commit. It is
        # not cancelled after the bound (aiokafka finishes a commit it began on its own, and its error
        # would then be nobody's): it is left to end, and its outcome read when it does.
        self._committing = committing = asyncio.ensure_future(self._consumer.commit(changed))
        committing.add_done_callback(_commit_outcome)
        await asyncio.wait({committing}, timeout=COMMIT_TIMEOUT_S)
        if committing.done() and not committing.cancelled() and committing.exception() is None:
            self._committed.update(changed)

    async def _restore(self, partitions: set[int]) -> dict[int, int]:
        """Read from the database the open tasks of ``partitions`` as of its checkpoint (``_assigned`` makes
        their journals); the log is read on from that checkpoint, however old the oldest open task."""
        assert self._database is not None
        began = time.perf_counter()
        checkpoint, owners, records = await asyncio.to_thread(self._database.open_tasks, partitions)
        log.info("worker %s: %d history records of open tasks read from %s in %.2f s", self.worker_id,
                 len(records), self._database.path, time.perf_counter() - began)
        for partition in partitions:
            self._restored[partition] = (owners.get(partition), [])
        for record in records:
            self._restored[record.partition][1].append(record)
        return {partition: checkpoint.get(partition, 0) for partition in partitions}

    async def _assigned(self, partitions: set[int]) -> None:
        for partition in partitions:
            self._journals.setdefault(partition, {})
            self._fence.forget(partition)
        self._claims.take(partitions)
        for partition in partitions & self._restored.keys():
            owner, records = self._restored.pop(partition)
            if owner is not None:
                self._fence.owners[partition] = owner
            for record in records:
                self._fold(record, restoring=True)
        log.info("worker %s owns partitions %s", self.worker_id, sorted(self._journals))
        if self._ready_signal is not None:
            self._ready_signal.set()

    async def _revoked(self, partitions: set[int]) -> None:
        await self._commit(force=True, partitions=partitions)
        self._let_go(partitions)

    def _let_go(self, partitions: set[int]) -> None:
        """Stop everything this worker does on ``partitions`` (revoked, or claimed by another worker)."""
        for partition in partitions:
            for journal in self._journals.pop(partition, {}).values():
                run = self._runs.get(journal.task_id)
                if run is not None:
                    run.stop()
            self._committed.pop(partition, None)
            self._claims.let_go(partition)
            self._fence.forget(partition)
        self._consumer.forget(partitions)
