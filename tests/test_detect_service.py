"""Detection against real Redis, PostgreSQL and Kafka (the service the detect task calls).

Each test has its own Redis key prefix and anomalies topic. Batches are stored in
`signals` before they are analysed, as the pipeline guarantees for every committed batch.
"""

from __future__ import annotations

import json
import random
import threading
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis
from confluent_kafka import Producer
from django.conf import settings
from django.db import connection
from redis.cluster import RedisCluster

from anomalies_app.detection import WindowEntry
from anomalies_app.models import Anomaly, UserLocation
from anomalies_app.rules import DEFAULT_RULES
from anomalies_app.selectors import MuteBook, signal_history, signals_exist
from anomalies_app.services import AnomalyPublishError, anomalies_detect_batch
from anomalies_app.windows import IDLE_GRACE_MS, WindowStore
from eventpipeline.kafka import shared_producer, topics_ensure
from signals_app.services import signals_store_batch
from tests.conftest import topic_values
from tests.factories import PAYLOADS, signal_row

pytestmark = pytest.mark.integration

# Yesterday at 10:00 UTC: recent, and outside the quiet hours.
BASE = int(
    (datetime.now(UTC) - timedelta(days=1)).replace(hour=10, minute=0, second=0, microsecond=0).timestamp() * 1000
)
QUIET = BASE - 7 * 3_600_000  # 03:00 UTC the same day


def row(user_id: int, at_ms: int, signal_type: str = "click", **payload: Any) -> list[Any]:
    return signal_row(
        signal_type=signal_type, user_id=user_id, timestamp=at_ms, payload={**PAYLOADS[signal_type], **payload}
    )


def scenario() -> list[list[Any]]:
    """One episode of each rule, each for its own user, and clean traffic around them."""
    rows = [row(1, BASE + i * 2_500, "login") for i in range(12)]  # 12 logins in 30 s
    rows += [row(2, BASE + i * 10_000, "login", success=False) for i in range(3)]
    rows += [row(3, BASE + i * 120_000, "purchase", amount=20.0) for i in range(4)]
    rows += [row(3, BASE + 600_000, "purchase", amount=1500.0)]  # the 5th in 10 min, and high
    rows += [row(4, BASE + i * 5_000, "api_call", status_code=500 + i % 4) for i in range(6)]
    rows += [row(5, BASE + i * 1_000, "login", location="Berlin, DE") for i in range(2)]
    rows += [row(5, BASE + 900_000, "login", location="Lagos, NG")]
    rows += [row(6, QUIET + i * 60_000) for i in range(5)]
    # Near misses, which must raise nothing.
    rows += [row(11, BASE + i * 5_000, "login") for i in range(10)]
    rows += [row(12, BASE + i * 1_000, "login", success=i == 2) for i in range(4)]  # F F S F
    rows += [row(13, BASE, "purchase", amount=1000.0)]
    rows += [row(14, BASE + i * 5_000, "api_call", status_code=499) for i in range(6)]
    rows += [row(15, BASE + i * 60_000, "click") for i in range(20)]
    return sorted(rows, key=lambda r: r[3])


EXPECTED = {
    (1, "high_frequency_login"),
    (2, "repeated_login_failures"),
    (3, "rapid_successive_purchases"),
    (3, "high_value_purchase"),
    (4, "high_api_failure_rate"),
    (5, "unusual_location_login"),
    (6, "unusual_time_activity"),
}


def batches(rows: list[list[Any]], size: int) -> list[list[list[Any]]]:
    return [rows[i : i + size] for i in range(0, len(rows), size)]


def anomalies() -> list[tuple[Any, ...]]:
    return sorted(
        Anomaly.objects.values_list(
            "user_id", "anomaly_type", "episode_key", "episode_start_ms", "episode_end_ms", "evidence__value"
        )
    )


