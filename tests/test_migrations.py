"""Moving a model between apps keeps its table and its rows: a database as the previous
layout left it (injection runs owned by anomalies_app, with rows) migrates to this one."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import connection
from django.db.migrations.executor import MigrationExecutor

from emitter.models import InjectedScenario, InjectionRun

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
