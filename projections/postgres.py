"""The shared projection store: the SQLite store's tables in PostgreSQL, for every server and worker.

A projector (``ledger projector``) or ``ledger replay --database`` writes it; servers and workers read
it instead of folding the log from offset 0 (docs/architecture.md, "Starting bounded by what is
open"). Rows, entries and the per-partition checkpoint are written in one transaction, as in SQLite,
so the database is always "the log folded up to its checkpoint". A writer that names the checkpoint
it resumed from (``expect``) is refused once another writer has moved it: two projectors that both
believe they own a partition during a rebalance cannot both write it.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Iterable, Mapping
from typing import Any

import psycopg

from ledger.contract.codec import Codec
from ledger.kafka.records import LogRecord
from ledger.settings import Settings
from projections.history import Entry, Recorded, render
from projections.status import TaskRow, transition
from projections.store import (
    EVERYONE,
    INDEX_NAMES,
    INDEXES,
    OFFSET_BITS,
    OFFSET_MASK,
    STORE_FORMAT,
    TABLES,
    OutdatedStore,
    Store,
    filters,
    row_from_json,
    row_json,
    store_matches_topic,
)

SCHEMA = TABLES.format(integer="BIGINT", bytes="BYTEA")
# A worker given a partition reads its open tasks' history (``open_tasks``).
OPEN_TASKS_INDEX = ("CREATE INDEX IF NOT EXISTS tasks_open ON tasks (task_id) "
                    "WHERE status IN ('working', 'input_required')")
SCHEMA_NAME = "ledger"  # the tables' PostgreSQL schema
BUILDING_SCHEMA = "ledger_building"  # where ``ledger replay`` builds them, to take ``SCHEMA_NAME``'s place
TABLE_NAMES = ("tasks", "history", "checkpoint", "owners", "meta")
# Every writer and reader of one database takes this advisory lock while it creates or checks the
# tables, so that two processes starting at once do not both create them.
SCHEMA_LOCK = 0x6C6564676572  # "ledger"


class DatabaseUnavailable(RuntimeError):
    """The projection database cannot be reached, or its URL cannot be read."""


class ForeignDatabase(RuntimeError):
    """The database holds the fold of another topic (a recreated topic, another deployment's)."""

    def __init__(self, where: str, topic: str) -> None:
        super().__init__(f"the projection database {where} holds the fold of another {topic}; rebuild it with "
                         "`ledger replay --database`")


async def refuse_foreign(database: PostgresStore, settings: Settings) -> None:
    """Raise ``ForeignDatabase`` unless ``database`` was folded from this deployment's topic.

    Once per process for a database and topic: ``ledger server`` checks before it serves (an error in
    one sentence), and the view that ``create_app`` builds checks for anyone else who calls it.
    """
    checked = (database.path, settings.events_topic)
    if checked in _MATCHING:
        return
    if not await store_matches_topic(database, settings):
        raise ForeignDatabase(*checked)
    _MATCHING.add(checked)


_MATCHING: set[tuple[str, str]] = set()  # (database, topic) found to match in this process


class CheckpointMoved(RuntimeError):
    """Another writer moved a partition's checkpoint since this one read it: it no longer owns it."""


class PostgresStore(Store):
    """The store in the database at ``url`` (a libpq connection string or ``postgresql://`` URL).

    ``building=True`` is for ``ledger replay``: entries are copied in (no conflicts are possible in a
    store being built from offset 0) and the query indexes wait for ``index()``. Tables of another
    ``STORE_FORMAT`` raise ``OutdatedStore``, or with ``rebuild_outdated=True`` are emptied.
    """

    def __init__(self, url: str, *, schema: str = SCHEMA_NAME, building: bool = False,
                 rebuild_outdated: bool = False) -> None:
        self.url = url
        self.path = _without_password(url)  # what messages name: never the password
        self.schema = schema
        self.building = building
        try:
            self._db = self._connect()
        except psycopg.ProgrammingError as exc:
            raise DatabaseUnavailable(f"the projection database's URL is not a PostgreSQL connection string: "
                             f"{_first_line(exc)}") from None
        except psycopg.OperationalError as exc:
            raise DatabaseUnavailable(f"cannot connect to the projection database {self.path}: "
                                  f"{_first_line(exc)}") from None
        self._lock = threading.Lock()
        self._codec = Codec()
        self._create(rebuild_outdated)
        if not building:
            self.index()

    def _connect(self) -> psycopg.Connection:
        return psycopg.connect(self.url, autocommit=True, application_name="ledger")

    @property
    def _live(self) -> psycopg.Connection:
        """The connection, made again if the last one broke (the database restarted, the network
        dropped): the next call after an error finds the database again, or raises."""
        if self._db.closed or self._db.broken:
            self._db = self._connect()
            self._db.execute(f"SET search_path TO {self.schema}")
        return self._db

    def _create(self, rebuild_outdated: bool) -> None:
        with self._db.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._db.execute(f"CREATE SCHEMA IF NOT EXISTS {self.schema}")
            self._db.execute(f"SET search_path TO {self.schema}")
            found = self._db.execute("SELECT to_regclass('meta') IS NOT NULL").fetchone()[0]
            version = self._format() if found else None
            if version is not None and version != STORE_FORMAT:
                if not rebuild_outdated:
                    raise OutdatedStore(f"the projection database {self.path} was written by another version of "
                                        f"ledger (format {version}, this one reads {STORE_FORMAT}); rebuild it with "
                                        f"`ledger replay --database URL`")
                self._db.execute(f"DROP TABLE IF EXISTS {', '.join(TABLE_NAMES)}")
            self._db.execute(SCHEMA)
            self._db.execute("INSERT INTO meta VALUES ('format', %s) ON CONFLICT (key) DO NOTHING", (str(STORE_FORMAT),))

    def _format(self) -> int | None:
        found = self._db.execute("SELECT value FROM meta WHERE key = 'format'").fetchone()
        return int(found[0]) if found else None

    def index(self) -> None:
        with self._lock, self._live.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._db.execute(INDEXES)
            self._db.execute(OPEN_TASKS_INDEX)
            if self.building:  # the planner's statistics, before anyone plans on a table it has not seen
                self._db.execute("ANALYZE tasks, history")

    def unindex(self) -> None:
        """Drop the query indexes until ``index()``, as the SQLite store's ``unindex``."""
        with self._lock, self._live.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            for name in (*INDEX_NAMES, "tasks_open"):
                self._db.execute(f"DROP INDEX IF EXISTS {name}")

    def close(self) -> None:
        # under the lock: a write still running in a thread (its task cancelled) finishes first, for libpq
        # frees a connection closed under a running query (a segfault, not an error)
        with self._lock:
            self._db.close()

    def take_place_of(self, schema: str = SCHEMA_NAME) -> None:
        """Put this store's tables where ``schema``'s are, in one transaction: readers of ``schema`` see
        the old tables or these, never a mix, and go on reading these."""
        with self._lock, self._live.transaction():
            self._db.execute("SELECT pg_advisory_xact_lock(%s)", (SCHEMA_LOCK,))
            self._db.execute(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            self._db.execute(f"ALTER SCHEMA {self.schema} RENAME TO {schema}")
            self._db.execute(f"SET search_path TO {schema}")
        self.schema = schema

    def clear(self) -> None:
        with self._lock:
            self._live.execute(f"TRUNCATE {', '.join(t for t in TABLE_NAMES if t != 'meta')}")
            self._db.execute("DELETE FROM meta WHERE key <> 'format'")

    # writing

    def write(self, rows: Iterable[TaskRow], entries: Iterable[Recorded], checkpoint: Mapping[int, int],
              owners: Mapping[int, str] | None = None, expect: Mapping[int, int] | None = None) -> None:
        """As ``ProjectionStore.write``; with ``expect`` (each partition's checkpoint as this writer last
        wrote or read it) ``CheckpointMoved`` if another writer has moved one since, and nothing is written."""
        with self._lock, self._live.transaction(), self._db.cursor() as cur:
            if expect:
                self._take_over(cur, expect)
            cur.executemany(
                "INSERT INTO tasks VALUES (%s, %s, %s, %s, %s, %s, %s) ON CONFLICT (task_id) DO UPDATE SET "
                "status = excluded.status, last_updated_at = excluded.last_updated_at, row_json = excluded.row_json",
                [(r.task_id, r.principal, r.tool, r.status, r.created_at, r.last_updated_at, row_json(r))
                 for r in rows])
            if self.building:
                with cur.copy("COPY history FROM STDIN") as copy:
                    for partition, offset, task_id, ignored_because, record in entries:
                        copy.write_row(((partition << OFFSET_BITS) | offset, task_id, ignored_because, record))
            else:
                cur.executemany("INSERT INTO history VALUES (%s, %s, %s, %s) ON CONFLICT (position) DO NOTHING",
                                [((p << OFFSET_BITS) | o, t, i, r) for p, o, t, i, r in entries])
            cur.executemany("INSERT INTO checkpoint VALUES (%s, %s) ON CONFLICT (partition) DO UPDATE SET "
                            "next_offset = excluded.next_offset", list(checkpoint.items()))
            cur.executemany("INSERT INTO owners VALUES (%s, %s) ON CONFLICT (partition) DO UPDATE SET "
                            "actor = excluded.actor", list((owners or {}).items()))

    @staticmethod
    def _take_over(cur: psycopg.Cursor, expect: Mapping[int, int]) -> None:
        """Lock the partitions' checkpoints for this transaction, or raise if one is not where expected."""
        found = dict(cur.execute("SELECT partition, next_offset FROM checkpoint WHERE partition = ANY(%s) "
                                 "FOR UPDATE", (list(expect),)).fetchall())
        moved = {p: found.get(p, 0) for p, offset in expect.items() if found.get(p, 0) != offset}
        if moved:
            raise CheckpointMoved(f"another writer moved the checkpoint of partitions {sorted(moved)} "
                                  f"(now at {moved}, expected {dict(expect)})")

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self._live.execute("INSERT INTO meta VALUES (%s, %s) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
                             (key, value))

    def meta(self, key: str) -> str | None:
        found = self._one("SELECT value FROM meta WHERE key = %s", (key,))
        return found[0] if found else None

    # reading

    def checkpoint(self) -> dict[int, int]:
        return dict(self._all("SELECT partition, next_offset FROM checkpoint"))

    def snapshot(self) -> tuple[dict[int, int], dict[int, str]]:
        """The checkpoint and the partitions' owners as of it, read together (one writer's commit
        cannot fall between them)."""
        with self._lock, self._live.transaction():
            self._db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            checkpoint = dict(self._db.execute("SELECT partition, next_offset FROM checkpoint").fetchall())
            owners = dict(self._db.execute("SELECT partition, actor FROM owners").fetchall())
        return checkpoint, owners

    def open_tasks(self, partitions: Collection[int]) -> tuple[dict[int, int], dict[int, str], list[LogRecord]]:
        """What a worker given ``partitions`` restores, read together: their checkpoint, their owners as of
        it, and the history records (as written) of their tasks still open then, in log order, without
        the records a fold ignored."""
        query = ("SELECT h.position, h.record FROM tasks t JOIN history h ON h.task_id = t.task_id "
                 "WHERE t.status IN ('working', 'input_required') AND h.ignored_because IS NULL "
                 f"AND h.position >> {OFFSET_BITS} = ANY(%s) ORDER BY h.position")
        wanted = list(partitions)
        with self._lock, self._live.transaction():
            self._db.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            checkpoint = dict(self._db.execute("SELECT partition, next_offset FROM checkpoint WHERE partition = "
                                               "ANY(%s)", (wanted,)).fetchall())
            owners = dict(self._db.execute("SELECT partition, actor FROM owners WHERE partition = ANY(%s)",
                                           (wanted,)).fetchall())
            found = self._db.execute(query, (wanted,)).fetchall()
        decode = self._codec.decode
        records = [LogRecord(position >> OFFSET_BITS, position & OFFSET_MASK, decode(record), record)
                   for position, record in found]
        return checkpoint, owners, records

    def rows_before(self, positions: Mapping[str, tuple[int, int]]) -> dict[str, TaskRow]:
        """Each task's row as it was just before its (partition, offset) in ``positions``: its history
        entries before that place, folded (the entries a fold ignored changed nothing, and a fold is
        deterministic). Exact whatever this database has read since: a server folding the log behind
        the projectors starts a task's row from here."""
        if not positions:
            return {}
        query = ("SELECT task_id, position, record FROM history WHERE task_id = ANY(%s) "
                 "AND ignored_because IS NULL ORDER BY position")
        rows: dict[str, TaskRow] = {}
        decode = self._codec.decode
        for task_id, position, record in self._all(query, (list(positions),)):
            partition, offset = positions[task_id]
            if position < (partition << OFFSET_BITS) | offset:
                row = transition(rows.get(task_id), decode(record))
                if row is not None:
                    rows[task_id] = row
        return rows

    def owners(self) -> dict[int, str]:
        return dict(self._all("SELECT partition, actor FROM owners"))

    def rows(self) -> list[TaskRow]:
        return [row_from_json(text) for (text,) in self._all("SELECT row_json FROM tasks")]

    def row(self, task_id: str) -> TaskRow | None:
        found = self._one("SELECT row_json FROM tasks WHERE task_id = %s", (task_id,))
        return row_from_json(found[0]) if found else None

    def tasks(self, *, principal: Any = EVERYONE, status: str | None = None, tool: str | None = None,
              since: int | None = None, until: int | None = None, after: tuple[int, str] | None = None,
              limit: int = 50) -> list[TaskRow]:
        clauses, values = filters(principal=principal, status=status, tool=tool, since=since, until=until,
                                  mark="%s", same="IS NOT DISTINCT FROM")
        if after is not None:
            clauses.append("(created_at, task_id) > (%s, %s)")
            values.extend(after)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        query = f"SELECT row_json FROM tasks {where} ORDER BY created_at, task_id LIMIT %s"
        return [row_from_json(text) for (text,) in self._all(query, [*values, limit])]

    def count(self, *, status: str | None = None) -> int:
        clauses, values = filters(status=status, mark="%s")
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        return self._one(f"SELECT count(*) FROM tasks {where}", values)[0]

    def count_by_status(self) -> dict[str, int]:
        return dict(self._all("SELECT status, count(*) FROM tasks GROUP BY status"))

    def history(self, task_id: str) -> list[Entry]:
        query = (f"SELECT position >> {OFFSET_BITS}, position & {OFFSET_MASK}, task_id, ignored_because, record "
                 "FROM history WHERE task_id = %s ORDER BY position")
        return [render(stored, self._codec) for stored in self._all(query, (task_id,))]

    def first_event(self, partition: int) -> tuple[int, str] | None:
        found = self._one(f"SELECT position & {OFFSET_MASK}, record FROM history WHERE position >= %s "
                          "AND position < %s ORDER BY position LIMIT 1",
                          (partition << OFFSET_BITS, (partition + 1) << OFFSET_BITS))
        return (found[0], self._codec.decode(found[1]).event_id) if found else None

    def history_size(self) -> int:
        return self._one("SELECT count(*) FROM history")[0]

    def _one(self, query: str, values: Any = ()) -> Any:
        with self._lock:
            return self._live.execute(query, values).fetchone()

    def _all(self, query: str, values: Any = ()) -> list[Any]:
        with self._lock:
            return self._live.execute(query, values).fetchall()


def _without_password(url: str) -> str:
    """``url`` as messages may show it."""
    try:
        info = psycopg.conninfo.conninfo_to_dict(url)
    except psycopg.ProgrammingError:
        return "(an unreadable connection string)"
    host, port, dbname, user = (info.get(key) for key in ("host", "port", "dbname", "user"))
    where = f"{host or 'localhost'}{f':{port}' if port else ''}/{dbname or user or ''}"
    return f"postgresql://{f'{user}@' if user else ''}{where}"


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
