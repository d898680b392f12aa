"""Detection windows on a Redis Cluster (anomalies_app/windows.py; docs/architecture.md,
"Detection").

The pure parts first: how keys, users and batches map to slots, and when the bridge has a
batch analysed again. Then, on a local cluster of three masters (tests/redis_cluster.py)
with real PostgreSQL and Kafka: a node restarted empty loses only its own users' windows,
and a batch analysed into windows lost before it was stored is caught by the windows'
generation. Last, the real bridge and worker with an injection run and a node restarted
mid-run.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis
from django.conf import settings
from redis.cluster import RedisCluster
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

from anomalies_app.models import Anomaly
from anomalies_app.rules import DEFAULT_RULES
from anomalies_app.selectors import MuteBook, signal_history, signals_exist
from anomalies_app.services import anomalies_detect_batch
from anomalies_app.windows import (
    WindowsGeneration,
    WindowStore,
    by_slot,
    detect_redis,
    generation_key,
    slot_tags,
    user_slot,
)
from bridge.consumer import UNCHECKED, _windows_lost_since
from emitter.models import InjectionRun
from eventpipeline.kafka import shared_producer, topics_ensure
from signals_app.models import Signal
from signals_app.services import signals_store_batch
from tests.conftest import Pipeline, wait_for
from tests.redis_cluster import LocalRedisCluster, slot_ranges
from tests.test_detect_service import BASE, row
from tests.test_detection_pipeline import emit_injected, published_anomalies, verify_detection

# --- pure: slots --------------------------------------------------------------------------


def test_every_slot_has_an_epoch_tag_that_lands_in_it() -> None:
    tags = slot_tags()
    assert len(tags) == REDIS_CLUSTER_HASH_SLOTS
    assert all(key_slot(f"dw:{{{tag}}}:epoch".encode()) == slot for slot, tag in enumerate(tags))


def test_all_keys_of_a_user_share_the_users_slot() -> None:
    # Only its key names: the client never connects.
    store = WindowStore(redis.Redis(), prefix="detection-windows", load_history=signal_history, history_exists=bool)
    for user_id in (0, 7, 123_456, 10**12):
        keys = [store.key(user_id, kind) for kind in ("login", "purchase", "api_failure")]
        keys += [f"detection-windows:{{{user_id}}}:places", f"detection-windows:{{{user_id}}}:filled:e:1"]
        assert {key_slot(key.encode()) for key in keys} == {user_slot(user_id)}


def test_a_batch_splits_by_slot_keeping_each_slots_order() -> None:
    windows = [(user_id, kind) for user_id in range(1000) for kind in ("login", "purchase")]
    groups = by_slot(windows, lambda window: window[0])
    assert sorted(window for group in groups.values() for window in group) == sorted(windows)
    for slot, group in groups.items():
        assert {user_slot(user_id) for user_id, _ in group} == {slot}
        assert group == sorted(group), "each slot's windows in the batch's order"


def test_the_cluster_is_split_in_three_ranges_of_slots() -> None:
    ranges = slot_ranges(3)
    assert [len(r) for r in ranges] == [5461, 5462, 5461]
    assert [slot for r in ranges for slot in r] == list(range(REDIS_CLUSTER_HASH_SLOTS))


# --- pure: when the bridge has a batch analysed again --------------------------------------


@pytest.mark.parametrize(
    ("result", "generation", "again"),
    [
        ({"analysed": 5, "windows": "a"}, "a", False),
        ({"analysed": 5, "windows": "a"}, "b", True),  # renamed: windows lost since
        ({"analysed": 5, "windows": "a"}, None, True),  # the results' Redis lost it too
        ({"analysed": 5}, "b", False),  # windows on the results' Redis: nothing to compare
        ({"failed": 5}, "b", False),  # a task that gave up is not run again for this
        ({"analysed": 5, "windows": "a"}, UNCHECKED, False),
        (None, "b", False),
    ],
)
def test_a_detect_result_is_stale_only_when_the_generation_it_read_changed(
    result: Any, generation: str | None, again: bool
) -> None:
    assert _windows_lost_since(result, generation) is again


# --- on a real cluster ----------------------------------------------------------------------


class ClusterDetector:
    """Detection as a detect worker runs it with DETECT_REDIS_URL naming the cluster."""

    def __init__(self, cluster: LocalRedisCluster) -> None:
        self.cluster = cluster
        self.prefix = f"test-dw-{uuid.uuid4().hex[:8]}"
        client = detect_redis(cluster.url)
        assert isinstance(client, RedisCluster), "the server says it is a cluster node"
        self.client = client
        results = redis.Redis.from_url(settings.CELERY_RESULT_BACKEND)
        self.generations = WindowsGeneration(results, generation_key(self.prefix))
        self.store = WindowStore(
            client,
            prefix=self.prefix,
            load_history=signal_history,
            history_exists=signals_exist,
            generations=self.generations,
        )
        self.mutes = MuteBook(refresh_seconds=0)

    def __call__(self, rows: list[list[Any]], *, store: bool = True) -> str | None:
        """Analyse a batch (stored first, unless `store` is false); the generation it read."""
        if store:
            signals_store_batch(topic="test", rows=rows)
        result = anomalies_detect_batch(
            rows=rows, rules=DEFAULT_RULES, windows=self.store, mutes=self.mutes, producer=shared_producer()
        )
        return result.windows_generation

    def node_of(self, user_id: int) -> int:
        slot = user_slot(user_id)
        return next(index for index, slots in enumerate(slot_ranges(self.cluster.masters)) if slot in slots)

    def cleanup(self) -> None:
        self.generations.client.delete(self.generations.key)
        keys = list(self.client.scan_iter(f"{self.prefix}:*"))
        if keys:
            self.client.delete(*keys)


@pytest.fixture
def on_cluster(
    redis_cluster: LocalRedisCluster, django_db_serialized_rollback: None, transactional_db: Any, settings: Any
) -> Iterator[ClusterDetector]:
    settings.ANOMALIES_TOPIC = f"test-anomalies-{uuid.uuid4().hex[:10]}"
    topics_ensure([settings.ANOMALIES_TOPIC], partitions=1)
    detector = ClusterDetector(redis_cluster)
    yield detector
    detector.cleanup()


def users_on_other_nodes(detect: ClusterDetector, count: int) -> tuple[list[int], list[int]]:
    """`count` users whose keys are on node 1, and `count` on the other nodes."""
    on_node: list[int] = []
    elsewhere: list[int] = []
    user_id = 1000
    while len(on_node) < count or len(elsewhere) < count:
        user_id += 1
        group = on_node if detect.node_of(user_id) == 1 else elsewhere
        if len(group) < count:
            group.append(user_id)
    return on_node, elsewhere


def test_a_node_restarted_empty_loses_only_its_users_and_they_are_filled_in_again(
    on_cluster: ClusterDetector,
) -> None:
    detect = on_cluster
    on_node, elsewhere = users_on_other_nodes(detect, 3)
    # Six logins per user in 30 s, then six more after the restart: 12 in a minute each.
    first = [row(user, BASE + i * 5_000, "login") for user in on_node + elsewhere for i in range(6)]
    then = [row(user, BASE + 30_000 + i * 5_000, "login") for user in on_node + elsewhere for i in range(6)]
    detect(first)
    assert not Anomaly.objects.exists()
    epochs_before = dict(detect.store.epochs())
    detect.cluster.restart_empty(1)
    detect(then)

    bursts = Anomaly.objects.filter(anomaly_type="high_frequency_login")
    assert sorted(bursts.values_list("user_id", "evidence__value")) == sorted(
        (user, 12) for user in on_node + elsewhere
    )
    epochs_after = detect.store.epochs()
    renewed = {slot for slot, epoch in epochs_after.items() if epoch != epochs_before[slot]}
    assert renewed == set(slot_ranges(3)[1]), "a new epoch for the restarted node's slots only"
    (new_epoch,) = {epochs_after[slot].name for slot in renewed}
    filled = [key.decode() for key in detect.client.scan_iter(f"{detect.prefix}:*:filled:{new_epoch}")]
    assert sorted(int(key.split("{")[1].split("}")[0]) for key in filled) == sorted(on_node), (
        "only the restarted node's users were filled in again from PostgreSQL"
    )


def test_a_batch_analysed_into_windows_lost_before_it_was_stored_is_analysed_again(
    on_cluster: ClusterDetector,
) -> None:
    """The case a cluster adds: the node loses the windows but the task results live on,
    so the bridge would take the batch's success for good. The generation it read tells
    the bridge it must run again."""
    detect = on_cluster
    (user,), _ = users_on_other_nodes(detect, 1)
    detect([row(99, BASE - 600_000, "click")])  # PostgreSQL holds events: a new epoch fills in
    early = [row(user, BASE + i * 5_000, "login") for i in range(6)]
    late = [row(user, BASE + 30_000 + i * 5_000, "login") for i in range(6)]

    read = detect(early, store=False)  # analysed; its store task has not run yet
    assert read is not None and not _windows_lost_since({"windows": read}, detect.generations.current())
    detect.cluster.restart_empty(detect.node_of(user))
    detect(late)  # fills the user in from PostgreSQL, which lacks the early logins
    assert not Anomaly.objects.exists(), "six logins seen: the early six were lost with the node"

    assert _windows_lost_since({"windows": read}, detect.generations.current()), "the bridge runs it again"
    detect(early)  # the store task ran, then detect again as the bridge hands it over
    (burst,) = Anomaly.objects.all()
    assert (burst.user_id, burst.anomaly_type, burst.evidence["value"]) == (user, "high_frequency_login", 12)


# --- the real pipeline ----------------------------------------------------------------------


def test_an_injected_run_with_a_cluster_node_restarted_empty_is_detected_exactly(
    pipeline: Pipeline, redis_cluster: LocalRedisCluster
) -> None:
    """DETECT_REDIS_URL names a node of the cluster; one master is killed and started
    again empty in the middle of the run, while the store worker is stopped: batches are
    analysed into windows the node loses, and later batches fill their users in from
    PostgreSQL before those batches are stored (the case the windows' generation is for).
    Every rule at precision and recall 1.0, every event stored once, every anomaly
    published once."""
    pipeline.env["DETECT_REDIS_URL"] = redis_cluster.url
    store = pipeline.start_worker("store-worker", queues=[pipeline.queue])
    pipeline.start_worker("detect-worker", queues=[pipeline.detect_queue], WORKER_METRICS_PORT="0")
    # Enough batches in flight that the bridge keeps handing them over while storing stops.
    pipeline.start_bridge(BRIDGE_MAX_IN_FLIGHT="1000")
    emitter = emit_injected(pipeline, count=30_000, rate=3000, seed=7)
    wait_for(lambda: Signal.objects.count() > 3000, timeout=120, what="the run to be under way")
    os.killpg(store.pid, signal.SIGSTOP)
    try:
        stored_at_restart = Signal.objects.count()
        # Detection runs on while storing stops, into the windows the node will lose.
        wait_for(lambda: Anomaly.objects.count() > 20, timeout=120, what="detection under way")
        redis_cluster.restart_empty(2)
        time.sleep(3)  # detection after the restart fills users in from PostgreSQL
    finally:
        os.killpg(store.pid, signal.SIGCONT)
    assert emitter.wait(timeout=300) == 0, pipeline.log_tail()
    run = InjectionRun.objects.get()
    assert stored_at_restart < run.events, "the restart came too late to test anything"

    verify_detection(pipeline)
    wait_for(pipeline.all_committed, timeout=60, what="offsets committed up to the end")
    assert Signal.objects.count() == run.events, "none lost (and the unique index stores none twice)"
    injected = run.scenarios.exclude(anomaly_type="").count()
    assert published_anomalies(pipeline, injected) == sorted(Anomaly.objects.values_list("id", flat=True))

    # The restarted node's slots began a new epoch; the others kept theirs.
    client = RedisCluster.from_url(redis_cluster.url)
    names = client.mget_nonatomic([f"{pipeline.key_prefix}:{{{tag}}}:epoch" for tag in slot_tags()])
    restarted = {names[slot] for slot in slot_ranges(3)[2]}
    kept = {names[slot] for slot in (*slot_ranges(3)[0], *slot_ranges(3)[1])}
    assert None not in restarted | kept and not restarted & kept
    again = sum(log.read_text().count("windows were lost since") for log in pipeline.logs.glob("bridge.*.log"))
    assert again > 0, "batches analysed before the restart and stored after it were analysed again"
