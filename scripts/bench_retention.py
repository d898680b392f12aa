"""`make bench-retention`: retention on `make bench-api`'s ten million signals over 30 days.

On a copy of bench-api's database (made from it as a template, dropped at the end; bench-api
loads the dataset first if it is not there):
1. `manage.py cleanup --dry-run --days 23`, then `manage.py cleanup --days 23` (about a
   week of each table goes), each timed as a user runs it (a process of its own, Django's
   start included);
2. for each of the three oldest whole days left: `DELETE` of that day's rows from an
   unpartitioned copy of `signals` (the table as it was before partitioning, with its five
   indexes), then the `VACUUM` that the delete leaves to do, against dropping the same day's
   partition (`DETACH PARTITION ... CONCURRENTLY`, then `DROP TABLE`); each with the WAL it
   wrote, which is the I/O a replica and the backups pay for too.
Prints the medians, and one line per figure scripts can read.
Needs DATABASE_URL, REDIS_URL and KAFKA_BOOTSTRAP_SERVERS (make bench-retention starts local ones).
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))

from bench_api import bench_database_url, dataset_load, django_setup  # noqa: E402

DAY_MS = 86_400_000
DAYS_MEASURED = 3
KEEP_DAYS = 23

FLAT_TABLE = """
CREATE TABLE signals_flat (LIKE signals INCLUDING DEFAULTS);
INSERT INTO signals_flat SELECT * FROM signals;
ALTER TABLE signals_flat ADD PRIMARY KEY (id);
ALTER TABLE signals_flat ADD UNIQUE (event_id);
CREATE INDEX ON signals_flat (timestamp);
CREATE INDEX ON signals_flat (user_id, timestamp);
CREATE INDEX ON signals_flat (type, timestamp);
VACUUM ANALYZE signals_flat;
"""


def copy_database(source_url: str) -> str:
    """A new database made from bench-api's, as a template."""
    parts = urlsplit(source_url)
    source, name = parts.path.lstrip("/"), parts.path.lstrip("/").replace("_bench_api", "_bench_retention")
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(name)))
        started = time.monotonic()
        connection.execute(
            sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(sql.Identifier(name), sql.Identifier(source))
        )
        print(f"copied bench-api's database in {time.monotonic() - started:.0f} s", flush=True)
    return urlunsplit(parts._replace(path=f"/{name}"))


def drop_database(url: str) -> None:
    parts = urlsplit(url)
    with psycopg.connect(urlunsplit(parts._replace(path="/postgres")), autocommit=True) as connection:
        connection.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(parts.path.lstrip("/"))))


def manage(url: str, *args: str) -> float:
    """Run a management command as a user would; print its output; return its seconds."""
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env={**os.environ, "DATABASE_URL": url},
        capture_output=True,
        text=True,
        check=True,
    )
    seconds = time.monotonic() - started
    print(f"$ manage.py {' '.join(args)}   ({seconds:.1f} s)")
    print("  " + result.stdout.strip().replace("\n", "\n  "), flush=True)
    return seconds


def one(connection: psycopg.Connection, query: str, params: list[object] | None = None) -> object:
    row = connection.execute(query, params).fetchone()  # type: ignore[arg-type]
    assert row is not None
    return row[0]


def timed(connection: psycopg.Connection, statements: list[str]) -> tuple[float, int]:
    """Seconds and WAL bytes of statements run one after the other."""
    before = one(connection, "SELECT pg_current_wal_insert_lsn()")
    started = time.monotonic()
    for statement in statements:
        connection.execute(statement)  # type: ignore[arg-type]
    seconds = time.monotonic() - started
    written = one(connection, "SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", [before])
    return seconds, int(written)  # type: ignore[call-overload]


def oldest_whole_days(connection: psycopg.Connection) -> list[tuple[str, int, int, int]]:
    """(partition, start ms, end ms, rows) of the oldest days after the first, which may be partial."""
    rows = connection.execute(
        """
        SELECT c.relname, (regexp_match(pg_get_expr(c.relpartbound, c.oid), 'FROM \\(''?(-?\\d+)'))[1]::bigint
        FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'signals'::regclass ORDER BY 2
        """
    ).fetchall()
    days = []
    for name, start in rows[1 : DAYS_MEASURED + 1]:
        count = one(connection, f'SELECT count(*) FROM "{name}"')
        days.append((name, start, start + DAY_MS, int(count)))  # type: ignore[call-overload]
    return days


def main() -> None:
    source = bench_database_url()
    django_setup(source)
    dataset_load(source, reload=False)
    from django.db import connections

    connections.close_all()  # a template database must have no one connected
    url = copy_database(source)
    try:
        # The dataset spans the last 30 days: keeping 23, about a week of each table goes.
        dry_run = manage(url, "cleanup", "--dry-run", "--days", str(KEEP_DAYS))
        cleanup = manage(url, "cleanup", "--days", str(KEEP_DAYS))
        with psycopg.connect(url, autocommit=True) as connection:
            started = time.monotonic()
            for statement in FLAT_TABLE.strip().split(";\n"):
                connection.execute(statement)  # type: ignore[arg-type]
            print(f"unpartitioned copy of signals made in {time.monotonic() - started:.0f} s", flush=True)
            deletes, vacuums, drops = [], [], []
            for name, start, end, count in oldest_whole_days(connection):
                delete = timed(
                    connection, [f"DELETE FROM signals_flat WHERE timestamp >= {start} AND timestamp < {end}"]
                )
                vacuum = timed(connection, ["VACUUM signals_flat"])
                drop = timed(
                    connection,
                    [f'ALTER TABLE signals DETACH PARTITION "{name}" CONCURRENTLY', f'DROP TABLE "{name}"'],
                )
                deletes.append(delete)
                vacuums.append(vacuum)
                drops.append(drop)
                print(
                    f"{name}: {count:,} rows: DELETE {delete[0]:.2f} s ({delete[1] / 2**20:,.0f} MiB WAL), "
                    f"then VACUUM {vacuum[0]:.2f} s ({vacuum[1] / 2**20:,.0f} MiB WAL); "
                    f"drop the partition {drop[0]:.3f} s ({drop[1] / 2**10:,.0f} KiB WAL)",
                    flush=True,
                )
    finally:
        drop_database(url)

    def median(pairs: list[tuple[float, int]], index: int) -> float:
        return statistics.median(pair[index] for pair in pairs)

    print(f"median of {len(drops)} days")
    print(f"cleanup_dry_run_s={dry_run:.2f} cleanup_s={cleanup:.2f}")
    print(
        f"delete_day_s={median(deletes, 0):.2f} delete_wal_mib={median(deletes, 1) / 2**20:.0f} "
        f"vacuum_s={median(vacuums, 0):.2f} vacuum_wal_mib={median(vacuums, 1) / 2**20:.0f} "
        f"drop_partition_s={median(drops, 0):.3f} drop_wal_kib={median(drops, 1) / 2**10:.0f} "
        f"ratio={(median(deletes, 0) + median(vacuums, 0)) / median(drops, 0):.0f}"
    )


if __name__ == "__main__":
    main()
