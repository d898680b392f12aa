"""signals_store_batch and the store task against real PostgreSQL."""

from __future__ import annotations

import json
import uuid
from unittest import mock

import psycopg
import pytest
from django.conf import settings
from django.db import OperationalError, ProgrammingError, connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from prometheus_client import REGISTRY

from signals_app.models import DeadLetter, Signal
from signals_app.services import DeadLetterRecord, dead_letters_store, signals_store_batch
from signals_app.tasks import store_signals
from tests.conftest import dlq_reasons
from tests.factories import signal_row

pytestmark = pytest.mark.django_db

TOPIC = "signals-test"


def dead_letters_counted(reason: str) -> float:
    return REGISTRY.get_sample_value("dead_letters_total", {"reason": reason}) or 0.0


def test_a_batch_is_stored_once_however_often_it_is_delivered() -> None:
    rows = [signal_row(offset=i, user_id=i) for i in range(300)]
    first = signals_store_batch(topic=TOPIC, rows=rows)
    again = signals_store_batch(topic=TOPIC, rows=rows)
    overlapping = signals_store_batch(topic=TOPIC, rows=[*rows[200:], signal_row(offset=300)])
    assert (first.stored, first.duplicates) == (300, 0)
    assert (again.stored, again.duplicates) == (0, 300)
    assert (overlapping.stored, overlapping.duplicates) == (1, 100)
    assert Signal.objects.count() == 301


def test_duplicates_inside_one_batch_are_stored_once() -> None:
    row = signal_row()
    result = signals_store_batch(topic=TOPIC, rows=[row, list(row), list(row)])
    assert (result.stored, result.duplicates) == (1, 2)


def test_stored_rows_keep_every_field() -> None:
    row = signal_row(signal_type="purchase", user_id=77, timestamp=1_700_000_000_123)
    signals_store_batch(topic=TOPIC, rows=[row])
    stored = Signal.objects.get()
    assert str(stored.event_id) == row[0]
    assert (stored.user_id, stored.type, stored.timestamp) == (77, "purchase", 1_700_000_000_123)
    assert stored.payload == json.loads(row[4])
    assert stored.created_at is not None and stored.processed_at is not None


@override_settings(DLQ_TOPIC=f"test-dlq-{uuid.uuid4().hex[:10]}")
def test_events_postgresql_refuses_become_dead_letters_and_the_rest_is_stored() -> None:
    """A value PostgreSQL cannot take (here a user id beyond bigint, which validation would
    normally stop) costs only that event, not its batch."""
    rows = [signal_row(offset=i) for i in range(100)]
    rows[37][1] = 2**70
    rows[81][3] = 10**25
    counted_before = dead_letters_counted("refused_by_postgresql")
    result = signals_store_batch(topic=TOPIC, rows=rows)
    assert (result.stored, result.dead_letters) == (98, 2)
    assert dead_letters_counted("refused_by_postgresql") == counted_before + 2
    assert Signal.objects.count() == 98
    refused = {d.source_offset: d for d in DeadLetter.objects.all()}
    assert set(refused) == {37, 81}
    assert all(d.reason.startswith("PostgreSQL refused the event: ") for d in refused.values())
    assert json.loads(bytes(refused[37].raw))["user_id"] == 2**70
    assert refused[37].source_topic == TOPIC
    assert sorted(dlq_reasons(settings.DLQ_TOPIC, 2)) == sorted(d.reason for d in refused.values())


def test_the_task_retries_an_unreachable_database_and_then_fails_without_dead_letters() -> None:
    """The events are fine: after the retries the task fails, and the bridge, whose offsets
    are not committed, hands the batch over again later."""
    rows = [signal_row(offset=i) for i in range(3)]
    failure = OperationalError("connection to server was lost")
    with mock.patch("signals_app.tasks.signals_store_batch", side_effect=failure) as store:
        outcome = store_signals.apply(args=(TOPIC, rows))
    assert store.call_count == 6  # the first attempt and STORE_MAX_RETRIES=5 retries
    assert outcome.failed()
    with pytest.raises(OperationalError):
        outcome.get()
    assert DeadLetter.objects.count() == 0


