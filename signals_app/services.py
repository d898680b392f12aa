"""Services that change stored signals and dead letters.

Storing is idempotent: every event carries an `event_id`, and (event_id, timestamp) is
unique in the table (docs/design.md, "Partitions"). A batch is first COPYed straight into
`signals`, the fastest way into PostgreSQL; if any of its events is already there (a
redelivery) that COPY fails as a whole on the unique index, and the batch goes in again
through a staging table: one COPY into it, then one
`INSERT ... SELECT ... ON CONFLICT (event_id, timestamp) DO NOTHING`. Delivering the same
batch twice, or two overlapping batches, stores each event once.

A batch is a list of `SignalRow`s (as tuples or lists, the way Celery delivers them) from
one topic.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import KafkaException, Producer
from django.conf import settings
from django.db import DataError, IntegrityError, InterfaceError, OperationalError, connection, transaction
from django.db.models.functions import Now
from django.utils import timezone

from eventpipeline.kafka import OutgoingRecord, produce_confirmed, shared_producer
from eventpipeline.metrics import DEAD_LETTERS
from signals_app.messages import SignalRow, dead_letter_category, with_original_identity
from signals_app.models import DeadLetter
from signals_app.partitions import day_number, signals_partitions_ensure, signals_partitions_forget

logger = logging.getLogger(__name__)

_STAGING_DDL = """
CREATE TEMP TABLE IF NOT EXISTS signals_staging (
    event_id uuid NOT NULL,
    user_id bigint NOT NULL,
    type varchar(16) NOT NULL,
    timestamp bigint NOT NULL,
    payload jsonb NOT NULL
) ON COMMIT DELETE ROWS
"""
_DIRECT_COPY = "COPY signals (event_id, user_id, type, timestamp, payload) FROM STDIN"
_STAGING_COPY = "COPY signals_staging (event_id, user_id, type, timestamp, payload) FROM STDIN"
UNIQUE_VIOLATION = "23505"
# What PostgreSQL says of a row whose day has no partition of `signals`.
CHECK_VIOLATION = "23514"
_STAGING_MERGE = """
INSERT INTO signals (event_id, user_id, type, timestamp, payload, processed_at, created_at)
SELECT event_id, user_id, type, timestamp, payload, now(), now() FROM signals_staging
ON CONFLICT (event_id, timestamp) DO NOTHING
"""


# Kafka's default message size is 1 MB; the DLQ copy stays well under it, headers included.
DLQ_MAX_VALUE_BYTES = 512 * 1024


class DeadLetterPublishError(Exception):
    """Kafka did not confirm every dead letter put on the DLQ topic."""


# A server that cannot be reached: nothing is wrong with the events, so they are never
# turned into dead letters for it; the batch is tried again until it goes in.
UNREACHABLE = (OperationalError, InterfaceError, KafkaException, DeadLetterPublishError)


@dataclass(frozen=True)
class StoreResult:
    stored: int
    duplicates: int
    dead_letters: int = 0


@dataclass(frozen=True)
class DeadLetterRecord:
    raw: bytes
    source_topic: str
    source_partition: int
    source_offset: int
    reason: str
    key: bytes | None = None


def _limit_statement_time(cursor: Any) -> None:
    cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(settings.STORE_STATEMENT_TIMEOUT_MS)])


def _copy(cursor: Any, sql: str, rows: Sequence[Sequence[Any]]) -> None:
    with cursor.copy(sql) as copy:
        for row in rows:
            copy.write_row(row[:5])


def _store_rows(rows: Sequence[Sequence[Any]]) -> int:
    """Store one batch into the partitions of its days; return how many rows were new.

    A day this process has not seen yet gets its partition first. Should one it knew of
    be gone (retention dropped it, and a late event came for that day), it is made again
    and the batch tried once more; a row no partition can take is then refused by
    PostgreSQL, for the caller to make it a dead letter.
    """
    days = {day_number(row[3]) for row in rows if isinstance(row[3], int)}
    signals_partitions_ensure(days=days)
    try:
        return _copy_rows(rows)
    except IntegrityError as error:
        if getattr(error.__cause__, "sqlstate", None) != CHECK_VIOLATION:
            raise
    signals_partitions_forget()
    signals_partitions_ensure(days=days)
    return _copy_rows(rows)


def _copy_rows(rows: Sequence[Sequence[Any]]) -> int:
    """Store one batch; return how many rows were new."""
    # COPY goes straight to psycopg; wrap_database_errors maps its errors to Django's.
    try:
        with transaction.atomic(), connection.cursor() as cursor, connection.wrap_database_errors:
            _limit_statement_time(cursor)
            _copy(cursor, _DIRECT_COPY, rows)
        return len(rows)
    except IntegrityError as error:
        if getattr(error.__cause__, "sqlstate", None) != UNIQUE_VIOLATION:
            raise
    return _merge_rows(rows)


def _merge_rows(rows: Sequence[Sequence[Any]]) -> int:
    """Store a batch of which some events may be stored already; return how many were new."""
    # The staging table empties itself at commit; inside a caller's transaction there is
    # no commit between batches, so it is emptied by hand.
    nested = connection.in_atomic_block
    with transaction.atomic(), connection.cursor() as cursor, connection.wrap_database_errors:
        _limit_statement_time(cursor)
        cursor.execute(_STAGING_DDL)
        if nested:
            cursor.execute("TRUNCATE signals_staging")
        _copy(cursor, _STAGING_COPY, rows)
        cursor.execute(_STAGING_MERGE)
        return int(cursor.rowcount)


def _row_dead_letter(topic: str, row: Sequence[Any], reason: str) -> DeadLetterRecord:
    signal = SignalRow(*row)
    return DeadLetterRecord(
        # The standard library's encoder: a refused row may hold what orjson will not write.
        raw=json.dumps(signal.message()).encode(),
        source_topic=topic,
        source_partition=signal.partition,
        source_offset=signal.offset,
        reason=reason,
    )


def signals_store_batch(*, topic: str, rows: Sequence[Sequence[Any]]) -> StoreResult:
    """Store accepted events exactly once.

    When PostgreSQL refuses the batch for its content (a value it cannot take), the batch
    is split in halves until the refused events are found; each of those becomes a dead
    letter with PostgreSQL's reason and every other event is stored. Connection-level
    errors are raised for the caller to retry.
    """
    if not rows:
        return StoreResult(stored=0, duplicates=0)
    try:
        stored = _store_rows(rows)
        return StoreResult(stored=stored, duplicates=len(rows) - stored)
    except (DataError, IntegrityError) as error:
        if len(rows) == 1:
            reason = f"PostgreSQL refused the event: {str(error).strip().splitlines()[0]}"
            _keep_worker_dead_letters([_row_dead_letter(topic, rows[0], reason)])
            return StoreResult(stored=0, duplicates=0, dead_letters=1)
        logger.warning("batch of %d refused (%s); splitting to find the bad events", len(rows), error)
    middle = len(rows) // 2
    left = signals_store_batch(topic=topic, rows=rows[:middle])
    right = signals_store_batch(topic=topic, rows=rows[middle:])
    return StoreResult(
        stored=left.stored + right.stored,
        duplicates=left.duplicates + right.duplicates,
        dead_letters=left.dead_letters + right.dead_letters,
    )


def signals_dead_letter_batch(*, topic: str, rows: Sequence[Sequence[Any]], reason: str) -> int:
    """Give up on a batch that could not be stored: keep every event as a dead letter."""
    return _keep_worker_dead_letters([_row_dead_letter(topic, row, reason) for row in rows])


def _keep_worker_dead_letters(dead_letters: list[DeadLetterRecord]) -> int:
    return dead_letters_keep(dead_letters=dead_letters, topic=settings.DLQ_TOPIC, producer=shared_producer())


# Rows per INSERT: 7 parameters each, well under PostgreSQL's 65,535 per statement. And
# the raw bytes per INSERT, which go as text (hex, twice their size): an oversize record
# can be a megabyte, and a statement must stay far below PostgreSQL's 1 GB per message.
DEAD_LETTERS_PER_INSERT = 1000
DEAD_LETTER_BYTES_PER_INSERT = 16 * 1024 * 1024

_DEAD_LETTER_INSERT = (
    "INSERT INTO dead_letters (raw, key, source_topic, source_partition, source_offset, reason, received_at) "
    "VALUES {values} ON CONFLICT (source_topic, source_partition, source_offset) DO NOTHING"
)


def dead_letters_store(*, dead_letters: Sequence[DeadLetterRecord]) -> int:
    """Keep refused records; a record already kept (same source coordinates) is skipped.

    Each INSERT is a statement of its own, committed by PostgreSQL as it ends, not a
    transaction the caller must finish with a second round trip (as `bulk_create` opens):
    a bridge stopped between the two (SIGSTOP, a long pause) would hold the rows' entries
    in the unique index, and the bridge given its partitions, which reads and refuses the
    same records, would wait on them for as long as the first one sleeps (seen in `make
    chaos`, docs/performance.md, "Dead letters beside the loop"). Inside a caller's
    transaction (a worker's), the statements are part of it."""
    if not dead_letters:
        return 0
    received_at = timezone.now()
    with connection.cursor() as cursor:
        for chunk in _dead_letter_chunks(dead_letters):
            values = ", ".join(["(%s, %s, %s, %s, %s, %s, %s)"] * len(chunk))
            params = [
                value
                for record in chunk
                for value in (
                    record.raw,
                    record.key,
                    record.source_topic,
                    record.source_partition,
                    record.source_offset,
                    record.reason,
                    received_at,
                )
            ]
            cursor.execute(_DEAD_LETTER_INSERT.format(values=values), params)
    return len(dead_letters)


def _dead_letter_chunks(dead_letters: Sequence[DeadLetterRecord]) -> Iterator[list[DeadLetterRecord]]:
    """At most DEAD_LETTERS_PER_INSERT records and, but for a record larger than that
    alone, DEAD_LETTER_BYTES_PER_INSERT of raw bytes per chunk."""
    chunk: list[DeadLetterRecord] = []
    size = 0
    for record in dead_letters:
        if chunk and (len(chunk) == DEAD_LETTERS_PER_INSERT or size + len(record.raw) > DEAD_LETTER_BYTES_PER_INSERT):
            yield chunk
            chunk, size = [], 0
        chunk.append(record)
        size += len(record.raw)
    if chunk:
        yield chunk


def dead_letters_publish(*, dead_letters: Sequence[DeadLetterRecord], topic: str, producer: Producer) -> None:
    """Put refused records on the DLQ topic, with the reason and source in headers.

    Raises DeadLetterPublishError unless Kafka confirmed every one. A record too large for
    a Kafka message goes on truncated (header `truncated_from_bytes`); the table keeps it whole.
    """

    def outgoing(record: DeadLetterRecord) -> OutgoingRecord:
        value = record.raw
        headers: list[tuple[str, str | bytes | None]] = [
            ("reason", record.reason.encode()),
            ("source_topic", record.source_topic.encode()),
            ("source_partition", str(record.source_partition).encode()),
            ("source_offset", str(record.source_offset).encode()),
        ]
        if len(value) > DLQ_MAX_VALUE_BYTES:
            headers.append(("truncated_from_bytes", str(len(value)).encode()))
            value = value[:DLQ_MAX_VALUE_BYTES]
        return OutgoingRecord(record.key, value, headers)

    produce_confirmed(producer, topic, map(outgoing, dead_letters), what="dead letters", error=DeadLetterPublishError)


def dead_letters_keep(*, dead_letters: Sequence[DeadLetterRecord], topic: str, producer: Producer) -> int:
    """Keep refused records where docs/design.md says: the table (first, the durable record)
    and the DLQ topic. Raises if either cannot take them; the caller must not commit the
    records' offsets then, and tries again."""
    stored = dead_letters_store(dead_letters=dead_letters)
    dead_letters_publish(dead_letters=dead_letters, topic=topic, producer=producer)
    for category, count in Counter(dead_letter_category(record.reason) for record in dead_letters).items():
        DEAD_LETTERS.labels(reason=category).inc(count)
    for record in dead_letters:
        logger.info(
            "dead letter %s[%d]@%d: %s",
            record.source_topic,
            record.source_partition,
            record.source_offset,
            record.reason,
        )
    return stored


def dead_letters_replay(*, dead_letters: Iterable[DeadLetter], topic: str) -> int:
    """Put dead letters back on a topic, as they arrived but for their identity, and mark
    them replayed.

    For after a fix (a producer corrected, a limit raised): the bridge judges them again,
    and one still wrong becomes a new dead letter at its new offset.
    """
    replayed = []

    def outgoing(dead_letter: DeadLetter) -> OutgoingRecord:
        replayed.append(dead_letter.pk)
        value = with_original_identity(
            bytes(dead_letter.raw),
            topic=dead_letter.source_topic,
            partition=dead_letter.source_partition,
            offset=dead_letter.source_offset,
        )
        return OutgoingRecord(bytes(dead_letter.key) if dead_letter.key else None, value)

    produce_confirmed(shared_producer(), topic, map(outgoing, dead_letters), what="dead letters")
    DeadLetter.objects.filter(pk__in=replayed).update(replayed_at=Now())
    return len(replayed)
