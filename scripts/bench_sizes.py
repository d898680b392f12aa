"""What one event weighs on each part of the pipeline, for sizing it (docs/scaling.md,
"What a 10x load needs").

Makes --events signals with the emitter's realistic mix and measures: the Kafka value of
each, the task argument of a batch of BATCH_SIZE (which travels twice through the broker:
to `store_signals` and to `detect_anomalies`), and, after storing them with the store
path itself, the WAL written per row and the bytes per row of a day's partition, its
indexes included. The events are dated on a day of their own in the year 2000, whose
partition is dropped afterwards. Needs DATABASE_URL (make bench-sizes starts a local
PostgreSQL) and migrates it (docs/performance.md, "Sizes per event").
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime
from pathlib import Path

import django

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")
django.setup()

import orjson  # noqa: E402
from django.conf import settings  # noqa: E402
from django.core.management import call_command  # noqa: E402
from django.db import connection  # noqa: E402

from emitter.generator import SignalGenerator  # noqa: E402
from signals_app.messages import SignalRow  # noqa: E402
from signals_app.partitions import day_number, signals_partition_drop, signals_partitions  # noqa: E402
from signals_app.services import signals_store_batch  # noqa: E402

DAY_START_MS = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp() * 1000)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    args = parser.parse_args()
    call_command("migrate", interactive=False, verbosity=0)
    # Within the day: the rate only spaces the events' times.
    generator = SignalGenerator(seed=1, users=10_000, start_ms=DAY_START_MS, rate=10_000)
    events = [generator.next() for _ in range(args.events)]
    values = [json.dumps(event).encode() for event in events]
    rows = [
        SignalRow(
            event["event_id"], event["user_id"], event["type"], event["timestamp"], json.dumps(event["payload"]), 0, i
        )
        for i, event in enumerate(events)
    ]
    batch = orjson.dumps([tuple(row) for row in rows[: settings.BATCH_SIZE]])  # as kombu's JSON writes it
    print(f"kafka_value_bytes_per_event={sum(map(len, values)) / len(values):.0f}")
    print(f"task_argument_bytes_per_event={len(batch) / settings.BATCH_SIZE:.0f} batch_size={settings.BATCH_SIZE}")

    with connection.cursor() as cursor:
        cursor.execute("SELECT pg_current_wal_insert_lsn()")
        start = cursor.fetchone()[0]
        for at in range(0, len(rows), settings.BATCH_SIZE):
            signals_store_batch(topic="bench-sizes", rows=rows[at : at + settings.BATCH_SIZE])
        cursor.execute("SELECT pg_wal_lsn_diff(pg_current_wal_insert_lsn(), %s)", [start])
        wal = float(cursor.fetchone()[0])
        days = {day_number(event["timestamp"]) for event in events}
        ours = [p for p in signals_partitions() if day_number(p.start_ms) in days]
        cursor.execute(
            "SELECT sum(pg_total_relation_size(name::regclass)) FROM unnest(%s::text[]) name",
            [[f'"{partition.name}"' for partition in ours]],
        )
        size = int(cursor.fetchone()[0])
    print(f"wal_bytes_per_row={wal / len(rows):.0f} stored_bytes_per_row={size / len(rows):.0f} rows={len(rows)}")
    for partition in ours:
        signals_partition_drop(partition=partition)


if __name__ == "__main__":
    main()