class Detector:
    """Detection as a worker runs it, on this test's own Redis keys and topic."""

    def __init__(self, client: redis.Redis | RedisCluster, topic: str) -> None:
        self.client = client
        self.topic = topic
        self.prefix = f"test-dw-{uuid.uuid4().hex[:8]}"
        self.store = self.windows()
        self.mutes = MuteBook(refresh_seconds=0)

    def windows(self) -> WindowStore:
        return WindowStore(self.client, prefix=self.prefix, load_history=signal_history, history_exists=signals_exist)

    def __call__(self, rows: list[list[Any]], *, store: bool = True) -> None:
        if store:
            signals_store_batch(topic="test", rows=rows)
        anomalies_detect_batch(
            rows=rows, rules=DEFAULT_RULES, windows=self.store, mutes=self.mutes, producer=shared_producer()
        )

    def run(self, rows: list[list[Any]], size: int = 7) -> None:
        for batch in batches(rows, size):
            self(batch)

    def lose_redis(self) -> None:
        """What a Redis restart does to this test's keys: all gone."""
        keys = list(self.client.scan_iter(f"{self.prefix}:*"))
        assert keys, "the windows were in Redis"
        self.client.delete(*keys)

    def restart(self) -> None:
        """A fresh database and fresh windows, for a second run to compare with the first."""
        Anomaly.objects.all().delete()
        UserLocation.objects.all().delete()
        with connection.cursor() as cursor:
            cursor.execute("TRUNCATE signals")
        self.prefix = f"test-dw-{uuid.uuid4().hex[:8]}"
        self.store = self.windows()


@pytest.fixture(params=["redis", "redis-cluster"])
def detect(
    request: pytest.FixtureRequest, django_db_serialized_rollback: None, transactional_db: Any, settings: Any
) -> Iterator[Detector]:
    """Every test twice: the windows on one Redis, and on a Redis Cluster of three masters
    (a script call per slot; anomalies_app/windows.py)."""
    topic = f"test-anomalies-{uuid.uuid4().hex[:10]}"
    topics_ensure([topic], partitions=1)
    settings.ANOMALIES_TOPIC = topic
    client: Any = (
        RedisCluster.from_url(request.getfixturevalue("redis_cluster").url)
        if request.param == "redis-cluster"
        else redis.Redis.from_url(settings.DETECT_REDIS_URL)
    )
    detector = Detector(client, topic)
    yield detector
    keys = list(client.scan_iter("test-dw-*"))
    if keys:
        client.delete(*keys)


def test_each_rule_raises_one_anomaly_with_evidence_and_publishes_it(detect: Detector) -> None:
    detect.run(scenario())
    assert {(a[0], a[1]) for a in anomalies()} == EXPECTED
    assert len(anomalies()) == len(EXPECTED)
    burst = Anomaly.objects.get(anomaly_type="high_frequency_login")
    assert burst.description == "12 logins in 60 s, threshold 10"
    assert burst.severity == "medium"
    assert len(burst.evidence["event_ids"]) == 12
    assert burst.evidence["rule"] == {"threshold": 10, "window_seconds": 60, "comparison": ">", "severity": "medium"}
    assert burst.evidence["window_end_ms"] - burst.evidence["window_start_ms"] == 60_000
    place = Anomaly.objects.get(anomaly_type="unusual_location_login")
    assert place.description == "successful login from Lagos, NG, never seen for this user"
    assert place.original_signal_data["payload"]["location"] == "Lagos, NG"
    night = Anomaly.objects.get(anomaly_type="unusual_time_activity")
    assert night.description == "activity at 03:00:00 UTC, quiet hours 02:00-04:59"

    published = [json.loads(value) for value in topic_values(detect.topic, expected=len(EXPECTED))]
    assert sorted((p["user_id"], p["anomaly_type"]) for p in published) == sorted(EXPECTED)
    assert not Anomaly.objects.filter(published_at__isnull=True).exists()


def test_the_same_batches_twice_change_nothing(detect: Detector) -> None:
    rows = scenario()
    detect.run(rows)
    first = anomalies()
    detect.run(rows, size=5)  # delivered again, even cut differently
    assert anomalies() == first
    assert len(topic_values(detect.topic, expected=len(EXPECTED) + 1, timeout=5)) == len(EXPECTED)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_shuffled_events_give_the_same_anomalies(detect: Detector, seed: int) -> None:
    rows = scenario()
    detect.run(rows)
    in_order = anomalies()
    detect.restart()
    detect.run(random.Random(seed).sample(rows, len(rows)), size=random.Random(seed).randint(1, 9))
    assert anomalies() == in_order


