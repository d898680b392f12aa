"""LOG_FORMAT=json: one JSON object per line, and a batch followed through the processes.

The formatter and the task context are tested alone first (no servers); then the real
bridge, worker and emitter, and beat and gunicorn, write their logs as JSON.
"""

from __future__ import annotations

import json
import logging
import logging.config
import os
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from celery import shared_task
from django.conf import settings

from anomalies_app.models import Anomaly
from signals_app.models import Signal
from tests.conftest import REPO, Pipeline, free_port, wait_for


class Captured(logging.Handler):
    """The lines the settings' JSON handler would write, kept in a list."""

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture
def json_lines() -> Iterator[list[str]]:
    """A logger with the formatter and filter of settings.LOGGING's JSON handler."""
    configured: dict[str, Any] = settings.LOGGING
    config = {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": configured["filters"],
        "formatters": {"json": configured["formatters"]["json"]},
        "handlers": {"captured": {"()": Captured, "formatter": "json", "filters": ["task_context"]}},
        "loggers": {"test.logs": {"handlers": ["captured"], "level": "INFO", "propagate": False}},
    }
    logging.config.dictConfig(config)
    handler = logging.getLogger("test.logs").handlers[0]
    assert isinstance(handler, Captured)
    try:
        yield handler.lines
    finally:
        logging.getLogger("test.logs").handlers.clear()


@shared_task(bind=True, name="tests.test_logs.log_in_a_task")
def log_in_a_task(self: Any, message: str, batch_id: str | None = None) -> None:
    logging.getLogger("test.logs").info(message)


def test_a_record_is_one_line_of_json_with_its_fields(json_lines: list[str]) -> None:
    logger = logging.getLogger("test.logs")
    logger.info("batch %s: %d events", "ab12cd34-7", 3, extra={"batch_id": "ab12cd34-7", "events": 3})
    try:
        raise ValueError("line one\nline two")
    except ValueError:
        logger.exception("went wrong")
    assert len(json_lines) == 2 and all("\n" not in line for line in json_lines)
    first, second = (json.loads(line) for line in json_lines)
    assert first["message"] == "batch ab12cd34-7: 3 events"
    assert (first["level"], first["logger"], first["batch_id"], first["events"]) == (
        "INFO",
        "test.logs",
        "ab12cd34-7",
        3,
    )
    assert first["time"].endswith("+00:00")
    assert "task_id" not in first  # not in a task
    assert second["level"] == "ERROR" and "ValueError: line one\nline two" in second["exc_info"]


def test_a_record_logged_in_a_task_names_the_task_and_its_batch(json_lines: list[str]) -> None:
    log_in_a_task.apply(args=("storing",), kwargs={"batch_id": "ab12cd34-8"}, task_id="task-1")
    log_in_a_task.apply(args=("an old message",), task_id="task-2")
    with_batch, without = (json.loads(line) for line in json_lines)
    assert with_batch["task_id"] == "task-1"
    assert with_batch["task_name"] == "tests.test_logs.log_in_a_task"
    assert with_batch["batch_id"] == "ab12cd34-8"
    assert without["task_id"] == "task-2" and "batch_id" not in without


def test_a_batch_id_given_by_the_caller_is_kept(json_lines: list[str]) -> None:
    @shared_task(name="tests.test_logs.log_another_batch")
    def log_another_batch(batch_id: str | None = None) -> None:
        logging.getLogger("test.logs").info("about another batch", extra={"batch_id": "other-1"})

    log_another_batch.apply(kwargs={"batch_id": "mine-1"})
    assert json.loads(json_lines[0])["batch_id"] == "other-1"


# --- real processes -------------------------------------------------------------------------


def json_records(path: Path) -> list[dict[str, Any]]:
    """Every line of a process's log as JSON; fails naming the first line that is not."""
    records = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        try:
            record = json.loads(line)
        except ValueError:
            pytest.fail(f"{path.name}:{number} is not JSON: {line!r}")
        assert isinstance(record, dict), f"{path.name}:{number} is not a JSON object: {line!r}"
        records.append(record)
    return records