@override_settings(DLQ_TOPIC=f"test-dlq-{uuid.uuid4().hex[:10]}")
def test_a_batch_that_keeps_failing_for_another_reason_becomes_dead_letters() -> None:
    rows = [signal_row(offset=i) for i in range(3)]
    failure = ProgrammingError('relation "signals" does not exist')
    counted_before = dead_letters_counted("not_stored")
    with mock.patch("signals_app.tasks.signals_store_batch", side_effect=failure) as store:
        result = store_signals.apply(args=(TOPIC, rows)).get()
    assert store.call_count == 6
    assert result == {"stored": 0, "duplicates": 0, "dead_letters": 3}
    assert dead_letters_counted("not_stored") == counted_before + 3
    reasons = list(DeadLetter.objects.values_list("reason", flat=True))
    assert reasons == ['could not be stored after 6 attempts: ProgrammingError: relation "signals" does not exist'] * 3
    assert dlq_reasons(settings.DLQ_TOPIC, 3) == reasons


def test_the_task_reports_what_it_stored() -> None:
    rows = [signal_row(offset=i) for i in range(5)]
    assert store_signals.apply(args=(TOPIC, rows)).get() == {"stored": 5, "duplicates": 0, "dead_letters": 0}
    assert store_signals.apply(args=(TOPIC, rows)).get() == {"stored": 0, "duplicates": 5, "dead_letters": 0}


@pytest.mark.django_db(transaction=True, serialized_rollback=True)  # as every test that leaves a transaction
@override_settings(STORE_STATEMENT_TIMEOUT_MS=300)
def test_a_store_blocked_by_a_lock_gives_up_after_the_statement_timeout() -> None:
    """The threads pool enforces no task time limit: the statement timeout bounds a COPY
    that waits on a lock, so the thread is freed and the task retried."""
    db = connection.settings_dict
    with psycopg.connect(
        host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"]
    ) as locker:
        locker.execute("LOCK TABLE signals IN ACCESS EXCLUSIVE MODE")
        with pytest.raises(OperationalError, match="statement timeout"):
            signals_store_batch(topic=TOPIC, rows=[signal_row()])
    assert signals_store_batch(topic=TOPIC, rows=[signal_row()]).stored == 1


def other_connection() -> psycopg.Connection:
    db = connection.settings_dict
    return psycopg.connect(host=db["HOST"] or "127.0.0.1", port=db["PORT"] or 5432, user=db["USER"], dbname=db["NAME"])


def dead_letter_record(offset: int) -> DeadLetterRecord:
    return DeadLetterRecord(raw=b"{", source_topic=TOPIC, source_partition=0, source_offset=offset, reason="not JSON")


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_each_statement_keeping_dead_letters_is_committed_as_it_ends() -> None:
    """No transaction is left for a second round trip to finish: a bridge stopped after its
    INSERT would hold the rows, and the bridge given its partitions, keeping the same
    records, would wait on them for as long as the first one sleeps (make chaos, SIGSTOP)."""
    seen_elsewhere = []

    def then_look_from_another_connection(execute, sql, params, many, context):  # type: ignore[no-untyped-def]
        result = execute(sql, params, many, context)
        with other_connection() as other:
            seen_elsewhere.append(other.execute("SELECT count(*) FROM dead_letters").fetchone()[0])  # type: ignore[index]
        return result

    with connection.execute_wrapper(then_look_from_another_connection):
        assert dead_letters_store(dead_letters=[dead_letter_record(offset) for offset in range(3)]) == 3
    assert seen_elsewhere == [3]


def test_dead_letters_go_in_by_the_thousand_and_a_kept_one_is_skipped() -> None:
    dead_letters_store(dead_letters=[dead_letter_record(1)])
    with mock.patch("signals_app.services.DEAD_LETTERS_PER_INSERT", 2), CaptureQueriesContext(connection) as queries:
        assert dead_letters_store(dead_letters=[dead_letter_record(offset) for offset in range(5)]) == 5
    assert len(queries) == 3, "2 + 2 + 1 records"
    kept = DeadLetter.objects.order_by("source_offset")
    assert [(d.source_offset, bytes(d.raw), d.key, d.reason) for d in kept] == [
        (offset, b"{", None, "not JSON") for offset in range(5)
    ]


def test_large_dead_letters_go_in_by_the_bytes_too_and_none_needs_no_statement() -> None:
    """Oversize records can be a megabyte each: a statement stays far below PostgreSQL's
    1 GB per message whatever they weigh."""
    records = [dead_letter_record(offset) for offset in range(4)]
    records[1] = DeadLetterRecord(raw=b"x" * 25, source_topic=TOPIC, source_partition=0, source_offset=1, reason="big")
    with (
        mock.patch("signals_app.services.DEAD_LETTER_BYTES_PER_INSERT", 20),
        CaptureQueriesContext(connection) as queries,
    ):
        dead_letters_store(dead_letters=records)
        assert dead_letters_store(dead_letters=[]) == 0
    assert len(queries) == 3, "the one before it, the large one alone, the two after it"
    assert DeadLetter.objects.count() == 4