def test_losing_redis_in_the_middle_of_a_stream_loses_no_count(detect: Detector) -> None:
    rows = scenario()
    detect.run(rows)
    uninterrupted = anomalies()
    detect.restart()
    half = len(rows) // 2
    detect.run(rows[:half])
    assert not {(1, "high_frequency_login"), (5, "unusual_location_login")} & {(a[0], a[1]) for a in anomalies()}, (
        "these episodes straddle the restart"
    )
    detect.lose_redis()
    detect.run(rows[half:])
    assert anomalies() == uninterrupted


def test_two_workers_on_the_same_user_at_once_raise_one_anomaly(detect: Detector) -> None:
    for attempt in range(10):
        user_id = 100 + attempt
        logins = [row(user_id, BASE + i * 1_000, "login") for i in range(60)]
        quarters = [logins[i::4] for i in range(4)]  # each alone holds 15 logins within 60 s
        errors = at_once(detect, quarters)
        assert not errors, errors
        (burst,) = Anomaly.objects.filter(user_id=user_id)
        assert burst.evidence["value"] == 60
        assert burst.episode_start_ms == BASE + 10_000


def test_two_workers_with_a_users_first_and_second_place_at_once_raise_one_anomaly(detect: Detector) -> None:
    for attempt in range(10):
        user_id = 200 + attempt
        home = [row(user_id, BASE, "login", location="Berlin, DE")]
        away = [row(user_id, BASE + 1_000, "login", location="Lagos, NG")]
        assert not at_once(detect, [home, away])
        (new_place,) = Anomaly.objects.filter(user_id=user_id)
        assert new_place.episode_key == "Lagos, NG"


def at_once(detect: Detector, batches: list[list[list[Any]]]) -> list[BaseException]:
    """Analyse the batches on as many threads, started together; the errors they raised."""
    start = threading.Barrier(len(batches))
    errors: list[BaseException] = []

    def work(rows: list[list[Any]]) -> None:
        try:
            start.wait()
            detect(rows, store=False)
        except BaseException as error:  # noqa: BLE001 - reported by the caller
            errors.append(error)
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(batch,)) for batch in batches]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_location_history_outlives_redis(detect: Detector) -> None:
    detect([row(7, BASE, "login", location="Berlin, DE")])
    detect.lose_redis()
    detect([row(7, BASE + 60_000, "login", location="Berlin, DE")])
    assert not Anomaly.objects.exists()


def test_a_late_event_that_joins_two_episodes_merges_their_anomalies(detect: Detector) -> None:
    early = [row(8, BASE + i * 1_000, "login") for i in range(11)]  # breaks at +10 s
    late = [row(8, BASE + 70_000 + i * 1_000, "login") for i in range(11)]
    detect(early + late)
    assert len(Anomaly.objects.filter(user_id=8)) == 2
    # Logins in between keep the count above 10 all along: one episode after all.
    bridge = [row(8, BASE + 11_000 + i * 5_000, "login") for i in range(12)]
    detect(bridge)
    (merged,) = Anomaly.objects.filter(user_id=8)
    assert merged.episode_start_ms == BASE + 10_000


def test_a_late_success_that_splits_a_run_of_failures_withdraws_its_anomaly(detect: Detector) -> None:
    failures = [row(16, BASE + i * 10_000, "login", success=False) for i in range(3)]
    detect(failures)
    assert Anomaly.objects.filter(user_id=16).count() == 1
    detect([row(16, BASE + 15_000, "login")])  # between the first and second failure
    assert not Anomaly.objects.filter(user_id=16).exists()
    messages = [json.loads(value) for value in topic_values(detect.topic, expected=2)]
    assert [("anomaly_type" in m, "withdrawn" in m) for m in messages] == [(True, False), (False, True)]


