"""The bridge's dead letters, kept beside its loop instead of in it (docs/design.md,
"Dead letters").

Keeping a batch's refused records means a write to PostgreSQL and records on the DLQ topic
that Kafka must confirm: a round trip to each. The loop does not wait for them. It hands
them to `DeadLetterKeeper`, whose thread writes what every batch read meanwhile has handed
it in one go, and goes on reading; the batch stays in flight, its offsets uncommitted, until
its future says the dead letters are kept. Waiting in the loop took 65% of the bridge's
time while it caught up under `make chaos`, where one record in a hundred is refused
(docs/performance.md, "Dead letters beside the loop").
"""

from __future__ import annotations

import logging
import queue
import threading
from concurrent.futures import Future

from confluent_kafka import Producer
from django.db import DatabaseError, InterfaceError, connection

from signals_app.services import DeadLetterRecord, dead_letters_keep

logger = logging.getLogger(__name__)


def dead_letters_write(dead_letters: list[DeadLetterRecord], topic: str, producer: Producer) -> None:
    """On the keeper's thread, with a database connection of its own."""
    try:
        dead_letters_keep(dead_letters=dead_letters, topic=topic, producer=producer)
    except (DatabaseError, InterfaceError):
        connection.close_if_unusable_or_obsolete()
        raise


class DeadLetterKeeper:
    """One thread that keeps dead letters: the table first, then the DLQ topic
    (`dead_letters_keep`). Whatever was handed over while a write ran goes in the next
    write together, so the round trips do not grow with the number of batches.

    The thread is a daemon: a write that PostgreSQL does not answer (a network partition)
    must not keep the process from exiting. What it had not kept then is not committed,
    and the partitions' next owner reads those records again."""

    def __init__(self, topic: str, producer: Producer) -> None:
        self.topic = topic
        self.producer = producer
        self.handed: queue.SimpleQueue[tuple[list[DeadLetterRecord], Future[None]] | None] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self.run, name="dead-letters", daemon=True)
        self.thread.start()

    def submit(self, dead_letters: list[DeadLetterRecord]) -> Future[None]:
        """Keep these; the future ends with None once both places have them, or with the
        error of the write that failed (the caller hands them over again)."""
        kept: Future[None] = Future()
        self.handed.put((dead_letters, kept))
        return kept

    def close(self) -> None:
        """Stop the thread once it has kept what was handed over before."""
        self.handed.put(None)

    def run(self) -> None:
        while (first := self.handed.get()) is not None:
            writes = [first]
            stopping = False
            while True:
                try:
                    more = self.handed.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    stopping = True
                    break
                writes.append(more)
            records = [record for dead_letters, _ in writes for record in dead_letters]
            try:
                dead_letters_write(records, self.topic, self.producer)
            except BaseException as error:
                # Every future ends, whatever happened: one left pending would hold its
                # batch, and the bridge paused, for good.
                for _, kept in writes:
                    kept.set_exception(error)
                if not isinstance(error, Exception):
                    raise
            else:
                for _, kept in writes:
                    kept.set_result(None)
            if stopping:
                return
