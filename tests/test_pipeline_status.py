"""`pipeline_status` and the bridge's `bridge_consumer_lag`.

The judgement and the screens are pure and tested without servers. The log end is tested
on the broker the suite runs on (Tansu, whose high watermarks are wrong), and the command
end to end, as an operator runs it, against the real bridge and worker processes.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.request
import uuid
from typing import Any

import pytest
import redis
from confluent_kafka import Producer, TopicPartition
from django.conf import settings
from prometheus_client import REGISTRY

from bridge.pipeline_status import (
    DeadLetters,
    NewestEvent,
    PipelineStatus,
    RuleLine,
    Thresholds,
    pipeline_problems,
    pipeline_status_document,
    pipeline_status_text,
)
from bridge.status import (
    BridgeReport,
    BridgeState,
    StatusReporter,
    bridge_report_delete,
    bridge_report_list,
    bridge_report_write,
)
from emitter.generator import SignalGenerator
from eventpipeline.celery import app
from eventpipeline.kafka import PartitionLag, log_end_offsets, log_end_probe, topics_ensure
from eventpipeline.queues import celery_queue_lengths
from tests.conftest import REPO, Pipeline, free_port, wait_for

NOW = 1_800_000_000.0
THRESHOLDS = Thresholds(max_lag=1000, max_store_age_seconds=120, bridge_stale_seconds=15)


def bridge_report(**changes: Any) -> BridgeReport:
    fields: dict[str, Any] = {
        "group_id": "g",
        "topic": "signals",
        "host": "box",
        "pid": 42,
        "in_flight": 3,
        "paused": False,
        "assigned": [0, 1],
        "updated_at": NOW - 2,
        "lag": {0: 10, 1: 0},
    }
    return BridgeReport(**{**fields, **changes})


def healthy_status(**changes: Any) -> PipelineStatus:
    fields: dict[str, Any] = {
        "taken_at": NOW,
        "topic": "signals",
        "group_id": "g",
        "partitions": [PartitionLag("signals", 0, 990, 0, 1000), PartitionLag("signals", 1, None, 0, 0)],
        "queues": {"store": 2, "detect": 1, "default": 0},
        "workers": ["worker@box"],
        "bridges": [bridge_report()],
        "newest_event": NewestEvent(stored_at=NOW - 5, event_ms=int((NOW - 7) * 1000)),
        "dead_letters": DeadLetters(3, [("oversize: 70000 bytes", 2), ("not JSON: x", 1)]),
        "rules": [RuleLine("high_frequency_login", ">", 10, 60), RuleLine("high_value_purchase", ">", 1000, 0)],
    }
    return PipelineStatus(**{**fields, **changes})


def lags(*per_partition: int) -> list[PartitionLag]:
    return [PartitionLag("signals", p, 100, 0, 100 + lag) for p, lag in enumerate(per_partition)]


# --- the judgement -----------------------------------------------------------------------
def test_a_healthy_pipeline_has_no_problem() -> None:
    assert pipeline_problems(healthy_status(), THRESHOLDS) == []


def test_lag_over_the_threshold_in_all_partitions_is_a_problem_and_at_it_is_not() -> None:
    assert pipeline_problems(healthy_status(partitions=lags(500, 500)), THRESHOLDS) == []
    assert pipeline_problems(healthy_status(partitions=lags(500, 501)), THRESHOLDS) == [
        "consumer lag 1001 is over STATUS_MAX_LAG (1000)"
    ]


def test_a_partition_never_committed_lags_from_the_start_of_its_log() -> None:
    assert PartitionLag("signals", 0, None, 40, 100).lag == 60
    assert PartitionLag("signals", 0, 100, 0, 100).lag == 0


def test_nothing_stored_for_too_long_is_a_problem_only_while_records_wait() -> None:
    at_limit = NewestEvent(stored_at=NOW - 120, event_ms=0)
    past_limit = NewestEvent(stored_at=NOW - 121, event_ms=0)
    assert pipeline_problems(healthy_status(newest_event=at_limit), THRESHOLDS) == []
    assert pipeline_problems(healthy_status(newest_event=past_limit), THRESHOLDS) == [
        "10 records wait and nothing was stored for 121 s (STATUS_MAX_STORE_AGE_SECONDS: 120)"
    ]
    assert pipeline_problems(healthy_status(newest_event=past_limit, partitions=lags(0, 0)), THRESHOLDS) == []
    assert pipeline_problems(healthy_status(newest_event=None), THRESHOLDS) == [
        "10 records wait and no event was ever stored"
    ]
    assert pipeline_problems(healthy_status(newest_event=None, partitions=lags(0)), THRESHOLDS) == []


def test_no_worker_answering_and_no_bridge_reporting_are_problems() -> None:
    assert pipeline_problems(healthy_status(workers=[]), THRESHOLDS) == ["no Celery worker answered a ping"]
    assert pipeline_problems(healthy_status(bridges=[]), THRESHOLDS) == ["no bridge of group g reports"]
    stale = bridge_report(updated_at=NOW - 16)
    assert pipeline_problems(healthy_status(bridges=[stale]), THRESHOLDS) == ["no bridge of group g reports"]
    fresh_enough = bridge_report(updated_at=NOW - 15)
    assert pipeline_problems(healthy_status(bridges=[stale, fresh_enough]), THRESHOLDS) == []


def test_a_part_that_cannot_be_read_is_a_problem_and_judges_nothing_else() -> None:
    status = healthy_status(
        partitions=None, workers=None, errors={"kafka": "KafkaException: timed out", "workers": "OSError: refused"}
    )
    assert pipeline_problems(status, THRESHOLDS) == [
        "cannot read kafka: KafkaException: timed out",
        "cannot read workers: OSError: refused",
    ]


def test_every_problem_is_listed() -> None:
    status = healthy_status(partitions=lags(2000), workers=[], bridges=[], newest_event=None)
    assert len(pipeline_problems(status, THRESHOLDS)) == 4


# --- the screens -------------------------------------------------------------------------
def test_the_screen_shows_every_part() -> None:
    status = healthy_status(bridges=[bridge_report(paused=True)])
    text = pipeline_status_text(status, [])
    assert text.splitlines()[0] == "pipeline status at 2027-01-15 08:00:00Z: OK"
    assert "kafka     topic signals, group g" in text
    assert "          0           990          1000          10" in text
    assert "          1             -             0           0" in text
    assert "      total                                      10" in text
    assert "queues    store 2  detect 1  default 0" in text
    assert "workers   worker@box" in text
    assert "bridge    box:42  in flight 3  PAUSED  partitions 0,1  (reported 2 s ago)" in text
    assert "newest    stored 5 s ago, event time 2027-01-15 07:59:53Z" in text
    assert "dead letters in the last hour: 3" in text
    assert "        2  oversize: 70000 bytes" in text
    assert "rules     2 enabled: high_frequency_login (> 10 in 60 s), high_value_purchase (> 1000)" in text


def test_the_screen_puts_problems_first_and_says_what_it_could_not_read() -> None:
    status = healthy_status(workers=[], bridges=[], newest_event=None, partitions=lags(0), errors={})
    problems = pipeline_problems(status, THRESHOLDS)
    lines = pipeline_status_text(status, problems).splitlines()
    assert lines[0].endswith(": 2 problems")
    assert lines[1:3] == ["  PROBLEM  no Celery worker answered a ping", "  PROBLEM  no bridge of group g reports"]
    assert "workers   none answered" in lines
    assert "bridges   none reporting" in lines
    assert "newest    none stored" in lines

    unreadable = healthy_status(partitions=None, newest_event=None, errors={"kafka": "down", "newest event": "down"})
    text = pipeline_status_text(unreadable, pipeline_problems(unreadable, THRESHOLDS))
    assert "log end" not in text and "\nnewest    " not in text
    assert "  PROBLEM  cannot read kafka: down" in text


def test_the_json_document_holds_the_same() -> None:
    status = healthy_status()
    document = json.loads(json.dumps(pipeline_status_document(status, [])))
    assert document["ok"] is True
    assert document["total_lag"] == 10
    assert document["partitions"][1] == {"partition": 1, "committed": None, "log_end": 0, "lag": 0}
    assert document["bridges"][0]["lag"] == {"0": 10, "1": 0}
    assert document["bridges"][0]["reported_seconds_ago"] == 2.0
    assert document["newest_event"] == {"stored_seconds_ago": 5.0, "event_time": "2027-01-15 07:59:53Z"}
    assert document["dead_letters_last_hour"]["reasons"][0] == {"reason": "oversize: 70000 bytes", "count": 2}
    assert document["enabled_rules"] == ["high_frequency_login", "high_value_purchase"]
    failing = pipeline_status_document(healthy_status(workers=[]), ["no Celery worker answered a ping"])
    assert failing["ok"] is False and failing["problems"] == ["no Celery worker answered a ping"]


def test_a_bridge_report_survives_the_trip_through_json() -> None:
    report = bridge_report(paused=True, lag=None)
    assert BridgeReport.from_json(report.to_json()) == report
    assert BridgeReport.from_json(bridge_report().to_json()).lag == {0: 10, 1: 0}


def test_the_lag_metric_follows_the_partitions_assigned(monkeypatch: pytest.MonkeyPatch) -> None:
    def lag_of(partitions: list[int], **_: Any) -> list[PartitionLag]:
        return [PartitionLag("signals", p, 10 * p, 0, 10 * p + 5 + p) for p in partitions]

    monkeypatch.setattr("bridge.status.consumer_lag", lag_of)
    reporter = StatusReporter(
        state=lambda: BridgeState(in_flight=0, paused=False, assigned=[]),
        group_id="g",
        topic="metric-test",
        interval_seconds=1,
        client=redis.Redis(),
        probe=None,  # type: ignore[arg-type]  # consumer_lag is replaced
        admin=None,  # type: ignore[arg-type]
    )

    def exported() -> dict[str, float | None]:
        return {
            p: REGISTRY.get_sample_value("bridge_consumer_lag", {"topic": "metric-test", "partition": p}) for p in "012"
        }

    assert reporter.measure_lag([0, 1, 2]) == {0: 5, 1: 6, 2: 7}
    assert exported() == {"0": 5, "1": 6, "2": 7}
    assert reporter.measure_lag([1]) == {1: 6}
    assert exported() == {"0": None, "1": 6, "2": None}


# --- against the servers -----------------------------------------------------------------
@pytest.mark.integration
def test_bridge_reports_expire_and_are_read_per_group() -> None:
    client = redis.Redis.from_url(settings.REDIS_URL)
    group = f"test-group-{uuid.uuid4().hex[:8]}"
    mine, other = bridge_report(group_id=group, pid=1), bridge_report(group_id=f"{group}-other", pid=2)
    bridge_report_write(client=client, report=mine, ttl_seconds=1)
    bridge_report_write(client=client, report=other, ttl_seconds=30)
    assert bridge_report_list(client=client, group_id=group) == [mine]
    wait_for(lambda: not bridge_report_list(client=client, group_id=group), timeout=5, what="the record to expire")
    bridge_report_delete(client=client, report=other)
    assert bridge_report_list(client=client, group_id=f"{group}-other") == []


@pytest.mark.integration
def test_queue_lengths_count_every_priority_of_a_queue() -> None:
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    queue = f"test-queue-{uuid.uuid4().hex[:8]}"
    client.rpush(queue, "a", "b")
    client.rpush(f"{queue}\x06\x163", "c")
    client.rpush(f"{queue}\x06\x169", "d")
    try:
        assert celery_queue_lengths(app=app, queues=[queue, f"{queue}-empty"]) == {queue: 4, f"{queue}-empty": 0}
    finally:
        client.delete(queue, f"{queue}\x06\x163", f"{queue}\x06\x169")


@pytest.mark.integration
def test_the_log_end_is_the_offset_after_the_last_readable_record() -> None:
    """Whatever the broker reports as its high watermark: batches of many records (which
    Tansu counts as one), single records, an empty partition."""
    topic = f"test-log-end-{uuid.uuid4().hex[:10]}"
    topics_ensure([topic], partitions=3)
    producer = Producer({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "linger.ms": 50})
    for _ in range(300):
        producer.produce(topic, value=b"batched", partition=0)
    assert producer.flush(30) == 0
    for _ in range(3):
        producer.produce(topic, value=b"alone", partition=1)
        assert producer.flush(30) == 0
    for _ in range(120):
        producer.produce(topic, value=b"batched again", partition=1)
    assert producer.flush(30) == 0

    probe = log_end_probe()
    try:
        reported = {p: probe.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1] for p in range(3)}
        ends = log_end_offsets(probe, topic, [0, 1, 2])
        assert ends == {0: (0, 300), 1: (0, 123), 2: (0, 0)}
        # Read twice with the same consumer: the second answer is as right as the first.
        assert log_end_offsets(probe, topic, [1]) == {1: (0, 123)}
    finally:
        probe.close()
    # The broker's own figure is never above the truth (on Tansu it is below it).
    assert all(reported[p] <= ends[p][1] for p in range(3)), reported


# --- the command, as an operator runs it ------------------------------------------------
def pipeline_status(pipeline: Pipeline, *args: str, **env: str) -> tuple[int, str]:
    run = subprocess.run(
        [sys.executable, "manage.py", "pipeline_status", *args],
        cwd=REPO,
        env={**pipeline.env, "STATUS_PING_TIMEOUT_SECONDS": "0.5", "BRIDGE_STATUS_SECONDS": "1", **env},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert run.returncode in (0, 1), run.stderr
    return run.returncode, run.stdout


def status_document(pipeline: Pipeline, **env: str) -> tuple[int, dict[str, Any]]:
    code, out = pipeline_status(pipeline, "--json", **env)
    return code, json.loads(out)


def bridge_lag_metric(port: int) -> dict[str, float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()
    return {
        line.split('partition="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("bridge_consumer_lag{")
    }


@pytest.mark.integration
def test_pipeline_status_shows_the_lag_growing_while_no_worker_runs_and_draining_once_one_does(
    pipeline: Pipeline,
) -> None:
    """The bridge pauses when the workers are behind, so the lag grows on Kafka while the
    queues stay bounded: what the operator sees, with exit status 1 until the worker
    drains everything, then 0. The bridge's `bridge_consumer_lag` agrees throughout."""
    metrics_port = free_port()
    pipeline.start_bridge(
        BRIDGE_METRICS_PORT=str(metrics_port), BRIDGE_STATUS_SECONDS="1", BRIDGE_MAX_IN_FLIGHT="4", BATCH_SIZE="500"
    )
    generator = SignalGenerator(seed=17, users=100, start_ms=int(time.time() * 1000) - 600_000, rate=100)
    limits = {"STATUS_MAX_LAG": "1000"}

    pipeline.produce(generator.next() for _ in range(4000))
    seen: dict[str, Any] = {}

    def status_is(total_lag: int, *, paused: bool, workers: bool) -> bool:
        code, document = status_document(pipeline, **limits)
        seen.update(code=code, document=document)
        bridges = document["bridges"] or []
        return (
            document["total_lag"] == total_lag
            and len(bridges) == 1
            and bridges[0]["paused"] is paused
            and bool(document["workers"]) is workers
        )

    wait_for(lambda: status_is(4000, paused=True, workers=False), timeout=90, what="a paused bridge, lag 4000")
    code, document = seen["code"], seen["document"]
    assert code == 1
    assert "no Celery worker answered a ping" in document["problems"]
    assert "consumer lag 4000 is over STATUS_MAX_LAG (1000)" in document["problems"]
    assert document["queues"][pipeline.queue] == 4
    assert document["bridges"][0]["in_flight"] == 4
    assert document["bridges"][0]["assigned"] == [0, 1, 2, 3]
    wait_for(lambda: sum(bridge_lag_metric(metrics_port).values()) == 4000, timeout=30, what="the lag metric")

    # More events: the lag grows, the queue does not.
    pipeline.produce(generator.next() for _ in range(6000))
    wait_for(lambda: status_is(10_000, paused=True, workers=False), timeout=60, what="lag 10000")
    assert seen["code"] == 1
    assert seen["document"]["queues"][pipeline.queue] == 4
    wait_for(lambda: sum(bridge_lag_metric(metrics_port).values()) == 10_000, timeout=30, what="metric 10000")

    code, screen = pipeline_status(pipeline, **limits)
    assert code == 1
    assert "  PROBLEM  no Celery worker answered a ping" in screen
    assert "  PROBLEM  consumer lag 10000 is over STATUS_MAX_LAG (1000)" in screen
    assert "PAUSED" in screen

    pipeline.start_worker()
    wait_for(lambda: status_is(0, paused=False, workers=True), timeout=180, what="the lag drained")
    code, document = seen["code"], seen["document"]
    assert (code, document["problems"]) == (0, [])
    assert document["queues"][pipeline.queue] == 0
    assert [p["lag"] for p in document["partitions"]] == [0, 0, 0, 0]
    assert sum(p["log_end"] for p in document["partitions"]) == 10_000
    wait_for(lambda: sum(bridge_lag_metric(metrics_port).values()) == 0, timeout=30, what="the lag metric at 0")
    code, screen = pipeline_status(pipeline, **limits)
    assert code == 0
    assert screen.splitlines()[0].endswith(": OK")

    # A bridge stopped takes its record away: nobody reports, and that is a problem.
    assert pipeline.stop("bridge") == 0
    code, document = status_document(pipeline, **limits)
    assert (code, document["bridges"]) == (1, [])
    assert f"no bridge of group {pipeline.group_id} reports" in document["problems"]


@pytest.mark.integration
def test_pipeline_status_watch_prints_one_json_document_per_look(pipeline: Pipeline) -> None:
    watch = subprocess.Popen(
        [sys.executable, "manage.py", "pipeline_status", "--watch", "--json", "--interval", "0.5"],
        cwd=REPO,
        env={**pipeline.env, "STATUS_PING_TIMEOUT_SECONDS": "0.2"},
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert watch.stdout is not None
        first, second = json.loads(watch.stdout.readline()), json.loads(watch.stdout.readline())
    finally:
        watch.send_signal(2)
        code = watch.wait(timeout=30)
    assert first["topic"] == second["topic"] == pipeline.topic
    assert first["ok"] is False and "no Celery worker answered a ping" in first["problems"]
    assert code == 1
