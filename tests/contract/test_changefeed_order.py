"""The change feed's order is commit order, on both engines and across nodes (issue 15).

A client paging with ``since=<last seq seen>`` must never miss or repeat an entry. On
PostgreSQL an identity is drawn at insert time, not at commit, so this holds only because the
entry is a change's last statement under FEED_LOCK (nubis.index.feed_sql). Each writer here
lingers after its insert before committing, as a slow commit would, while a reader pages
concurrently: without the lock the reader pages past entries that commit later, and this test
fails (checked by taking the lock out). A writer whose node dies mid-commit (its PostgreSQL
backend terminated while it holds the lock, as a SIGKILL'd node's connection is dropped) leaves
a gap that hides nothing: the others go on and the reader still sees every committed entry.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import Connection, select

from nubis.index import feed_sql
from nubis.index.database import Index
from nubis.index.schema import change_feed

WRITERS, PER_WRITER = 4, 30


@pytest.fixture(params=["sqlite", "postgresql"])
def index_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'index.sqlite'}"
    postgres = request.getfixturevalue("postgres")
    return str(postgres.database(f"feed_{abs(hash(request.node.nodeid)):x}"))


@pytest.fixture
def nodes(index_url: str) -> Iterator[list[Index]]:
    opened = []
    for _ in range(2):
        node = Index(index_url, durable=False)
        node.migrate()
        node.open()
        opened.append(node)
    yield opened
    for node in opened:
        node.close()


def _slow_commit(node: Index, change: feed_sql.Change, conn: Connection) -> None:
    node.note_changes(conn, change)
    time.sleep(0.003)  # a slow commit: the entry's seq is drawn, not yet visible


def _writer(node: Index, writer: int) -> Callable[[], None]:
    def run() -> None:
        for i in range(PER_WRITER):
            change = feed_sql.Change(feed_sql.CREATE, feed_sql.CURRENT, "p", f"1.2.{writer}.{i}")

            node.write(functools.partial(_slow_commit, node, change))

    return run


def _killed_mid_commit(index_url: str) -> Callable[[], None]:
    """A node that takes the feed's lock, inserts its entry and dies before committing."""
    url = index_url.replace("postgresql+psycopg://", "postgresql://")

    def run() -> None:
        with psycopg.connect(url) as victim, psycopg.connect(url, autocommit=True) as killer:
            victim.execute(f"SELECT pg_advisory_xact_lock({feed_sql.FEED_LOCK})")
            victim.execute(
                "INSERT INTO change_feed (action, state, partition, study_uid, created_at) "
                "VALUES ('create', 'current', 'p', '9.9.9', 0)"
            )
            time.sleep(0.05)  # the other writers queue behind its lock
            killer.execute("SELECT pg_terminate_backend(%s)", (victim.info.backend_pid,))
            time.sleep(0.05)

    def guarded() -> None:
        with contextlib.suppress(psycopg.Error):  # the victim's connection is gone: the point
            run()

    return guarded


def test_a_concurrent_reader_sees_every_entry_once_in_order(
    nodes: list[Index], index_url: str
) -> None:
    seen: list[int] = []
    writing = threading.Event()
    writing.set()

    def read() -> None:
        since = 0
        while True:
            still_writing = writing.is_set()
            with nodes[0].reading() as conn:
                page = feed_sql.page(conn, "p", since, 7)
            seen.extend(e.seq for e in page)
            if page:
                since = page[-1].seq
            elif not still_writing:
                return
            else:
                # Nothing new: give the writers the GIL (a reader spinning on it starved them,
                # 13 s for 120 entries on SQLite) and read again at once, so a reader paging
                # past an uncommitted seq is still caught (4 of 4 runs fail without the lock).
                time.sleep(0)

    threads = [threading.Thread(target=_writer(nodes[w % 2], w)) for w in range(WRITERS)]
    if index_url.startswith("postgresql"):
        threads.append(threading.Thread(target=_killed_mid_commit(index_url)))
    reader = threading.Thread(target=read)
    reader.start()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    writing.clear()
    reader.join(timeout=60)

    with nodes[1].reading() as conn:
        committed = list(
            conn.execute(select(change_feed.c.seq).order_by(change_feed.c.seq)).scalars()
        )
        killed = conn.execute(
            select(change_feed.c.seq).where(change_feed.c.study_uid == "9.9.9")
        ).first()
    assert killed is None  # the dead node's entry never committed
    assert len(committed) == WRITERS * PER_WRITER
    assert len(seen) == len(set(seen)), "an entry was listed twice"
    assert seen == committed, (
        f"the reader missed {sorted(set(committed) - set(seen))[:10]} (paged past them before "
        "they committed)"
    )
