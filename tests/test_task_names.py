"""Beat's schedule and the queue routes name tasks that exist: a task moved or renamed
without them would be "unregistered" in the worker, and its work silently not done."""

from __future__ import annotations

from django.conf import settings

from eventpipeline.celery import app


def registered_tasks() -> set[str]:
    app.loader.import_default_modules()  # what a worker imports at start (autodiscovery)
    return set(app.tasks)


def test_every_scheduled_task_exists() -> None:
    scheduled = {entry["task"] for entry in settings.CELERY_BEAT_SCHEDULE.values()}
    assert scheduled, "beat has a schedule"
    assert scheduled <= registered_tasks(), scheduled - registered_tasks()


def test_every_routed_task_exists() -> None:
    routed = set(settings.CELERY_TASK_ROUTES)
    assert {"signals_app.tasks.store_signals", "anomalies_app.tasks.detect_anomalies"} <= routed
    assert routed <= registered_tasks(), routed - registered_tasks()
