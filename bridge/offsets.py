"""Which Kafka offsets may be committed: a pure watermark tracker, no I/O.

Batches finish out of order (several Celery workers), but a Kafka offset may only be
committed once every record below it is stored. Per partition the tracker keeps the
batches in consumption order; the commit watermark moves past a batch only when it and
every batch before it on that partition are done.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable

TopicPartition = tuple[str, int]


class OffsetTracker:
    def __init__(self) -> None:
        # Per partition: (batch id, highest offset of that batch on the partition), oldest first.
        self._pending: dict[TopicPartition, deque[tuple[Hashable, int]]] = {}
        self._done: set[Hashable] = set()
        self._watermarks: dict[TopicPartition, int] = {}
        self._committed: dict[TopicPartition, int] = {}
        # Batches whose every record is below the watermarks, oldest first, until committed.
        self._covered: list[Hashable] = []

    def add(self, batch_id: Hashable, high_offsets: dict[TopicPartition, int]) -> None:
        """Register a batch: for each partition it covers, its highest offset."""
        for partition, offset in high_offsets.items():
            self._pending.setdefault(partition, deque()).append((batch_id, offset))

    def complete(self, batch_id: Hashable) -> None:
        self._done.add(batch_id)
        passed: dict[Hashable, None] = {}  # a dict keeps the order they were passed in
        for partition, queue in self._pending.items():
            while queue and queue[0][0] in self._done:
                passed_id, offset = queue.popleft()
                passed[passed_id] = None
                self._watermarks[partition] = offset + 1
        still_pending = {batch for queue in self._pending.values() for batch, _ in queue}
        self._covered += [batch for batch in passed if batch not in still_pending]
        self._done &= still_pending

    def committable(self) -> dict[TopicPartition, int]:
        """Next offset to commit per partition, for partitions that moved since `committed`."""
        return {p: o for p, o in self._watermarks.items() if self._committed.get(p) != o}

    def covered(self) -> list[Hashable]:
        """The batches that committing `committable()` finishes: every record of theirs is below it."""
        return list(self._covered)

    def committed(self, offsets: dict[TopicPartition, int]) -> None:
        self._committed.update(offsets)
        self._covered.clear()

    def forget(self, partitions: list[TopicPartition]) -> set[Hashable]:
        """Drop partitions this consumer no longer owns (rebalance); their batches will be
        consumed again by the new owner, and storing is idempotent.

        Returns the batches left with no partition to wait for: whether they finish or not
        now moves no watermark. A batch that also holds a partition still owned stays:
        that partition's commit still waits for it."""
        # Batches finished but not committed belong to the next owner now.
        self._covered.clear()
        dropped: set[Hashable] = set()
        for partition in partitions:
            dropped.update(batch for batch, _ in self._pending.pop(partition, ()))
            self._watermarks.pop(partition, None)
            self._committed.pop(partition, None)
        still_pending = {batch for queue in self._pending.values() for batch, _ in queue}
        self._done &= still_pending
        return dropped - still_pending
