"""PgBouncer in transaction mode in front of the test PostgreSQL (docs/scaling.md,
"PgBouncer in transaction mode").

A private PgBouncer (Debian's `pgbouncer`, which `make test` installs) pools the test
database with fewer server sessions than it has clients, so consecutive transactions of one
client run on different sessions, as in production. Through it: the store path's COPY (into
`signals` and through the staging table), partitions made under their advisory lock by
several clients at once, retention's one-run-at-a-time lock, /health's PostgreSQL check, and
the real bridge and worker storing a run and its replay.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg
import pytest
from django.db import connection, connections

from api.selectors import _postgresql
from eventpipeline import retention
from eventpipeline.retention import RetentionBusy, retention_apply
from signals_app import partitions
from signals_app.models import Signal
from signals_app.partitions import DAY_MS, day_number, partition_name
from signals_app.services import StoreResult, signals_store_batch
from tests.conftest import Pipeline, database_url, free_port, wait_for
from tests.factories import signal_row

NOW_MS = int(time.time() * 1000)
TOPIC = "pgbouncer-test"
# Fewer server sessions than clients: the pipeline's worker alone runs 8 threads.
POOL_SIZE = 3
# The statement timeout of the api's pool, as docs/scaling.md sets one up.
API_TIMEOUT_MS = 300
transactional = pytest.mark.django_db(transaction=True, serialized_rollback=True)
T = TypeVar("T")


def pgbouncer_binary() -> str:
    found = shutil.which("pgbouncer") or next(
        (path for path in ("/usr/sbin/pgbouncer", "/usr/bin/pgbouncer") if os.access(path, os.X_OK)), None
    )
    if found is None:
        pytest.fail(
            "pgbouncer not found: install it (Debian: `apt-get install -y pgbouncer`, or `make pgbouncer` as root) "
            "so that the pipeline is tested behind PgBouncer in transaction mode"
        )
    return found


@dataclass
class PgBouncer:
    port: int
    user: str
    database: str

    def url(self, database: str | None = None) -> str:
        return f"postgres://{self.user}@127.0.0.1:{self.port}/{database or self.database}"

    def show(self, what: str) -> list[dict[str, Any]]:
        """A table of PgBouncer's admin console (SHOW STATS, SHOW SERVERS, ...)."""
        with psycopg.connect(self.url("pgbouncer"), autocommit=True) as admin:
            cursor = admin.execute(f"SHOW {what}", prepare=False)
            names = [column.name for column in cursor.description or []]
            return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    def transactions(self) -> int:
        """Transactions PgBouncer has passed to the test database so far."""
        return sum(int(row["total_xact_count"]) for row in self.show("STATS") if row["database"] == self.database)


