"""`make bench-indexes`: what each choice of indexes on `signals` costs the insert rate.

COPYs the same synthetic rows, in batches of BATCH_SIZE, into a scratch copy of the
signals table carrying each index set in turn, and prints rows/s per set (median of
--runs). This is the measurement behind the indexes the migration creates
(docs/performance.md, "Indexes"). Needs DATABASE_URL (make bench-indexes starts a local
PostgreSQL).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import django

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")
django.setup()

from django.conf import settings  # noqa: E402
from django.db import connection  # noqa: E402

from emitter.generator import SignalGenerator  # noqa: E402

TABLE = """
CREATE TABLE index_cost (
    id bigserial PRIMARY KEY,
    event_id uuid NOT NULL UNIQUE,
    user_id bigint NOT NULL,
    type varchar(16) NOT NULL,
    timestamp bigint NOT NULL,
    payload jsonb NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now()
)
"""
OLD_SYSTEM = [
    "CREATE INDEX ON index_cost (user_id)",
    "CREATE INDEX ON index_cost (timestamp)",
    "CREATE INDEX ON index_cost (type)",
    "CREATE INDEX ON index_cost (user_id, timestamp)",
    "CREATE INDEX ON index_cost (type, timestamp)",
    "CREATE INDEX ON index_cost USING gin (payload)",
]
# As signals_app migration 0002 makes `signals`: one partition per day, the primary key
# (timestamp, id), unique (event_id, timestamp), the composites, BRIN on id.
PARTITIONED_TABLE = """
CREATE TABLE index_cost (
    id bigserial,
    event_id uuid NOT NULL,
    user_id bigint NOT NULL,
    type varchar(16) NOT NULL,
    timestamp bigint NOT NULL,
    payload jsonb NOT NULL,
    processed_at timestamptz NOT NULL DEFAULT now(),
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (timestamp, id),
    UNIQUE (event_id, timestamp)
) PARTITION BY RANGE (timestamp)
"""
DAY_MS = 86_400_000
TODAY = int(time.time() * 1000) // DAY_MS
PARTITIONED = [
    *(
        f"CREATE TABLE index_cost_{day} PARTITION OF index_cost "
        f"FOR VALUES FROM ({day * DAY_MS}) TO ({(day + 1) * DAY_MS})"
        for day in range(TODAY - 1, TODAY + 2)
    ),
    OLD_SYSTEM[3],
    OLD_SYSTEM[4],
    "CREATE INDEX ON index_cost USING brin (id)",
]
INDEX_SETS = {
    "primary key and event_id only": [],
    "the old system's six": OLD_SYSTEM,
    "old six, GIN jsonb_path_ops": [*OLD_SYSTEM[:5], "CREATE INDEX ON index_cost USING gin (payload jsonb_path_ops)"],
    "composites + timestamp + GIN": [OLD_SYSTEM[1], OLD_SYSTEM[3], OLD_SYSTEM[4], OLD_SYSTEM[5]],
    "composites + timestamp (unpartitioned)": [OLD_SYSTEM[1], OLD_SYSTEM[3], OLD_SYSTEM[4]],
    "partitioned by day (shipped)": PARTITIONED,
}


def copy_rate(rows: Sequence[tuple[object, ...]], indexes: list[str], batch_size: int) -> float:
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS index_cost")
        cursor.execute(PARTITIONED_TABLE if indexes is PARTITIONED else TABLE)
        for statement in indexes:
            cursor.execute(statement)
    started = time.perf_counter()
    for offset in range(0, len(rows), batch_size):
        with (
            connection.cursor() as cursor,
            cursor.copy("COPY index_cost (event_id, user_id, type, timestamp, payload) FROM STDIN") as copy,
        ):
            for row in rows[offset : offset + batch_size]:
                copy.write_row(row)
    return len(rows) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=settings.BATCH_SIZE)
    args = parser.parse_args()

    generator = SignalGenerator(seed=1, users=10_000, start_ms=int(time.time() * 1000) - 7_200_000, rate=100)
    events = [generator.next() for _ in range(args.rows)]
    rows = [(e["event_id"], e["user_id"], e["type"], e["timestamp"], json.dumps(e["payload"])) for e in events]
    rates: dict[str, list[float]] = {name: [] for name in INDEX_SETS}
    try:
        # Interleaved, so a slow moment of a shared machine does not favour one set.
        for _ in range(args.runs):
            for name, indexes in INDEX_SETS.items():
                rates[name].append(copy_rate(rows, indexes, args.batch_size))
    finally:
        with connection.cursor() as cursor:
            cursor.execute("DROP TABLE IF EXISTS index_cost")
    print(f"COPY of {args.rows:,} rows in batches of {args.batch_size}, median of {args.runs} runs")
    for name, values in rates.items():
        print(f"  {name:34s} {statistics.median(values):>9,.0f} rows/s")


if __name__ == "__main__":
    main()
