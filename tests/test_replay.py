"""Every dead letter the bridge can keep can be replayed, by the command and by the admin
action, against real Kafka and PostgreSQL (docs/design.md, "Dead letters")."""

from __future__ import annotations

import io
import uuid

import pytest
from django.contrib.auth.models import User
from django.core.management import call_command
from django.test import Client

from eventpipeline.kafka import topics_ensure
from signals_app.messages import with_original_identity
from signals_app.models import DeadLetter
from tests.conftest import topic_values
from tests.test_messages import hard_to_replay
from tests.test_pipeline import _malformed_records

pytestmark = [pytest.mark.django_db, pytest.mark.integration]


def every_kind() -> list[bytes]:
    """One record of each kind the bridge refuses, and those hard to write back."""
    huge = b'{"user_id": 1, "padding": "' + b"x" * 950_000 + b'"}'
    return [raw for raw, _ in _malformed_records()] + [huge, *hard_to_replay().values()]


def dead_letters_of(raws: list[bytes], source: str) -> list[DeadLetter]:
    return [
        DeadLetter.objects.create(raw=raw, source_topic=source, source_partition=2, source_offset=offset, reason="r")
        for offset, raw in enumerate(raws)
    ]


def test_the_command_replays_every_kind_of_dead_letter() -> None:
    raws = every_kind()
    source, topic = "signal-events", f"test-replay-{uuid.uuid4().hex[:10]}"
    topics_ensure([topic], partitions=1)
    dead_letters_of(raws, source)
    out = io.StringIO()
    call_command("replay_dead_letters", "--topic", topic, stdout=out)
    assert f"replayed {len(raws)} dead letters onto {topic}" in out.getvalue()
    expected = [with_original_identity(raw, topic=source, partition=2, offset=n) for n, raw in enumerate(raws)]
    values = topic_values(topic, len(raws))
    assert len(values) == len(expected), f"{len(values)} of {len(expected)} replayed records on the topic"
    differ = [n for n, (value, wanted) in enumerate(zip(values, expected, strict=True)) if value != wanted]
    assert not differ, f"the records at {differ} are not what was kept (with the identity written in)"
    assert not DeadLetter.objects.filter(replayed_at__isnull=True).exists()


def test_the_admin_action_replays_a_deeply_nested_dead_letter(client: Client, settings: object) -> None:
    """It answered 500 when writing the identity back into JSON nested too deeply."""
    topic = f"test-replay-{uuid.uuid4().hex[:10]}"
    topics_ensure([topic], partitions=1)
    settings.SIGNALS_TOPIC = topic  # type: ignore[attr-defined]
    [nested] = dead_letters_of([hard_to_replay()["nested too deeply"]], "signal-events")
    client.force_login(User.objects.create_superuser("admin", password="a-long-enough-password"))
    response = client.post(
        "/admin/signals_app/deadletter/",
        {"action": "replay", "_selected_action": [nested.pk]},
        follow=True,
    )
    assert response.status_code == 200
    assert f"Replayed 1 dead letters onto {topic}" in response.content.decode()
    [value] = topic_values(topic, 1)
    assert value == with_original_identity(bytes(nested.raw), topic="signal-events", partition=2, offset=0)
