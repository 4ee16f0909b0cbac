"""The projection store: task rows and history entries in SQLite, with the offsets they reach.

Rows, entries and the per-partition checkpoint are written in one transaction, so a store is
always exactly "the log folded up to its checkpoint": a server that restarts loads the rows and
reads on from the checkpoint, and ``ledger replay`` builds a fresh store the same way from
offset 0. One connection, used from one thread at a time (callers serialize); WAL for files.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import shutil
import sqlite3
import tempfile
import threading
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from functools import wraps
from pathlib import Path
from typing import Any, Callable, TypeVar

from ledger.contract.codec import Codec
from ledger.kafka.reader import LogReader
from ledger.settings import Settings
from projections.history import Entry, Recorded, compact_json, render
from projections.status import TERMINAL, Answer, PendingElicitation, TaskRow

# Both stores' tables: ``integer`` is a 64-bit integer (SQLite's INTEGER PRIMARY KEY is the rowid),
# ``bytes`` a byte string.
TABLES = """
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT PRIMARY KEY,
    principal TEXT,
    tool TEXT NOT NULL,
    status TEXT NOT NULL,
    created_at {integer} NOT NULL,
    last_updated_at {integer} NOT NULL,
    row_json TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS history (
    position {integer} PRIMARY KEY,  -- partition << 40 | offset: the record's place in the log
    task_id TEXT NOT NULL,
    ignored_because TEXT,
    record {bytes} NOT NULL
);
CREATE TABLE IF NOT EXISTS checkpoint (partition {integer} PRIMARY KEY, next_offset {integer} NOT NULL);
CREATE TABLE IF NOT EXISTS owners (partition {integer} PRIMARY KEY, actor TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
SCHEMA = TABLES.format(integer="INTEGER", bytes="BLOB")
# What the queries need; a store being built gets them once, at the end (sorting once is faster
# than keeping them in order through a million inserts).
INDEXES = """
CREATE INDEX IF NOT EXISTS tasks_by_created ON tasks (created_at, task_id);
CREATE INDEX IF NOT EXISTS tasks_by_status ON tasks (status, created_at);
CREATE INDEX IF NOT EXISTS tasks_by_principal ON tasks (principal, created_at, task_id);
CREATE INDEX IF NOT EXISTS history_by_task ON history (task_id);
"""
INDEX_NAMES = tuple(re.findall(r"INDEX IF NOT EXISTS (\w+)", INDEXES))
# Raised whenever the tables change. A store of another format is rebuilt from the log by a server
# (the log is the truth; the store only saves reading it again) and refused by the read commands.
STORE_FORMAT = 4
PAGE_SIZE = 16_384
# A history entry's key is its place in the log, one integer: a rowid key is inserted a third
# faster than a (partition, offset) key (4.0 -> 2.8 us a row), and a replay inserts a million.
OFFSET_BITS = 40
OFFSET_MASK = (1 << OFFSET_BITS) - 1
BUILDING_LOCK_WAIT_S = 120  # the processes of a parallel replay take turns writing
FIRST_RECORDS_BYTES = 64 * 1024  # what the check of a store's first entry fetches of its partition

PENDING_AT, ANSWERS_AT = TaskRow._fields.index("pending"), TaskRow._fields.index("answers")

log = logging.getLogger(__name__)

EVERYONE = object()  # a principal filter that matches every principal (auditors, the CLI)

F = TypeVar("F", bound=Callable[..., Any])


class OutdatedStore(RuntimeError):
    """The store file was written in another format (``STORE_FORMAT``)."""


def _locked(method: F) -> F:
    """One caller at a time: the server writes from one thread and queries from others."""
    @wraps(method)
    def serialized(self: ProjectionStore, *args: Any, **kwargs: Any) -> Any:
        with self._lock:
            return method(self, *args, **kwargs)
    return serialized  # type: ignore[return-value]


class Store(ABC):
    """What every projection store offers (this module's SQLite one, ``projections.postgres``):
    rows, entries and a checkpoint written together, and the queries the read side runs."""

    path: str

    def pending_older_than(self, age_ms: int, now_ms: int, principal: Any = EVERYONE,
                           limit: int = 50, after: tuple[int, str] | None = None,
                           ) -> list[tuple[TaskRow, PendingElicitation]]:
        """Elicitations asked at least ``age_ms`` ago and still unanswered, oldest tasks first."""
        found: list[tuple[TaskRow, PendingElicitation]] = []
        for row in self.tasks(principal=principal, status="input_required", after=after, limit=10 * limit):
            found.extend((row, p) for p in row.pending if now_ms - p.requested_at >= age_ms)
            if len(found) >= limit:
                break
        return found[:limit]

    @abstractmethod
    def tasks(self, *, principal: Any = EVERYONE, status: str | None = None, tool: str | None = None,
              since: int | None = None, until: int | None = None, after: tuple[int, str] | None = None,
              limit: int = 50) -> list[TaskRow]:
        """Tasks in creation order, filtered; ``after`` is the (created_at, task_id) to page on from."""


class ProjectionStore(Store):
    """A store at ``path`` (in memory by default).

    ``building=True`` opens a store that ``ledger replay`` is building, possibly from several
    processes at once: no syncs (a replay that dies leaves a file the next one deletes) and no
    query indexes until ``index()``. A store of another ``STORE_FORMAT`` raises ``OutdatedStore``,
    or with ``rebuild_outdated=True`` is emptied, to be built again from the log.
    """

    def __init__(self, path: str | Path = ":memory:", *, building: bool = False, rebuild_outdated: bool = False,
                 synced: bool = True) -> None:
        self.path = str(path)
        self._folder: Path | None = None  # a temporary store's, deleted with it
        if self.path != ":memory:" and not Path(self.path).parent.is_dir():
            raise FileNotFoundError(f"cannot keep a projection store at {self.path}: the directory "
                                    f"{Path(self.path).parent} does not exist (create it, or choose another path)")
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                   timeout=BUILDING_LOCK_WAIT_S if building else 5.0)
        if self.path != ":memory:":
            # Before anything is written (a file's page size is fixed then): a history entry is a few
            # hundred bytes, and with 16 KiB pages a replay inserts them 15 % faster.
            self._db.execute(f"PRAGMA page_size = {PAGE_SIZE}")
            self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute(f"PRAGMA synchronous={'NORMAL' if synced and not building else 'OFF'}")
        self._create(rebuild_outdated)
        if not building:
            self._db.executescript(INDEXES)
        self._lock = threading.Lock()
        self._codec = Codec()

    def _create(self, rebuild_outdated: bool) -> None:
        db = self._db
        db.execute("BEGIN IMMEDIATE")  # the processes of a parallel replay open one new file at once
        try:
            tables = [name for (name,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            found = db.execute("PRAGMA user_version").fetchone()[0]
            if tables and found != STORE_FORMAT:
                if not rebuild_outdated:
                    raise OutdatedStore(f"the projection store at {self.path} was written by another version of "
                                        f"ledger (format {found}, this one reads {STORE_FORMAT}); rebuild it with "
                                        f"`ledger replay --store {self.path}`")
                log.warning("projection store %s has format %d, not %d; rebuilding it from the log",
                            self.path, found, STORE_FORMAT)
                for name in tables:
                    db.execute(f'DROP TABLE "{name}"')
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            db.execute(f"PRAGMA user_version = {STORE_FORMAT}")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @_locked
    def index(self) -> None:
        """Create the query indexes a store opened with ``building=True`` (or ``unindex``) left out."""
        self._db.executescript(INDEXES)

    @_locked
    def unindex(self) -> None:
        """Drop the query indexes until ``index()``: a store filled from offset 0, as a fresh server's is,
        takes the log's rows 20 % faster without them (as ``ledger replay`` builds)."""
        for name in INDEX_NAMES:
            self._db.execute(f"DROP INDEX IF EXISTS {name}")

    @classmethod
    def temporary(cls) -> ProjectionStore:
        """A store in a new file, written without syncs, that ``close`` deletes: a server with no store of
        its own folds into it rather than into memory, so its memory is bounded whatever the history's
        length (``:memory:`` grows with it)."""
        folder = Path(tempfile.mkdtemp(prefix="ledger-view-"))
        store = cls(folder / "projections.sqlite", synced=False)
        store._folder = folder
        return store

    @_locked  # as PostgresStore.close: a write still running in a thread finishes first
    def close(self) -> None:
        self._db.close()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)

    @_locked
    def clear(self) -> None:
        """Forget everything: the store is rebuilt from offset 0."""
        for table in ("tasks", "history", "checkpoint", "owners", "meta"):
            self._db.execute(f"DELETE FROM {table}")

    # writing

    @_locked
    def write(self, rows: Iterable[TaskRow], entries: Iterable[Recorded], checkpoint: Mapping[int, int],
              owners: Mapping[int, str] | None = None) -> None:
        """Upsert ``rows``, add ``entries`` (a record read twice is the same entry), move the checkpoint
        and the partitions' owners as of it."""
        db = self._db
        db.execute("BEGIN")
        try:
            db.executemany(
                "INSERT OR REPLACE INTO tasks VALUES (?, ?, ?, ?, ?, ?, ?)",
                [(r.task_id, r.principal, r.tool, r.status, r.created_at, r.last_updated_at, row_json(r))
                 for r in rows],
            )
            db.executemany(f"INSERT OR IGNORE INTO history VALUES ((? << {OFFSET_BITS}) | ?, ?, ?, ?)", entries)
            db.executemany("INSERT OR REPLACE INTO checkpoint VALUES (?, ?)", list(checkpoint.items()))
            db.executemany("INSERT OR REPLACE INTO owners VALUES (?, ?)", list((owners or {}).items()))
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    @_locked
    def set_meta(self, key: str, value: str) -> None:
        self._db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, value))

    @_locked
    def meta(self, key: str) -> str | None:
        found = self._db.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return found[0] if found else None

    # reading

    @_locked
    def checkpoint(self) -> dict[int, int]:
        return dict(self._db.execute("SELECT partition, next_offset FROM checkpoint"))

    @_locked
    def owners(self) -> dict[int, str]:
        """Each partition's owner (``projections.fence``) as of the checkpoint."""
        return dict(self._db.execute("SELECT partition, actor FROM owners"))

    @_locked
    def rows(self) -> list[TaskRow]:
        return [row_from_json(text) for (text,) in self._db.execute("SELECT row_json FROM tasks")]

    @_locked
    def row(self, task_id: str) -> TaskRow | None:
        found = self._db.execute("SELECT row_json FROM tasks WHERE task_id = ?", (task_id,)).fetchone()
        return row_from_json(found[0]) if found else None

    @_locked
    def tasks(self, *, principal: Any = EVERYONE, status: str | None = None, tool: str | None = None,
              since: int | None = None, until: int | None = None, after: tuple[int, str] | None = None,
              limit: int = 50) -> list[TaskRow]:
        """Tasks in creation order, filtered; ``after`` is the (created_at, task_id) to page on from."""
        clauses, values = filters(principal=principal, status=status, tool=tool, since=since, until=until)
        if after is not None:
            clauses.append("(created_at, task_id) > (?, ?)")
            values.extend(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT row_json FROM tasks {where} ORDER BY created_at, task_id LIMIT ?"
        return [row_from_json(text) for (text,) in self._db.execute(query, [*values, limit])]

    @_locked
    def count(self, *, status: str | None = None) -> int:
        clauses, values = filters(status=status)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._db.execute(f"SELECT count(*) FROM tasks {where}", values).fetchone()[0]

    @_locked
    def count_by_status(self) -> dict[str, int]:
        return dict(self._db.execute("SELECT status, count(*) FROM tasks GROUP BY status"))

    @_locked
    def history(self, task_id: str) -> list[Entry]:
        query = (f"SELECT position >> {OFFSET_BITS}, position & {OFFSET_MASK}, task_id, ignored_because, record "
                 "FROM history WHERE task_id = ? ORDER BY position")
        return [render(stored, self._codec) for stored in self._db.execute(query, (task_id,))]

    @_locked
    def first_event(self, partition: int) -> tuple[int, str] | None:
        """The offset and event id of the first history entry of ``partition`` (a claim, which has none,
        may come before it)."""
        found = self._db.execute(f"SELECT position & {OFFSET_MASK}, record FROM history WHERE position >= ? "
                                 "AND position < ? ORDER BY position LIMIT 1",
                                 (partition << OFFSET_BITS, (partition + 1) << OFFSET_BITS)).fetchone()
        return (found[0], self._codec.decode(found[1]).event_id) if found else None

    @_locked
    def history_size(self) -> int:
        return self._db.execute("SELECT count(*) FROM history").fetchone()[0]


def filters(*, principal: Any = EVERYONE, status: str | None = None, tool: str | None = None,
             since: int | None = None, until: int | None = None, mark: str = "?",
             same: str = "IS") -> tuple[list[str], list[Any]]:
    """WHERE clauses and their values; ``mark`` is the driver's placeholder, ``same`` its null-safe equality."""
    clauses: list[str] = []
    values: list[Any] = []
    if principal is not EVERYONE:
        clauses.append(f"principal {same} {mark}")
        values.append(principal)
    if status == "terminal":
        clauses.append(f"status IN ({', '.join([mark] * len(TERMINAL))})")
        values.extend(sorted(TERMINAL))
    elif status is not None:
        clauses.append(f"status = {mark}")
        values.append(status)
    if tool is not None:
        clauses.append(f"tool = {mark}")
        values.append(tool)
    if since is not None:
        clauses.append(f"created_at >= {mark}")
        values.append(since)
    if until is not None:
        clauses.append(f"created_at < {mark}")
        values.append(until)
    return clauses, values


def row_json(row: TaskRow) -> str:
    """The row as a JSON array of its fields, in order (its questions and answers arrays too)."""
    return compact_json(row)


def row_from_json(text: str) -> TaskRow:
    fields = json.loads(text)
    fields[PENDING_AT] = tuple(PendingElicitation(*p) for p in fields[PENDING_AT])
    fields[ANSWERS_AT] = tuple(Answer(*a) for a in fields[ANSWERS_AT])
    return TaskRow(*fields)


async def store_matches_topic(store: Store, settings: Settings) -> bool:
    """Whether ``store`` was built from this topic: the first event it holds of a partition is at its
    place on the topic.

    A store left from another topic of the same name (a recreated topic, an embedded broker that
    restarted empty) must be rebuilt, not read on from its checkpoint. Such a topic differs in every
    partition (event ids are random), so one partition tells; on the embedded broker each partition
    read costs a scan of it (16 ms at 5,000,000 events: 32 partitions were half a second of a start).
    """
    first = await asyncio.to_thread(_first_entry, store)
    if first is None:
        return True
    partition, offset, event_id = first
    # A record at a time: the embedded broker sends whole batches whatever the fetch size.
    async with LogReader(settings, checkpoint={partition: offset}, partitions=[partition],
                         client_id=f"{settings.client_id}-store-check", partition_fetch_bytes=FIRST_RECORDS_BYTES,
                         max_records=1) as reader:
        deadline = asyncio.get_running_loop().time() + settings.read_timeout_ms / 1000
        while asyncio.get_running_loop().time() < deadline:
            if records := await reader.fetch():
                return records[0].offset == offset and records[0].event.event_id == event_id
            if reader.caught_up():
                return False
    return False


def _first_entry(store: Store) -> tuple[int, int, str] | None:
    """The first history entry of the lowest partition that has one: (partition, offset, event id)."""
    for partition, offset in sorted(store.checkpoint().items()):
        if offset > 0 and (first := store.first_event(partition)) is not None:
            return (partition, *first)
    return None
