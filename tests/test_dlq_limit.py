"""DLQ_MAX_RATIO: the refused share of the last minute, judged on enough records (pure),
and the real bridge stopping on a flood of bad records only when it is set."""

from __future__ import annotations

import pytest

from bridge.dlq_limit import DeadLetterWindow
from signals_app.models import DeadLetter
from tests.conftest import Pipeline, wait_for


def window(max_ratio: float = 0.5, min_records: int = 10) -> DeadLetterWindow:
    return DeadLetterWindow(max_ratio=max_ratio, min_records=min_records)


def test_a_share_just_below_the_limit_does_not_stop() -> None:
    limit = window(max_ratio=0.1, min_records=10)
    limit.add(now=0.0, accepted=91, reasons=["bad"] * 9)
    assert limit.counts(now=0.0) == (9, 100)
    assert not limit.exceeded(now=0.0)


def test_exactly_the_limit_stops() -> None:
    limit = window(max_ratio=0.1, min_records=10)
    limit.add(now=0.0, accepted=90, reasons=["bad"] * 10)
    assert limit.exceeded(now=0.0)


def test_a_ratio_of_one_stops_only_when_every_record_is_refused() -> None:
    limit = window(max_ratio=1.0, min_records=10)
    limit.add(now=0.0, accepted=1, reasons=["bad"] * 99)
    assert not limit.exceeded(now=0.0)
    fresh = window(max_ratio=1.0, min_records=10)
    fresh.add(now=0.0, accepted=0, reasons=["bad"] * 10)
    assert fresh.exceeded(now=0.0)


def test_too_few_records_are_not_judged() -> None:
    limit = window(max_ratio=0.5, min_records=10)
    limit.add(now=0.0, accepted=0, reasons=["bad"] * 9)
    assert not limit.exceeded(now=0.0)
    limit.add(now=0.5, accepted=0, reasons=["bad"])
    assert limit.exceeded(now=0.5)


def test_records_older_than_the_minute_leave_the_window() -> None:
    limit = window(max_ratio=0.5, min_records=10)
    limit.add(now=0.0, accepted=0, reasons=["bad"] * 100)
    limit.add(now=1.0, accepted=100, reasons=[])
    assert limit.counts(now=59.9) == (100, 200)
    assert limit.exceeded(now=59.9)
    assert limit.counts(now=60.0) == (0, 100)
    assert not limit.exceeded(now=60.0)
    assert limit.counts(now=61.0) == (0, 0)
    assert not limit.exceeded(now=61.0)


def test_records_spread_over_the_minute_add_up() -> None:
    limit = window(max_ratio=0.5, min_records=100)
    for second in range(60):
        limit.add(now=second + 0.25, accepted=1, reasons=["bad"])
    assert limit.counts(now=59.5) == (60, 120)
    assert limit.exceeded(now=59.5)


def test_the_last_distinct_reasons_newest_first() -> None:
    limit = window()
    limit.add(now=0.0, accepted=0, reasons=["a", "b", "a", "c"])
    assert limit.last_reasons() == ["c", "a", "b"]
    limit.add(now=1.0, accepted=0, reasons=["d", "b"])
    assert limit.last_reasons() == ["b", "d", "c"]


# --- the real bridge, flooded with bad records ----------------------------------------
def flood(pipeline: Pipeline, count: int) -> None:
    producer = pipeline.producer()
    for index in range(count):
        producer.produce(pipeline.topic, value=b"not json %d" % index)
    assert producer.flush(30) == 0


@pytest.mark.integration
def test_with_dlq_max_ratio_a_flood_stops_the_bridge_with_one_line(pipeline: Pipeline) -> None:
    flood(pipeline, 2000)
    bridge = pipeline.start_bridge(DLQ_MAX_RATIO="0.5", DLQ_RATIO_MIN_RECORDS="100", BATCH_SIZE="20")
    assert bridge.wait(timeout=120) != 0, pipeline.log_tail()

    log = pipeline.log_tail(lines=1000)
    lines = [line for line in log.splitlines() if "CRITICAL" in line]
    assert len(lines) == 1, log
    assert f"dead-letter flood on {pipeline.topic}: " in lines[0]
    assert "records read in the last 60 s were refused (100%, DLQ_MAX_RATIO is 0.5); stopping the bridge." in lines[0]
    assert "not JSON: " in lines[0].partition("Last reasons: ")[2]
    # It stopped early, and what it read and committed is kept as dead letters.
    committed = sum(pipeline.committed_offsets().values())
    assert 100 <= committed < 2000
    assert DeadLetter.objects.filter(source_topic=pipeline.topic).count() == committed


@pytest.mark.integration
def test_without_dlq_max_ratio_a_flood_is_all_dead_letters_and_the_bridge_keeps_going(pipeline: Pipeline) -> None:
    flood(pipeline, 2000)
    bridge = pipeline.start_bridge(BATCH_SIZE="20")
    wait_for(lambda: DeadLetter.objects.count() == 2000, timeout=120, what="2000 dead letters")
    wait_for(pipeline.all_committed, timeout=60, what="offsets committed up to the end")
    assert bridge.poll() is None