@pytest.fixture
def pgbouncer(django_db_setup: None, tmp_path: Path) -> Iterator[PgBouncer]:
    """PgBouncer in transaction mode before the test database, on a free port; any database
    name is passed through, and clients are trusted as PostgreSQL trusts them here."""
    db = connection.settings_dict
    bouncer = PgBouncer(port=free_port(), user=db["USER"], database=db["NAME"])
    (tmp_path / "userlist.txt").write_text(f'"{bouncer.user}" ""\n')
    (tmp_path / "pgbouncer.ini").write_text(
        f"""[databases]
* = host={db["HOST"] or "127.0.0.1"} port={db["PORT"] or 5432}
{bouncer.database}_api = host={db["HOST"] or "127.0.0.1"} port={db["PORT"] or 5432} dbname={bouncer.database} \
connect_query='SET statement_timeout = {API_TIMEOUT_MS}'
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {bouncer.port}
unix_socket_dir =
auth_type = trust
auth_file = {tmp_path / "userlist.txt"}
admin_users = {bouncer.user}
pool_mode = transaction
default_pool_size = {POOL_SIZE}
max_client_conn = 200
"""
    )
    # PgBouncer will not run as root: it reads its files, then becomes `nobody`.
    command = [pgbouncer_binary(), *(["-u", "nobody"] if os.geteuid() == 0 else []), str(tmp_path / "pgbouncer.ini")]
    with open(tmp_path / "pgbouncer.log", "wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_for(lambda: _answers(bouncer), timeout=15, what="pgbouncer to accept connections")
        yield bouncer
    finally:
        connections.close_all()
        process.terminate()
        process.wait(timeout=30)


def _answers(bouncer: PgBouncer) -> bool:
    try:
        psycopg.connect(bouncer.url(), connect_timeout=2).close()
        return True
    except psycopg.OperationalError:
        return False


@pytest.fixture
def through_pgbouncer(pgbouncer: PgBouncer, settings: Any) -> Iterator[PgBouncer]:
    """This process's Django connections, in every thread, go through PgBouncer, with the
    settings a deployment behind it uses (DATABASE_TRANSACTION_POOLING)."""
    settings.DATABASE_TRANSACTION_POOLING = True
    # Every thread's connection is made from this same dict (pytest-django named the test
    # database in it the same way).
    db = connection.settings_dict
    saved = {key: db[key] for key in ("HOST", "PORT", "DISABLE_SERVER_SIDE_CURSORS")}
    connections.close_all()
    db.update(HOST="127.0.0.1", PORT=str(pgbouncer.port), DISABLE_SERVER_SIDE_CURSORS=True)
    try:
        yield pgbouncer
    finally:
        connections.close_all()
        db.update(saved)


def direct(sql: str, params: list[Any] | None = None) -> list[tuple[Any, ...]]:
    """Ask PostgreSQL itself, not through PgBouncer."""
    with psycopg.connect(database_url(), autocommit=True) as pg:
        cursor = pg.execute(sql, params)
        return cursor.fetchall() if cursor.description else []


def in_threads(count: int, work: Callable[[], T]) -> list[T | BaseException]:
    """`work` in `count` threads started together, each on its own connection (Django's are
    per thread); what each returned or raised."""
    start = threading.Barrier(count)
    results: list[T | BaseException] = [RuntimeError("did not run")] * count

    def run(index: int) -> None:
        try:
            start.wait()
            results[index] = work()
        except BaseException as error:  # noqa: BLE001 - reported to the test
            results[index] = error
        finally:
            connection.close()

    threads = [threading.Thread(target=run, args=(index,)) for index in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


@transactional
def test_the_pool_is_smaller_than_its_clients(through_pgbouncer: PgBouncer) -> None:
    """What the tests below rely on: many clients share at most POOL_SIZE server sessions,
    and one client's consecutive transactions run on different ones."""

    def sessions_seen() -> set[int]:
        pids = set()
        for _ in range(20):
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_backend_pid(), pg_sleep(0.005)")
                pids.add(cursor.fetchone()[0])
        return pids

    seen = [result for result in in_threads(8, sessions_seen) if isinstance(result, set)]
    assert len(seen) == 8
    assert 1 < len(set().union(*seen)) <= POOL_SIZE
    assert any(len(pids) > 1 for pids in seen), "every client kept one session"


@transactional
def test_the_store_path_copies_through_pgbouncer(through_pgbouncer: PgBouncer) -> None:
    """COPY straight into `signals`, a day's partition made on the spot under its advisory
    lock, and a redelivery through the staging table, each counted once."""
    day_ms = (day_number(NOW_MS) - 60) * DAY_MS  # no partition yet: made by the store
    partitions.signals_partitions_forget()
    rows = [signal_row(offset=i, timestamp=day_ms + i * 1000) for i in range(500)]
    more = [signal_row(offset=500 + i, timestamp=day_ms + i * 1000) for i in range(250)]
    before = through_pgbouncer.transactions()

    first = signals_store_batch(topic=TOPIC, rows=rows)
    again = signals_store_batch(topic=TOPIC, rows=rows[250:] + more)

    assert first == StoreResult(stored=500, duplicates=0)
    assert again == StoreResult(stored=250, duplicates=250)
    assert through_pgbouncer.transactions() - before >= 4, "the work went through PgBouncer"
    name = partition_name(day_number(day_ms))
    assert direct(f'SELECT count(*), count(DISTINCT event_id) FROM "{name}"') == [(750, 750)]
    direct(f'DROP TABLE "{name}"')


@transactional
def test_partitions_made_by_many_clients_at_once_through_pgbouncer(through_pgbouncer: PgBouncer) -> None:
    """Eight stores meeting the same three new days: each day is made once, and none fails
    (the advisory lock is a transaction's, so it stays with the session that took it)."""
    first = day_number(NOW_MS) - 70
    days = [first, first + 1, first + 2]
    partitions.signals_partitions_forget()

    results = in_threads(8, lambda: partitions.signals_partitions_ensure(days=days))

    assert not [result for result in results if isinstance(result, BaseException)], results
    made = [name for result in results if isinstance(result, list) for name in result]
    assert sorted(made) == [partition_name(day) for day in days]
    for day in days:
        direct(f'DROP TABLE "{partition_name(day)}"')


@transactional
def test_one_retention_run_at_a_time_through_pgbouncer(through_pgbouncer: PgBouncer) -> None:
    """While a run holds retention's lock, a run from another client of the same pool is
    refused; afterwards the lock is gone from every session, and a run through PgBouncer
    drops the old day (in one transaction, as DATABASE_TRANSACTION_POOLING asks)."""
    old_ms = (day_number(NOW_MS) - 45) * DAY_MS
    rows = [signal_row(offset=i, timestamp=old_ms + i) for i in range(10)]
    assert signals_store_batch(topic=TOPIC, rows=rows).stored == 10

    def other_run() -> object:
        return retention_apply(days={"signals": 30}, include_open=False, chunk_rows=100)

    with retention._one_run_at_a_time():
        # Every session of the pool meanwhile, this one's too: each is free to serve it.
        refused = in_threads(2 * POOL_SIZE, other_run)
    assert all(isinstance(result, RetentionBusy) for result in refused), refused
    assert Signal.objects.filter(timestamp=old_ms).count() == 1, "nothing was removed meanwhile"

    lock = retention._RETENTION_LOCK
    held = (
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objsubid = 1"
        " AND ((classid::bigint << 32) | objid::bigint) = %s"
    )
    assert direct(held, [lock]) == [(0,)]
    done = retention_apply(days={"signals": 30}, include_open=False, chunk_rows=100)
    assert [(part.table, part.removed >= 10) for part in done] == [("signals", True)]
    assert direct("SELECT to_regclass(%s)", [partition_name(day_number(old_ms))]) == [(None,)]
    assert direct(held, [lock]) == [(0,)]


def test_the_apis_pool_gives_every_session_its_statement_timeout(pgbouncer: PgBouncer) -> None:
    """How the api keeps API_STATEMENT_TIMEOUT_MS behind a transaction pooler: a pool of its
    own whose server sessions PgBouncer starts with the timeout (connect_query); the other
    pool's sessions do not get it."""
    with psycopg.connect(pgbouncer.url(f"{pgbouncer.database}_api"), autocommit=True) as api:
        with pytest.raises(psycopg.errors.QueryCanceled):
            api.execute("SELECT pg_sleep(2)")
        assert api.execute("SHOW statement_timeout").fetchone() == (f"{API_TIMEOUT_MS}ms",)
    with psycopg.connect(pgbouncer.url(), autocommit=True) as worker:
        assert worker.execute("SHOW statement_timeout").fetchone() == ("0",)
        assert worker.execute("SELECT pg_sleep(0.5)").fetchone() == ("",)


def test_the_health_check_answers_through_pgbouncer(pgbouncer: PgBouncer, settings: Any) -> None:
    """PgBouncer refuses the startup parameter `options`: /health bounds its statement in
    its transaction instead."""
    settings.DATABASE_URL = pgbouncer.url()
    assert _postgresql(timeout=2) == "answered"


@pytest.mark.integration
def test_the_pipeline_stores_a_run_and_its_replay_exactly_once_through_pgbouncer(
    pgbouncer: PgBouncer, pipeline: Pipeline
) -> None:
    """The real bridge and worker with DATABASE_URL naming PgBouncer: 8 worker threads and
    the bridge share POOL_SIZE server sessions."""
    pipeline.env.update(DATABASE_URL=pgbouncer.url(), DATABASE_TRANSACTION_POOLING="true", API_STATEMENT_TIMEOUT_MS="0")
    start_ms = NOW_MS - 3_600_000
    before = pgbouncer.transactions()
    pipeline.start_worker()
    pipeline.start_bridge()
    pipeline.emit("--count", "5000", "--rate", "5000", "--seed", "7", "--users", "300", "--start-ms", str(start_ms))

    wait_for(lambda: Signal.objects.count() >= 5000, timeout=180, what="5000 stored signals")
    wait_for(pipeline.all_committed, timeout=60, what="offsets committed up to the end")
    pipeline.replay()

    assert Signal.objects.count() == 5000
    assert pipeline.worker_metric("events_processed_total", status="stored") == 5000
    assert pipeline.worker_metric("events_processed_total", status="duplicate") == 5000
    assert pgbouncer.transactions() - before > 20, "the processes went through PgBouncer"
    servers = [row for row in pgbouncer.show("SERVERS") if row["database"] == pgbouncer.database]
    assert 0 < len(servers) <= POOL_SIZE