@pytest.mark.integration
def test_a_batch_can_be_followed_from_its_offsets_to_its_rows_and_anomalies(pipeline: Pipeline) -> None:
    pipeline.env["LOG_FORMAT"] = "json"
    pipeline.start_worker(loglevel="INFO")
    pipeline.start_bridge()
    pipeline.emit("--count", "600", "--rate", "3000", "--seed", "5", "--users", "40")
    wait_for(lambda: Signal.objects.count() == 600, timeout=120, what="600 stored signals")
    wait_for(pipeline.all_committed, timeout=60, what="offsets committed up to the end")
    # Detection is done too: the bridge commits a batch only once both its tasks succeeded.
    assert pipeline.stop("bridge") == 0
    # Read while the worker runs: stopped, Celery writes "worker: Warm shutdown" straight
    # to stdout from its signal handler (docs/configuration.md, "Logs").
    logs = {path.name.split(".")[0]: json_records(path) for path in pipeline.logs.glob("*.log")}
    assert set(logs) == {"bridge", "worker", "emitter"}
    assert any(record["message"].startswith("emitted 600 events") for record in logs["emitter"])

    batches = [record for record in logs["bridge"] if "offsets" in record and record["events"]]
    assert sum(batch["events"] for batch in batches) == 600
    stores = {r["batch_id"]: r for r in logs["worker"] if r["logger"] == "signals_app.tasks"}
    detects = {r["batch_id"]: r for r in logs["worker"] if r["logger"] == "anomalies_app.tasks"}
    committed = {batch_id for record in logs["bridge"] if "committed" in record for batch_id in record["batch_ids"]}
    for batch in batches:
        batch_id = batch["batch_id"]
        assert batch["topic"] == pipeline.topic and batch["offsets"], batch
        assert stores[batch_id]["stored"] == batch["events"], stores[batch_id]
        assert stores[batch_id]["task_name"] == "signals_app.tasks.store_signals" and stores[batch_id]["task_id"]
        assert stores[batch_id]["message"].startswith(f"batch {batch_id}: stored")
        assert detects[batch_id]["task_name"] == "anomalies_app.tasks.detect_anomalies"
        assert detects[batch_id]["analysed"] == batch["events"], detects[batch_id]
        assert batch_id in committed
    raised = {anomaly_id for record in detects.values() for anomaly_id in record["anomalies_raised"]}
    muted = {anomaly_id for record in detects.values() for anomaly_id in record["anomalies_muted"]}
    assert raised | muted == set(Anomaly.objects.values_list("pk", flat=True))


def run_until(command: list[str], log: Path, *, ready: str, env: dict[str, str], poke: Any = None) -> None:
    """Start a process with LOG_FORMAT=json, wait for `ready` in its log, then stop it."""
    with log.open("wb") as output:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            wait_for(lambda: ready in log.read_text(), timeout=60, what=f"{ready!r} in {log.name}")
            if poke is not None:
                poke()
        finally:
            os.killpg(process.pid, signal.SIGTERM)
            process.wait(timeout=30)


@pytest.mark.integration
def test_beat_and_gunicorn_write_json_lines(tmp_path: Path) -> None:
    env = {**os.environ, "LOG_FORMAT": "json", "PYTHONUNBUFFERED": "1"}
    beat = [sys.executable, "-m", "celery", "-A", "eventpipeline", "beat", "--loglevel", "INFO"]
    beat += ["--schedule", str(tmp_path / "celerybeat-schedule")]
    run_until(beat, tmp_path / "beat.log", ready="Starting", env=env)
    assert any(record["logger"].startswith("celery.beat") for record in json_records(tmp_path / "beat.log"))

    port = free_port()
    api = [sys.executable, "-m", "gunicorn", "eventpipeline.wsgi", "--bind", f"127.0.0.1:{port}", "--workers", "1"]
    api += ["--access-logfile", "-"]

    def request_schema() -> None:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/schema", timeout=30) as response:
            assert response.status == 200
        wait_for(lambda: "GET /schema" in (tmp_path / "api.log").read_text(), timeout=10, what="the access log")

    run_until(api, tmp_path / "api.log", ready="Booting worker", env=env, poke=request_schema)
    loggers = {record["logger"] for record in json_records(tmp_path / "api.log")}
    assert {"gunicorn.error", "gunicorn.access"} <= loggers
