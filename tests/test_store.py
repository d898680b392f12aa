"""signals_store_batch and the store task against real PostgreSQL."""

from __future__ import annotations

import uuid
from unittest import mock

import pytest
from django.db import OperationalError

from signals_app.models import DeadLetter, Signal
from signals_app.services import signals_store_batch
from signals_app.tasks import store_signals
from tests.factories import stored_event

pytestmark = pytest.mark.django_db


def test_a_batch_is_stored_once_however_often_it_is_delivered() -> None:
    events = [stored_event(offset=i, user_id=i) for i in range(300)]
    first = signals_store_batch(events=events)
    again = signals_store_batch(events=events)
    overlapping = signals_store_batch(events=[*events[200:], stored_event(offset=300)])
    assert (first.stored, first.duplicates) == (300, 0)
    assert (again.stored, again.duplicates) == (0, 300)
    assert (overlapping.stored, overlapping.duplicates) == (1, 100)
    assert Signal.objects.count() == 301


def test_duplicates_inside_one_batch_are_stored_once() -> None:
    event = stored_event()
    result = signals_store_batch(events=[event, dict(event), dict(event)])
    assert (result.stored, result.duplicates) == (1, 2)


def test_stored_rows_keep_every_field() -> None:
    event = stored_event(signal_type="purchase", user_id=77, timestamp=1_700_000_000_123)
    signals_store_batch(events=[event])
    row = Signal.objects.get()
    assert str(row.event_id) == event["event_id"]
    assert (row.user_id, row.type, row.timestamp, row.payload) == (77, "purchase", 1_700_000_000_123, event["payload"])
    assert row.created_at is not None and row.processed_at is not None


def test_events_postgresql_refuses_become_dead_letters_and_the_rest_is_stored() -> None:
    """A value PostgreSQL cannot take (here a user id beyond bigint, which validation would
    normally stop) costs only that event, not its batch."""
    events = [stored_event(offset=i) for i in range(100)]
    events[37]["user_id"] = 2**70
    events[81]["timestamp"] = 10**25
    result = signals_store_batch(events=events)
    assert (result.stored, result.dead_letters) == (98, 2)
    assert Signal.objects.count() == 98
    refused = {d.source_offset: d.reason for d in DeadLetter.objects.all()}
    assert set(refused) == {37, 81}
    assert all(reason.startswith("PostgreSQL refused the event: ") for reason in refused.values())


def test_the_task_retries_connection_trouble_then_keeps_the_batch_as_dead_letters() -> None:
    events = [stored_event(offset=i) for i in range(3)]
    failure = OperationalError("connection to server was lost")
    with mock.patch("signals_app.tasks.signals_store_batch", side_effect=failure) as store:
        result = store_signals.apply(args=(events,)).get()
    assert store.call_count == 6  # the first attempt and STORE_MAX_RETRIES=5 retries
    assert result == {"stored": 0, "duplicates": 0, "dead_letters": 3}
    reasons = list(DeadLetter.objects.values_list("reason", flat=True))
    assert reasons == ["could not be stored after 6 attempts: connection to server was lost"] * 3


def test_the_task_reports_what_it_stored() -> None:
    events = [stored_event(offset=i, event_id=str(uuid.uuid4())) for i in range(5)]
    assert store_signals.apply(args=(events,)).get() == {"stored": 5, "duplicates": 0, "dead_letters": 0}
    assert store_signals.apply(args=(events,)).get() == {"stored": 0, "duplicates": 5, "dead_letters": 0}
