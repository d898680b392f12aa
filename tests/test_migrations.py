"""Migrations that move data keep it: a database as a previous layout left it, with rows,
migrates to this one. Injection runs moved from anomalies_app to the emitter; `signals`
became partitioned."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from emitter.models import InjectedScenario, InjectionRun
from signals_app.models import Signal
from signals_app.services import signals_store_batch

LAST_BEFORE_THE_MOVE = ("anomalies_app", "0005_detection")
BEFORE_THE_MOVE: list[tuple[str, str | None]] = [LAST_BEFORE_THE_MOVE, ("emitter", None)]


def migrate(targets: list[tuple[str, str | None]]) -> MigrationExecutor:
    executor = MigrationExecutor(connection)
    executor.loader.build_graph()
    executor.migrate(targets)
    return executor


def latest() -> list[tuple[str, str | None]]:
    executor = MigrationExecutor(connection)
    return executor.loader.graph.leaf_nodes()


@pytest.fixture
def database_before_the_move(
    django_db_serialized_rollback: None, transactional_db: None
) -> Iterator[MigrationExecutor]:
    """(Serialized rollback, like the other tests that leave a transaction: the tests after
    this one find the database as migrations left it.)"""
    executor = migrate(BEFORE_THE_MOVE)
    try:
        yield executor
    finally:
        migrate(latest())


def test_injection_runs_keep_their_rows_and_permissions_when_they_move_to_the_emitter(
    database_before_the_move: MigrationExecutor,
) -> None:
    old = database_before_the_move.loader.project_state(LAST_BEFORE_THE_MOVE).apps
    old_run = old.get_model("anomalies_app", "InjectionRun")
    old_scenario = old.get_model("anomalies_app", "InjectedScenario")
    run = old_run.objects.create(seed=7, first_user_id=1_010_000_000, last_user_id=1_019_999_999, events=42)
    old_scenario.objects.create(
        run=run, kind="login_burst", user_id=1_010_000_005, anomaly_type="high_frequency_login",
        first_event_ms=1_000, last_event_ms=2_000, events=11,
    )  # fmt: skip
    content_type, _ = ContentType.objects.get_or_create(app_label="anomalies_app", model="injectionrun")
    Permission.objects.get_or_create(
        content_type=content_type, codename="view_injectionrun", defaults={"name": "Can view injection run"}
    )

    migrate(latest())

    moved = InjectionRun.objects.get(pk=run.pk)
    assert (moved.seed, moved.first_user_id, moved.events) == (7, 1_010_000_000, 42)
    scenario = InjectedScenario.objects.get(run=moved)
    assert (scenario.kind, scenario.anomaly_type, scenario.events) == ("login_burst", "high_frequency_login", 11)
    assert ContentType.objects.get(pk=content_type.pk).app_label == "emitter"
    assert Permission.objects.get(codename="view_injectionrun").content_type.app_label == "emitter"
    assert not ContentType.objects.filter(app_label="anomalies_app", model="injectionrun").exists()


BEFORE_PARTITIONS: list[tuple[str, str | None]] = [("signals_app", "0001_initial")]
DAY_MS = 86_400_000


@pytest.fixture
def database_before_partitions(django_db_serialized_rollback: None, transactional_db: None) -> Iterator[None]:
    migrate(BEFORE_PARTITIONS)
    try:
        yield
    finally:
        migrate(latest())


def test_partitioning_signals_keeps_every_row_its_id_and_its_identity(database_before_partitions: None) -> None:
    """0002 moves the rows of the single table into daily partitions; the ids stay, new
    ones follow them, and an event stored before is still recognised when it comes again."""
    with connection.cursor() as cursor:
        cursor.execute(
            """
            INSERT INTO signals (event_id, user_id, type, timestamp, payload)
            SELECT gen_random_uuid(), n, 'click', %s::bigint - (n %% 40) * %s::bigint - n, '{"page": "/"}'
            FROM generate_series(1, 4000) AS n
            """,
            [int(time.time() * 1000), DAY_MS],
        )
        cursor.execute("SELECT id, event_id, user_id, timestamp FROM signals ORDER BY id")
        before = cursor.fetchall()
    days = {timestamp // DAY_MS for *_, timestamp in before}
    assert len(before) == 4000 and len(days) >= 40

    migrate(latest())

    with connection.cursor() as cursor:
        cursor.execute("SELECT id, event_id, user_id, timestamp FROM signals ORDER BY id")
        assert cursor.fetchall() == before
        cursor.execute("SELECT count(*) FROM pg_inherits WHERE inhparent = 'signals'::regclass")
        assert cursor.fetchone()[0] >= len(days)
        cursor.execute("SELECT count(*) FROM ONLY signals")  # every row is in a partition
        assert cursor.fetchone()[0] == 0
    newest = Signal.objects.create(event_id=uuid.uuid4(), user_id=1, type="click", timestamp=before[0][3], payload={})
    assert newest.pk > before[-1][0]
    rows = [
        [str(event_id), user_id, "click", timestamp, "{}", 0, n]
        for n, (_, event_id, user_id, timestamp) in enumerate(before[:500])
    ]
    assert signals_store_batch(topic="migrated", rows=rows).duplicates == 500
    assert Signal.objects.count() == 4001
