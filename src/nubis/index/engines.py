"""How the index reaches its database: the engines, and the writer that commits.

On SQLite, writes go through one writer thread that commits whatever stores are waiting in a
single transaction (group commit), each in its own SAVEPOINT: with synchronous=FULL every commit
costs an fsync, and many concurrent STOW-RS / C-STORE requests share one instead of queueing
behind each other. Reads use a pool of connections; SQLite's WAL lets them run beside the writer.

On PostgreSQL, many nodes write at once: each write runs in its own READ COMMITTED transaction
on a pooled connection in the caller's thread (the server does group commit itself), and is
retried on serialization failures and deadlocks.
"""

from __future__ import annotations

import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any, TypeVar

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.exc import OperationalError
from sqlalchemy.pool import QueuePool, StaticPool

from nubis.errors import StorageUnavailable
from nubis.index.driver import driver_cursor

log = logging.getLogger(__name__)
T = TypeVar("T")


def sqlite_engine(url: str, *, durable: bool, writer: bool) -> Engine:
    engine = create_engine(
        url,
        poolclass=StaticPool if writer else QueuePool,
        connect_args={"check_same_thread": False, "timeout": 30},
        **({} if writer else {"pool_size": 8, "max_overflow": 8}),
    )

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Let SQLAlchemy, not pysqlite, decide where transactions begin (needed for SAVEPOINT).
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.execute("PRAGMA busy_timeout=30000")
        # The writer keeps each page it changed until its cache is full: 64 MiB grew ~7 KB per
        # stored instance, mostly append-only pages never read again (issue 12). Readers map
        # the file; SQLite empties their caches once another connection commits.
        cursor.execute(f"PRAGMA cache_size={-8192 if writer else -65536}")
        cursor.execute("PRAGMA mmap_size=268435456")
        cursor.execute("PRAGMA temp_store=MEMORY")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if writer else "BEGIN")

    return engine


def postgresql_engine(url: str, *, durable: bool) -> Engine:
    engine = create_engine(
        url,
        pool_size=16,
        max_overflow=16,
        # A node outlives a database restart or fail-over: stale pooled connections are
        # replaced on checkout instead of failing the request that drew them.
        pool_pre_ping=True,
        pool_recycle=1800,
    )
    if not durable:

        @event.listens_for(engine, "connect")
        def _on_connect(dbapi_connection: Any, _record: Any) -> None:
            # Like SQLite's synchronous=OFF: a crash may lose the last commits, never corrupt.
            with dbapi_connection.cursor() as cursor:
                cursor.execute("SET synchronous_commit = off")
            dbapi_connection.commit()

    return engine


def driver_url(url: str) -> str:
    """postgresql:// (what operators write) runs on psycopg 3, not SQLAlchemy's psycopg2."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url.removeprefix(prefix)
    return url


# SQLSTATEs after which the same transaction, run again, may well succeed.
_RETRYABLE_SQLSTATES = frozenset({"40001", "40P01"})  # serialization failure, deadlock


def _retryable(exc: BaseException) -> bool:
    sqlstate = getattr(getattr(exc, "orig", exc), "sqlstate", None)
    return sqlstate in _RETRYABLE_SQLSTATES


class ConcurrentWriter:
    """Runs each write job in its own transaction in the caller's thread, with retries."""

    attempts = 8

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def submit(self, job: Callable[[Connection], T]) -> T:
        unreachable = (OperationalError, self.engine.dialect.loaded_dbapi.OperationalError)
        for attempt in range(1, self.attempts + 1):
            try:
                with self.engine.connect() as conn, conn.begin():
                    return job(conn)
            except Exception as exc:
                if not (_retryable(exc) or isinstance(exc, unreachable)):
                    raise  # the job's own outcome (NotFound, DuplicateInstance...)
                if _retryable(exc) and attempt < self.attempts:
                    # Jittered backoff so the transactions that collided do not collide again.
                    time.sleep(random.uniform(0, 0.005 * 2**attempt))
                    continue
                log.error("index write failed: %s", exc)
                raise StorageUnavailable("the index could not commit the write") from exc
        raise AssertionError("unreachable")

    def stop(self) -> None:
        """Nothing runs in the background."""


class GroupCommitWriter(threading.Thread):
    """Runs write jobs on one connection, many jobs per transaction."""

    max_batch = 128

    def __init__(self, engine: Engine) -> None:
        super().__init__(name="nubis-index-writer", daemon=True)
        self.engine = engine
        self.jobs: queue.SimpleQueue[tuple[Callable[[Connection], Any], Future[Any]] | None] = (
            queue.SimpleQueue()
        )

    def submit(self, job: Callable[[Connection], T]) -> T:
        future: Future[T] = Future()
        self.jobs.put((job, future))
        return future.result()

    def stop(self) -> None:
        self.jobs.put(None)
        self.join(timeout=30)

    def run(self) -> None:
        while True:
            first = self.jobs.get()
            if first is None:
                return
            batch = [first]
            while len(batch) < self.max_batch:
                try:
                    nxt = self.jobs.get_nowait()
                except queue.Empty:
                    break
                if nxt is None:
                    self.jobs.put(None)  # finish this batch, then stop
                    break
                batch.append(nxt)
            self._run_batch(batch)

    def _run_batch(self, batch: list[tuple[Callable[[Connection], Any], Future[Any]]]) -> None:
        outcomes: list[tuple[bool, Any]] = []
        try:
            with self.engine.connect() as conn, conn.begin():
                # Savepoints on the driver's cursor: SQLAlchemy's cost as much as a store.
                cursor = driver_cursor(conn)
                for job, _ in batch:
                    cursor.execute("SAVEPOINT job")
                    try:
                        result = job(conn)
                    except BaseException as exc:
                        cursor.execute("ROLLBACK TO job")
                        cursor.execute("RELEASE job")
                        outcomes.append((False, exc))
                    else:
                        cursor.execute("RELEASE job")
                        outcomes.append((True, result))
        except Exception as exc:
            log.exception("index commit failed for %d write(s)", len(batch))
            failure = StorageUnavailable("the index could not commit the write")
            failure.__cause__ = exc
            for _, future in batch:
                future.set_exception(failure)
            return
        for (_, future), (ok, value) in zip(batch, outcomes, strict=True):
            if ok:
                future.set_result(value)
            else:
                future.set_exception(value)