def test_a_late_success_that_splits_a_run_in_two_leaves_two_anomalies(detect: Detector) -> None:
    logins = [row(17, BASE + i * 10_000, "login", success=i == 3) for i in range(7)]  # F F F S F F F
    detect([r for i, r in enumerate(logins) if i != 3])
    assert Anomaly.objects.filter(user_id=17).count() == 1, "without the success: one run of six"
    detect([logins[3]])
    runs = sorted(Anomaly.objects.filter(user_id=17).values_list("episode_start_ms", "episode_end_ms"))
    assert runs == [(BASE, BASE + 20_000), (BASE + 40_000, BASE + 60_000)]


def test_a_location_anomaly_unpublished_by_a_failed_publish_goes_out_on_the_retry(detect: Detector) -> None:
    home, away = row(18, BASE, "login", location="Berlin, DE"), row(18, BASE + 5_000, "login", location="Lagos, NG")
    unreachable = Producer({"bootstrap.servers": "127.0.0.1:1", "message.timeout.ms": 1000, "log_level": 0})
    signals_store_batch(topic="test", rows=[home, away])
    with pytest.raises(AnomalyPublishError):
        anomalies_detect_batch(rows=[home, away], rules=DEFAULT_RULES, windows=detect.store, producer=unreachable)
    assert Anomaly.objects.get(user_id=18).published_at is None
    detect([home, away], store=False)  # the task's retry
    assert Anomaly.objects.get(user_id=18).published_at is not None
    assert len(topic_values(detect.topic, expected=1)) == 1


def test_a_very_long_location_is_a_place_like_any_other(detect: Detector) -> None:
    far = "Somewhere, " + "very " * 200 + "far"
    detect([row(19, BASE, "login", location="Berlin, DE"), row(19, BASE + 5_000, "login", location=far)])
    (anomaly,) = Anomaly.objects.filter(user_id=19)
    assert anomaly.episode_key.startswith("Somewhere, very") and len(anomaly.episode_key) <= 255


def test_a_rule_turned_off_raises_nothing(detect: Detector) -> None:
    rules = {**DEFAULT_RULES}
    rules["high_frequency_login"] = replace(rules["high_frequency_login"], enabled=False)
    rows = [row(9, BASE + i * 1_000, "login") for i in range(12)]
    signals_store_batch(topic="test", rows=rows)
    anomalies_detect_batch(rows=rows, rules=rules, windows=detect.store, producer=shared_producer())
    assert not Anomaly.objects.exists()


def test_windows_expire_and_stay_trimmed(detect: Detector) -> None:
    rows = [row(10, BASE + i * 30_000, "login") for i in range(100)]  # 50 minutes of logins
    detect.run(rows, size=10)
    key = detect.store.key(10, "login")
    oldest = float(detect.client.zrange(key, 0, 0, withscores=True)[0][1])
    keep = 2 * 900_000 + 1 + settings.DETECT_LATENESS_SECONDS * 1000
    assert BASE + 99 * 30_000 - keep <= oldest < BASE + 99 * 30_000 - keep + 30_000
    ttl = detect.client.pttl(key)
    assert keep < ttl <= keep + IDLE_GRACE_MS, "expiry leaves an hour's grace for a stopped pipeline"


def test_the_places_cache_takes_more_places_than_lua_can_unpack(detect: Detector) -> None:
    """A batch may carry thousands of new places for one user (BATCH_SIZE goes to 100,000):
    the scripts hand them to Redis in chunks."""
    places = {f"Town {i}, XX": WindowEntry(BASE + i, f"e{i}") for i in range(9_000)}
    detect.store.places_remember({21: places})
    later = {(21, place): WindowEntry(entry.timestamp + 1, entry.event_id) for place, entry in places.items()}
    assert detect.store.places_known(later) == set(later)
    earlier = {(21, place): WindowEntry(entry.timestamp - 1, entry.event_id) for place, entry in places.items()}
    assert detect.store.places_known(earlier) == set(), "an earlier login than the cached one is news"
