"""The bridge notices that the result backend lost its data (a Redis restart or flush) and
hands every unfinished batch over again at once, not after BRIDGE_REDISPATCH_SECONDS. On
the suite's real Redis, with a consumer that records what it is asked (no Kafka needed).
The whole story on real processes, Redis killed mid-run: test_pipeline.py, test_chaos.py."""

from __future__ import annotations

import uuid

from bridge.consumer import Bridge, InFlightBatch
from signals_app.tasks import store_signals
from tests.test_bridge_rebalance import TOPIC, RecordingConsumer, bridge_with


def recording_dispatches(bridge: Bridge) -> list[tuple[str, str]]:
    """Batch id and task of every hand-over the bridge makes from now on (none reaches Celery)."""
    dispatched: list[tuple[str, str]] = []

    def dispatch(batch: InFlightBatch, name: str) -> bool:
        dispatched.append((batch.batch_id, name))
        return True

    bridge.dispatch = dispatch  # type: ignore[method-assign]
    return dispatched


def handed_over(bridge: Bridge, batch_id: str) -> None:
    """A batch read and handed to Celery just now, under task ids nobody will answer."""
    batch = InFlightBatch(batch_id, TOPIC, rows=[], received_at=0.0, offsets={0: (0, 9)})
    for handover in batch.handovers.values():
        handover.task_id, handover.attempts, handover.dispatched_at = uuid.uuid4().hex, 1, bridge.clock()
    bridge.in_flight[batch_id] = batch
    bridge.tracker.add(batch_id, {(TOPIC, 0): 9})


def test_a_lost_mark_hands_every_unfinished_batch_over_again_at_once() -> None:
    bridge = bridge_with(RecordingConsumer())
    dispatched = recording_dispatches(bridge)
    handed_over(bridge, "b1")
    client = store_signals.backend.client  # type: ignore[attr-defined]
    try:
        bridge.collect_results()  # makes the mark
        assert client.get(bridge.results_mark) is not None
        bridge.collect_results()  # sees it: nothing is due yet (60 s)
        assert dispatched == []

        client.delete(bridge.results_mark)  # what a Redis restart does to it
        bridge.collect_results()

        assert sorted(dispatched) == [("b1", "detect"), ("b1", "store")]
        assert client.get(bridge.results_mark) is not None, "marked again, for the next loss"
        dispatched.clear()
        bridge.collect_results()
        assert dispatched == [], "once per loss"
    finally:
        client.delete(bridge.results_mark)


def test_a_mark_never_seen_is_not_a_loss() -> None:
    """The first read finds no mark (the bridge has just started): nothing is handed over."""
    bridge = bridge_with(RecordingConsumer())
    dispatched = recording_dispatches(bridge)
    handed_over(bridge, "b1")
    try:
        bridge.collect_results()
        assert dispatched == []
    finally:
        store_signals.backend.client.delete(bridge.results_mark)  # type: ignore[attr-defined]
