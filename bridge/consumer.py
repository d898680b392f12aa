"""The Kafka -> Celery bridge: a chain of small steps with the commit last.

One turn of the loop (`step`):
1. `collect_results`: ask the result backend, in one round trip, which dispatched
   batches are stored and analysed; re-dispatch the tasks that failed or were lost.
2. `commit`: commit, per partition, the offset below which everything is stored and
   analysed.
3. `apply_backpressure`: pause all partitions while too many batches are outstanding, or
   while dead letters have waited over a second to be kept.
4. `consume_batch`: read up to BATCH_SIZE records (or what arrived within
   BATCH_TIMEOUT_MS), validate each, hand the invalid ones to the dead-letter keeper
   (bridge/dead_letters.py: table and DLQ topic, written beside the loop) and the valid
   ones to Celery as two tasks: one stores them (queue STORE_QUEUE), one runs detection on
   them (DETECT_QUEUE). With DLQ_MAX_RATIO set, stop (`stopped_by`) once too many of the
   last minute's records were refused.
A record's offset is committed only after its batch is both stored and analysed and its
dead letters kept, so a crash anywhere replays records, and idempotent storing and
detection turn the replay into no-ops.
"""

from __future__ import annotations

import itertools
import logging
import secrets
import threading
import time
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from celery.result import AsyncResult, denied_join_result
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    Producer,
    TopicPartition,
)
from django.conf import settings
from django.db import DatabaseError, InterfaceError

from anomalies_app.tasks import detect_anomalies
from anomalies_app.windows import generation_key
from bridge.dead_letters import DeadLetterKeeper
from bridge.dlq_limit import DeadLetterWindow
from bridge.offsets import OffsetTracker
from bridge.status import BridgeState
from eventpipeline.metrics import (
    BATCH_SIZE_CURRENT,
    BRIDGE_IN_FLIGHT,
    BRIDGE_PAUSED,
    END_TO_END_LATENCY,
    EVENTS_PROCESSED,
    PROCESSING_LATENCY,
)
from signals_app.messages import Limits, Rejection, SignalRow, decode_signal
from signals_app.services import DeadLetterPublishError, DeadLetterRecord
from signals_app.tasks import store_signals

logger = logging.getLogger(__name__)

# How long a stopping bridge waits for its consumer to close (`close_within`).
CLOSE_TIMEOUT_SECONDS = 3.0
# How long a bridge back from a gap longer than its session polls before it commits
# (`back_from_away`): librdkafka checks max.poll.interval.ms every 0.5 s and heartbeats
# every tenth of the session.
AWAY_CHECK_SECONDS = 2.0
# How long dead letters may wait to be kept before the bridge stops reading until they are:
# longer than a write takes when PostgreSQL and Kafka answer (`apply_backpressure`).
DEAD_LETTER_QUICK_S = 1.0
# How often a bridge waiting for PostgreSQL to take dead letters says so.
DEAD_LETTER_WAIT_LOG_S = 10.0
# How long after a failed write a batch's dead letters are handed over again.
DEAD_LETTER_RETRY_S = 1.0
# How long the bridge's mark on the result backend lives; it is made again every half of it.
RESULTS_MARK_TTL_S = 3600


# What happens to every batch: the Celery task that does it, by name.
TASKS = {"store": store_signals, "detect": detect_anomalies}


@dataclass
class Handover:
    """One task of a batch: when it was last handed to Celery, as which task id."""

    dispatched_at: float = 0.0
    task_id: str | None = None
    attempts: int = 0


@dataclass
class InFlightBatch:
    batch_id: str
    topic: str
    rows: list[SignalRow]
    received_at: float
    # Per partition, the first and last offset of the batch's records (dead letters included).
    offsets: dict[int, tuple[int, int]] = field(default_factory=dict)
    # Kafka's timestamp of each row's record (ms since the epoch), where the record has one.
    record_times_ms: list[int] = field(default_factory=list)
    handovers: dict[str, Handover] = field(default_factory=lambda: {name: Handover() for name in TASKS})
    # The batch's refused records, until the keeper has them in the table and on the DLQ
    # topic (bridge/dead_letters.py): then `dead_letters_kept` is done without an error.
    dead_letters: list[DeadLetterRecord] = field(default_factory=list)
    dead_letters_kept: Future[None] | None = None
    # When the dead letters were last handed over (first: `received_at`).
    dead_letters_handed_at: float = 0.0


@dataclass
class BridgeOptions:
    """What the bridge loop is told at start: its topics, batching, flow control and the
    limits messages are judged by."""

    topic: str
    dlq_topic: str
    batch_size: int
    batch_timeout_s: float
    max_in_flight: int
    redispatch_after_s: float
    limits: Limits
    drain_timeout_s: float = 30.0
    # None: dead letters never stop the bridge (docs/design.md, "Dead letters").
    dlq_max_ratio: float | None = None
    dlq_min_records: int = 100
    # The consumer's group.instance.id, for the line that says it was fenced ("": dynamic).
    instance_id: str = ""
    # KAFKA_SESSION_TIMEOUT_MS: a bridge that did not run for longer may have been taken
    # out of its group meanwhile (`step`).
    session_timeout_s: float = 6.0


class Bridge:
    def __init__(
        self,
        *,
        options: BridgeOptions,
        consumer: Consumer,
        dlq_producer: Producer,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.options = options
        self.consumer = consumer
        self.dlq_producer = dlq_producer
        self.clock = clock
        self.tracker = OffsetTracker()
        # Batch ids that a person can read and grep: a prefix of this bridge's own, then a count.
        prefix = secrets.token_hex(4)
        self.batch_ids = (f"{prefix}-{number}" for number in itertools.count(1))
        # A key of this bridge's own on the result backend, read with the task states: when
        # it is gone, that Redis lost its data (a restart or a flush), and with it the queued
        # tasks and their results, so every unfinished batch is handed over again at once
        # instead of after BRIDGE_REDISPATCH_SECONDS (`collect_results`).
        self.results_mark = f"eventpipeline:bridge:{prefix}:results"
        self.results_mark_seen = False
        self.results_marked_at: float | None = None
        self.in_flight: dict[str, InFlightBatch] = {}
        # Done batches whose offsets are not committed yet: their records' Kafka times, for
        # end_to_end_latency_seconds at the commit that covers them.
        self.awaiting_commit: dict[str, list[int]] = {}
        self.paused = False
        self.shutdown = False
        # Why the bridge stopped itself, if it did: the process then exits non-zero.
        self.stopped_by: str | None = None
        self.dead_letter_window = (
            None
            if options.dlq_max_ratio is None
            else DeadLetterWindow(max_ratio=options.dlq_max_ratio, min_records=options.dlq_min_records)
        )
        # Replaced, never changed in place: the status thread reads it (bridge/status.py).
        self.assigned: frozenset[tuple[str, int]] = frozenset()
        # A fatal error from librdkafka (e.g. fenced by a bridge with the same
        # BRIDGE_INSTANCE_ID): the consumer is unusable, the process must exit non-zero.
        self.fatal_error: str | None = None
        # False when the consumer did not close within CLOSE_TIMEOUT_SECONDS.
        self.closed = False
        # When the last poll of Kafka returned: a longer gap than the session before a
        # commit means the bridge was away (`back_from_away`).
        self.last_polled_at: float | None = None
        # When a poll that was itself held past the session began (`_polled`).
        self.held_since: float | None = None
        # Dead letters are written from a thread of their own, several batches' at once;
        # the loop goes on reading meanwhile (`hand_dead_letters`).
        self.keeper = DeadLetterKeeper(options.dlq_topic, dlq_producer)
        # When the bridge last said it was waiting for them, and the last failed write it told of.
        self.dead_letters_told_at = 0.0
        self.dead_letters_failure: BaseException | None = None

    # --- lifecycle ------------------------------------------------------------------
    def subscribe(self) -> None:
        self.consumer.subscribe(
            [self.options.topic], on_assign=self._on_assign, on_revoke=self._on_revoke, on_lost=self._on_lost
        )

    def run(self) -> None:
        self.subscribe()
        while not self.shutdown:
            self.step()
        self.drain()

    def step(self) -> None:
        self.collect_results()
        self.commit()
        self.apply_backpressure()
        if self.paused:
            self._poll_paused(0.05)
            return
        self.consume_batch()

    def _polled(self, started: float, timeout: float) -> None:
        """After each poll of Kafka: a poll that took longer than its timeout and a session
        was itself held (the process stopped inside it), and what it returned came before
        librdkafka learnt what the group did meanwhile."""
        now = self.clock()
        if now - started > timeout + self.options.session_timeout_s:
            self.held_since = started
        self.last_polled_at = now

    def back_from_away(self) -> None:
        """Before a commit: after a gap since the last poll longer than the session (the
        process was stopped, or starved), the group may have given this bridge's partitions
        to another bridge, which has committed past them since. So the bridge first polls
        for a few heartbeats, and librdkafka tells it (`_on_lost`); it does not commit over
        its successor. Checked just before the commit, since a stop can come anywhere in a
        turn. Apache Kafka would refuse such a commit anyway (its generation is old); Tansu
        0.6 refused those seen in `make chaos` by member id, but does not check the
        generation."""
        now = self.clock()
        held, self.held_since = self.held_since, None
        if held is None and (
            self.last_polled_at is None or now - self.last_polled_at <= self.options.session_timeout_s
        ):
            return
        # Checked: a commit made by a rebalance callback during the wait below goes ahead.
        previous = held if held is not None else self.last_polled_at
        assert previous is not None
        self.last_polled_at = now
        logger.warning(
            "this bridge did not poll Kafka for %.1f s (stopped or starved; the session is %.0f s): asking the "
            "group whether it still has its partitions before committing",
            now - previous,
            self.options.session_timeout_s,
        )
        self.idle(AWAY_CHECK_SECONDS)

    def state(self) -> BridgeState:
        """For the status thread: plain reads, no call to Kafka."""
        return BridgeState(
            in_flight=len(self.in_flight),
            paused=self.paused,
            assigned=sorted(partition for topic, partition in self.assigned if topic == self.options.topic),
        )

    def drain(self) -> None:
        """On shutdown: stop reading, wait (bounded) for outstanding batches, commit, close.
        The wait polls with every partition paused, so the group keeps this member (and
        its partitions) until the last commit; after a fatal error there is nothing to
        wait for, Kafka took the partitions already."""
        deadline = self.clock() + self.options.drain_timeout_s
        if self.fatal_error is None:
            self.pause_all()
            while self.in_flight and self.clock() < deadline:
                self.collect_results()
                self.commit()
                self._poll_paused(0.05)
        if self.in_flight:
            logger.warning("stopping with %d batches not confirmed; they will be consumed again", len(self.in_flight))
        if self.fatal_error is None:
            self.commit(asynchronous=False)
        self.keeper.close()
        self.closed = close_within(self.consumer, CLOSE_TIMEOUT_SECONDS)

    # --- steps ----------------------------------------------------------------------
    def consume_batch(self) -> None:
        started = self.clock()
        messages = self.consumer.consume(num_messages=self.options.batch_size, timeout=self.options.batch_timeout_s)
        self._polled(started, self.options.batch_timeout_s)
        if not messages:
            return
        received_at = self.clock()
        now_ms = int(time.time() * 1000)
        rows: list[SignalRow] = []
        record_times_ms: list[int] = []
        dead_letters: list[DeadLetterRecord] = []
        offsets: dict[int, tuple[int, int]] = {}
        for message in messages:
            error = message.error()
            if error is not None:
                self.on_kafka_error(error)
                continue
            topic, partition, offset = _coordinates(message)
            offsets[partition] = (offsets.get(partition, (offset, offset))[0], offset)
            try:
                decoded = decode_signal(
                    message.value(),
                    topic=topic,
                    partition=partition,
                    offset=offset,
                    now_ms=now_ms,
                    limits=self.options.limits,
                )
            except Exception as error:
                logger.exception("record %s[%d]@%d could not be validated", topic, partition, offset)
                decoded = Rejection(f"could not be validated: {type(error).__name__}: {error}")
            if isinstance(decoded, Rejection):
                dead_letters.append(self._dead_letter(message, decoded.reason))
            else:
                rows.append(decoded)
                kind, record_ms = message.timestamp()
                if kind != TIMESTAMP_NOT_AVAILABLE:
                    record_times_ms.append(record_ms)
        batch = InFlightBatch(
            batch_id=next(self.batch_ids),
            topic=self.options.topic,
            rows=rows,
            received_at=received_at,
            offsets=offsets,
            record_times_ms=record_times_ms,
            # A batch of dead letters alone has no task to wait for.
            handovers={name: Handover() for name in TASKS} if rows else {},
            dead_letters=dead_letters,
        )
        self.tracker.add(batch.batch_id, {(batch.topic, partition): last for partition, (_, last) in offsets.items()})
        EVENTS_PROCESSED.labels(status="accepted").inc(len(rows))
        batch_log(batch, dead_letters=len(dead_letters))
        if rows or dead_letters:
            self.in_flight[batch.batch_id] = batch
            if dead_letters:
                self.hand_dead_letters(batch)
            for name in batch.handovers:
                # The broker refused the first: the second waits for a later turn too.
                if not self.dispatch(batch, name):
                    break
        else:
            self.tracker.complete(batch.batch_id)
        self.judge_dead_letters(accepted=len(rows), dead_letters=dead_letters)

    def judge_dead_letters(self, *, accepted: int, dead_letters: list[DeadLetterRecord]) -> None:
        """Stop on a poison flood, with DLQ_MAX_RATIO set. The batch is handed over by now
        (its dead letters to the keeper, its events to Celery), so stopping drains it,
        commits it once done, and nothing read after it."""
        window = self.dead_letter_window
        if window is None:
            return
        now = self.clock()
        window.add(now=now, accepted=accepted, reasons=(dead_letter.reason for dead_letter in dead_letters))
        if self.stopped_by is not None or not window.exceeded(now=now):
            return
        refused, read = window.counts(now=now)
        # repr: one line, whatever a reason holds.
        reasons = "; ".join(repr(reason[:200]) for reason in window.last_reasons())
        self.stopped_by = (
            f"dead-letter flood on {self.options.topic}: {refused} of the {read} records read in the last "
            f"{window.window_s} s were refused ({refused / read:.0%}, DLQ_MAX_RATIO is {window.max_ratio:g}); "
            f"stopping the bridge. Last reasons: {reasons}"
        )
        logger.critical("%s", self.stopped_by)
        self.shutdown = True

    def hand_dead_letters(self, batch: InFlightBatch) -> None:
        """Hand the batch's dead letters to the keeper, which writes them beside the loop:
        the batch is not done, nor its offsets committed, until they are kept
        (`follow_dead_letters`)."""
        batch.dead_letters_kept = self.keeper.submit(batch.dead_letters)
        batch.dead_letters_handed_at = self.clock()

    def follow_dead_letters(self, batch: InFlightBatch, now: float) -> None:
        """Once the keeper has the batch's dead letters in the table and on the DLQ topic,
        they are no longer the batch's to wait for. A write that failed (PostgreSQL or
        Kafka away) is handed over again after DEAD_LETTER_RETRY_S, for as long as it
        takes. Meanwhile the batch stays in flight; once dead letters have waited
        DEAD_LETTER_QUICK_S, the bridge stops reading until they are kept
        (`apply_backpressure`)."""
        kept = batch.dead_letters_kept
        if kept is None:
            if now - batch.dead_letters_handed_at >= DEAD_LETTER_RETRY_S:
                self.hand_dead_letters(batch)
            return
        if not kept.done():
            if not self.keeper.thread.is_alive():
                # Its last write ended its futures; nothing handed over since would ever end.
                raise RuntimeError("the dead-letter keeper's thread has stopped; the bridge cannot keep dead letters")
            return
        error = kept.exception()
        if error is None:
            EVENTS_PROCESSED.labels(status="dead_letter").inc(len(batch.dead_letters))
            batch.dead_letters, batch.dead_letters_kept = [], None
            return
        if not isinstance(error, (DatabaseError, InterfaceError, KafkaException, DeadLetterPublishError)):
            raise error
        # Batches written together fail together: one line for them, per write.
        if error is not self.dead_letters_failure:
            self.dead_letters_failure = error
            logger.error("cannot keep %d dead letters, retrying: %s", self.dead_letters_waiting(now)[0], error)
        batch.dead_letters_kept = None
        batch.dead_letters_handed_at = now  # again DEAD_LETTER_RETRY_S after the failure

    def dispatch(self, batch: InFlightBatch, name: str) -> bool:
        """Hand one task of the batch to Celery. False if the broker did not take it (it
        is tried again on a later turn)."""
        handover = batch.handovers[name]
        handover.attempts += 1
        handover.dispatched_at = self.clock()
        try:
            # Plain tuples (orjson writes them without a callback per row), and a short
            # argsrepr: Celery would otherwise repr the whole batch for Flower
            # (docs/performance.md, "Handing a batch to Celery").
            # denied_join_result: the bridge reads the results of all outstanding tasks
            # straight from Redis with one MGET per turn (_task_states), instead of having
            # Celery subscribe to each task's result channel and unsubscribe again
            # (docs/performance.md, "Reading task results").
            with denied_join_result():
                result = TASKS[name].apply_async(  # type: ignore[call-arg]  # argsrepr: not in the stubs
                    args=(batch.topic, list(map(tuple, batch.rows))),
                    kwargs={"batch_id": batch.batch_id},
                    argsrepr=f"({batch.topic!r}, <{len(batch.rows)} events>)",
                )
        except Exception as error:  # noqa: BLE001 - any broker failure: try again on a later turn
            logger.error(
                "cannot hand batch %s to Celery for %s (attempt %d): %s", batch.batch_id, name, handover.attempts, error
            )
            handover.task_id = None
            return False
        handover.task_id = result.id
        BATCH_SIZE_CURRENT.set(len(batch.rows))
        BRIDGE_IN_FLIGHT.set(len(self.in_flight))
        return True

    def collect_results(self) -> None:
        """A batch is done when every one of its tasks reports success in the same read:
        after a Redis restart loses results, every task not yet committed is run again,
        so detection never misses a batch that was analysed into windows Redis then lost.
        Where the windows live apart from the results (a Redis Cluster), the same read
        has the windows' generation: a detect task that read another one analysed into
        windows that were lost since, so it runs again (anomalies_app/windows.py)."""
        if not self.in_flight:
            return
        now = self.clock()
        for batch in self.in_flight.values():
            if batch.dead_letters:
                self.follow_dead_letters(batch, now)
        records, batches, longest = self.dead_letters_waiting(now)
        if longest >= DEAD_LETTER_WAIT_LOG_S and now - self.dead_letters_told_at >= DEAD_LETTER_WAIT_LOG_S:
            logger.warning(
                "still waiting for PostgreSQL to keep %d dead letters of %d batches, for %.0f s",
                records,
                batches,
                longest,
            )
            self.dead_letters_told_at = now
        handovers = [
            (batch, name, handover) for batch in self.in_flight.values() for name, handover in batch.handovers.items()
        ]
        states, results, generation, marked = self._task_states([handover.task_id for _, _, handover in handovers])
        results_lost = self._results_lost(marked)
        if results_lost:
            logger.warning(
                "the result backend lost its data (a restart or a flush): handing %d unfinished batches over again",
                len(self.in_flight),
            )
        succeeded: dict[str, int] = {}
        # Once the broker refuses a task, the others wait for a later turn: each refusal
        # can take seconds, and a turn must end well within max.poll.interval.ms.
        broker_refused = False
        for (batch, name, handover), state, result in zip(handovers, states, results, strict=True):
            if state == "SUCCESS" and _windows_lost_since(result, generation):
                if broker_refused:
                    continue
                logger.warning("batch %s: the detection windows were lost since it was analysed; again", batch.batch_id)
                broker_refused = not self.dispatch(batch, name)
            elif state == "SUCCESS":
                succeeded[batch.batch_id] = succeeded.get(batch.batch_id, 0) + 1
            elif broker_refused:
                continue
            elif results_lost:
                broker_refused = not self.dispatch(batch, name)
            elif state == "FAILURE" or handover.task_id is None:
                if now - handover.dispatched_at >= min(2 ** min(handover.attempts, 5), self.options.redispatch_after_s):
                    outcome = state or "not handed over"
                    logger.warning("batch %s: %s %s; dispatching again", batch.batch_id, name, outcome)
                    broker_refused = not self.dispatch(batch, name)
            elif now - handover.dispatched_at >= self.options.redispatch_after_s * 2 ** min(handover.attempts - 1, 4):
                # Probably lost with its broker; perhaps only queued behind stalled workers,
                # so each further copy waits twice as long (running twice is harmless).
                logger.warning(
                    "batch %s: %s has no result after %.0f s (state %s); dispatching again",
                    batch.batch_id,
                    name,
                    now - handover.dispatched_at,
                    state,
                )
                broker_refused = not self.dispatch(batch, name)
        for batch in list(self.in_flight.values()):
            # A batch of dead letters alone has no task: it is done once they are kept.
            if succeeded.get(batch.batch_id, 0) == len(batch.handovers) and not batch.dead_letters:
                self._finish(batch, now)
        BRIDGE_IN_FLIGHT.set(len(self.in_flight))

    def commit(self, *, asynchronous: bool = True) -> None:
        self.back_from_away()
        offsets = self.tracker.committable()
        if not offsets:
            return
        partitions = [TopicPartition(topic, partition, offset) for (topic, partition), offset in offsets.items()]
        try:
            self.consumer.commit(offsets=partitions, asynchronous=asynchronous)  # type: ignore[call-overload]
        except Exception as error:  # noqa: BLE001 - a failed commit only means a replay later
            logger.warning("offset commit failed, will retry: %s", error)
            return
        batch_ids = [str(batch_id) for batch_id in self.tracker.covered()]
        self._observe_end_to_end(batch_ids)
        positions = sorted((partition, offset) for (_, partition), offset in offsets.items())
        logger.info(
            "committed %s %s, done with batches %s",
            self.options.topic,
            " ".join(f"[{partition}]@{offset}" for partition, offset in positions),
            ", ".join(batch_ids) or "(none)",
            extra={
                "batch_ids": batch_ids,
                "topic": self.options.topic,
                "committed": [{"partition": partition, "offset": offset} for partition, offset in positions],
            },
        )
        self.tracker.committed(offsets)

    def on_commit(self, error: KafkaError | None, partitions: list[TopicPartition]) -> None:
        """librdkafka's answer to an asynchronous commit, served by a later poll. A refused
        one (e.g. UNKNOWN_MEMBER_ID: the group took this bridge out while it was stopped, and
        another owns the partitions now) is not tried again: the new owner reads those
        records again, and storing and detecting them twice changes nothing. It is logged,
        so that the "committed" line before it is not the last word."""
        refused = [p for p in partitions if error is not None or p.error is not None]
        if not refused:
            return
        logger.warning(
            "Kafka refused the commit of %s %s: %s; the partitions' next owner reads those records again",
            self.options.topic,
            " ".join(f"[{p.partition}]@{p.offset}" for p in refused),
            error or refused[0].error,
        )

    def dead_letters_waiting(self, now: float) -> tuple[int, int, float]:
        """Dead letters not kept yet: how many, of how many batches, and how long the
        longest has waited."""
        waiting = [batch for batch in self.in_flight.values() if batch.dead_letters]
        longest = max((now - batch.received_at for batch in waiting), default=0.0)
        return sum(len(batch.dead_letters) for batch in waiting), len(waiting), longest

    def apply_backpressure(self) -> None:
        """Pause every partition while BRIDGE_MAX_IN_FLIGHT batches are outstanding, or
        while dead letters have waited over DEAD_LETTER_QUICK_S to be kept: PostgreSQL
        or Kafka is away, and batches read meanwhile would only pile up copies for the
        workers to run once it is back (docs/design.md, "Consumer group")."""
        _, batches, longest = self.dead_letters_waiting(self.clock())
        stalled = longest > DEAD_LETTER_QUICK_S
        saturated = stalled or len(self.in_flight) >= self.options.max_in_flight
        if saturated == self.paused:
            return
        assignment = self.consumer.assignment()
        if saturated:
            self.consumer.pause(assignment)
            if stalled:
                logger.info("dead letters of %d batches wait to be kept, for %.1f s: pausing", batches, longest)
            else:
                logger.info("workers are behind (%d batches in flight): pausing", len(self.in_flight))
        else:
            self.consumer.resume(assignment)
        self.paused = saturated
        BRIDGE_PAUSED.set(1 if saturated else 0)

    def on_kafka_error(self, error: KafkaError) -> None:
        """A consumer error (from a message or librdkafka's error_cb). Most are transient
        and librdkafka retries them itself; a fatal one leaves the consumer unusable, so
        the bridge stops and exits non-zero."""
        if error.code() == KafkaError._PARTITION_EOF:
            return
        if not (error.fatal() or error.code() == KafkaError._FATAL):
            logger.warning("consumer error: %s", error)
            return
        if self.fatal_error is not None:
            return
        if error.code() in (KafkaError.FENCED_INSTANCE_ID, KafkaError._FENCED):
            self.fatal_error = (
                f"another bridge joined consumer group with this one's group.instance.id "
                f"({self.options.instance_id!r}) and Kafka fenced this one out: give each bridge its own "
                f"BRIDGE_INSTANCE_ID ({error.str()})"
            )
        else:
            self.fatal_error = f"fatal Kafka error, the consumer cannot go on: {error.str()}"
        logger.critical("%s", self.fatal_error)
        self.stopped_by = self.fatal_error
        self.shutdown = True

    def pause_all(self) -> None:
        """Stop reading every partition, those assigned later too (`_on_assign`)."""
        if not self.paused:
            self.consumer.pause(self.consumer.assignment())
            self.paused = True

    def idle(self, seconds: float) -> None:
        """Wait without reading, but polling: librdkafka answers the group's rebalances
        and counts the bridge alive only while it polls (max.poll.interval.ms)."""
        was_paused = self.paused
        self.pause_all()
        deadline = self.clock() + seconds
        try:
            while not self.shutdown and (remaining := deadline - self.clock()) > 0:
                self._poll_paused(min(remaining, 0.1))
        finally:
            if not was_paused:
                self.consumer.resume(self.consumer.assignment())
                self.paused = False

    # --- helpers --------------------------------------------------------------------
    def _poll_paused(self, timeout: float) -> None:
        """Serve the group protocol while paused. Should a record come all the same (a
        partition assigned meanwhile), rewind to it rather than drop it."""
        started = self.clock()
        message = self.consumer.poll(timeout)
        self._polled(started, timeout)
        if message is None:
            return
        error = message.error()
        if error is not None:
            self.on_kafka_error(error)
            return
        topic, partition, offset = _coordinates(message)
        self.consumer.seek(TopicPartition(topic, partition, offset))

    def _finish(self, batch: InFlightBatch, now: float) -> None:
        del self.in_flight[batch.batch_id]
        self.tracker.complete(batch.batch_id)
        PROCESSING_LATENCY.observe(now - batch.received_at)
        self.awaiting_commit[batch.batch_id] = batch.record_times_ms

    def _observe_end_to_end(self, batch_ids: list[str]) -> None:
        """Kafka record time to the commit that covers it: the record is then stored,
        analysed, and never read again. Per record, so that p50/p95/p99 are those of events,
        not of batches. A producer clock ahead of ours would make an age below 0: that
        counts as 0."""
        committed_ms = time.time() * 1000
        for batch_id in batch_ids:
            record_times_ms = self.awaiting_commit.pop(batch_id, ())
            END_TO_END_LATENCY.observe_many([max(0.0, committed_ms - at_ms) / 1000 for at_ms in record_times_ms])

    def _results_lost(self, marked: bool | None) -> bool:
        """Whether the result backend lost this bridge's mark since the last read that saw
        it (`marked`: whether the read found it; None: it could not be read); makes the mark
        again when it is missing or old. A mark made while nothing was in flight is gone unseen
        if Redis restarts then: the batches handed over since are sent once more, which is
        harmless."""
        if marked is None:
            return False
        lost = not marked and self.results_mark_seen
        self.results_mark_seen = marked
        now = self.clock()
        if not marked or self.results_marked_at is None or now - self.results_marked_at > RESULTS_MARK_TTL_S / 2:
            client = getattr(store_signals.backend, "client", None)
            if client is not None:
                try:
                    client.set(self.results_mark, "1", ex=RESULTS_MARK_TTL_S)
                    self.results_marked_at = now
                except Exception as error:  # noqa: BLE001 - the backend may be restarting; mark it next turn
                    logger.warning("cannot mark the result backend: %s", error)
        return lost

    def _task_states(self, task_ids: list[str | None]) -> tuple[list[str | None], list[Any], str | None, bool | None]:
        """States and results of many tasks, the windows' generation and whether this
        bridge's mark is there, in one round trip to the result backend (so all four are
        of the moment the states were read). The generation is UNCHECKED, and the mark
        None, if this backend cannot give them."""
        backend: Any = store_signals.backend
        known = [task_id for task_id in task_ids if task_id]
        nothing: list[Any] = [None] * len(task_ids)
        if not known:
            return nothing, nothing, UNCHECKED, None
        try:
            if hasattr(backend, "client"):
                keys = [backend.get_key_for_task(task_id) for task_id in known]
                *raw, generation, mark = backend.client.mget(
                    [*keys, generation_key(settings.DETECT_KEY_PREFIX), self.results_mark]
                )
                metas = {
                    task_id: backend.decode_result(value) if value else {}
                    for task_id, value in zip(known, raw, strict=True)
                }
                windows = generation.decode() if generation is not None else None
                marked: bool | None = mark is not None
            else:
                metas = {task_id: {"status": AsyncResult(task_id, backend=backend).state} for task_id in known}
                windows, marked = UNCHECKED, None
        except Exception as error:  # noqa: BLE001 - the backend may be restarting; ask again next turn
            logger.warning("cannot read task results: %s", error)
            return ["PENDING" if task_id else None for task_id in task_ids], nothing, UNCHECKED, None
        states = [metas[task_id].get("status") if task_id else None for task_id in task_ids]
        results = [metas[task_id].get("result") if task_id else None for task_id in task_ids]
        return states, results, windows, marked

    def _dead_letter(self, message: Message, reason: str) -> DeadLetterRecord:
        topic, partition, offset = _coordinates(message)
        return DeadLetterRecord(
            raw=message.value() or b"",
            key=message.key(),
            source_topic=topic,
            source_partition=partition,
            source_offset=offset,
            reason=reason,
        )

    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        logger.info("assigned %s", [(p.topic, p.partition) for p in partitions])
        self.assigned = self.assigned | {(p.topic, p.partition) for p in partitions}
        # Assign first: pausing partitions not yet assigned does nothing. And say which it
        # is either way: librdkafka keeps a partition's pause across its unassignment, so a
        # partition paused as it was lost comes back paused, and would never be read.
        consumer.assign(partitions)
        if self.paused:
            consumer.pause(partitions)
        else:
            consumer.resume(partitions)

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        revoked = [(p.topic, p.partition) for p in partitions]
        # Called from within a poll, by the group itself: this bridge is still the owner
        # until it returns, so its commit below needs no check (`back_from_away`, which
        # would poll again from inside this poll).
        self.last_polled_at, self.held_since = self.clock(), None
        self.assigned = self.assigned - set(revoked)
        self.commit(asynchronous=False)
        left = self._let_go(revoked)
        logger.info("revoked %s; %d batches in flight on them left to the partitions' next owner", revoked, len(left))

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        """The group took these partitions while this bridge was away (stopped past
        max.poll.interval.ms, or its session expired): another bridge may own them and have
        committed past them, so nothing is committed for them; their batches in flight are
        let go as on a revoke."""
        lost = [(p.topic, p.partition) for p in partitions]
        self.assigned = self.assigned - set(lost)
        left = self._let_go(lost)
        logger.warning(
            "lost %s: the group gave them to another bridge while this one was away; %d batches in flight on "
            "them left to the partitions' next owner, nothing committed for them",
            lost,
            len(left),
        )

    def _let_go(self, partitions: list[tuple[str, int]]) -> set[Hashable]:
        """The batches in flight on these partitions alone, after a revoke or a loss: their
        records are read again by the partitions' next owner (perhaps this bridge again), so
        they are let go rather than waited for, handed over again or counted against
        BRIDGE_MAX_IN_FLIGHT. Their tasks may still run; storing and detection are
        idempotent. What is done but not committed is read again too, and measured then."""
        left = self.tracker.forget(partitions)
        for batch_id in left:
            self.in_flight.pop(str(batch_id), None)
        BRIDGE_IN_FLIGHT.set(len(self.in_flight))
        self.awaiting_commit.clear()
        return left


def close_within(consumer: Consumer, seconds: float) -> bool:
    """Close the consumer, waiting at most `seconds`. True if it closed.

    librdkafka's close leaves the group, and a leave waits behind a pending JoinGroup,
    which the coordinator may hold up to the rebalance timeout (max.poll.interval.ms):
    a SIGTERM during a join would then take that long. A static member does not leave
    (KIP-345), and a dynamic one the group forgets after its session timeout, so the
    bridge gives up on the close instead (docs/design.md, "Consumer group")."""
    closer = threading.Thread(target=consumer.close, name="kafka-close", daemon=True)
    closer.start()
    closer.join(seconds)
    if closer.is_alive():
        logger.warning("the Kafka consumer did not close within %.0f s (a group join was pending); leaving", seconds)
        return False
    return True


# The windows' generation could not be read with the results: nothing is compared.
UNCHECKED = "<unchecked>"


def _windows_lost_since(result: Any, generation: str | None) -> bool:
    """Whether a detect task's result names a windows' generation other than the current
    one (docs/architecture.md, "Detection"). Results without one (windows on the Redis
    of the results, or a task that gave up) are never stale."""
    if generation == UNCHECKED or not isinstance(result, dict) or "windows" not in result:
        return False
    return bool(result["windows"] != generation)


def batch_log(batch: InFlightBatch, *, dead_letters: int) -> None:
    """The batch as read from Kafka, under the id its tasks and the commit log carry
    (docs/operations.md, "Following a batch")."""
    ranges = sorted(batch.offsets.items())
    logger.info(
        "batch %s: %d events, %d dead letters from %s %s%s",
        batch.batch_id,
        len(batch.rows),
        dead_letters,
        batch.topic,
        " ".join(f"[{partition}]@{first}-{last}" for partition, (first, last) in ranges),
        "; to store and detect" if batch.rows else "",
        extra={
            "batch_id": batch.batch_id,
            "topic": batch.topic,
            "events": len(batch.rows),
            "dead_letters": dead_letters,
            "offsets": [{"partition": partition, "first": first, "last": last} for partition, (first, last) in ranges],
        },
    )


def _coordinates(message: Message) -> tuple[str, int, int]:
    """Topic, partition and offset of a record the broker delivered (never None then)."""
    topic, partition, offset = message.topic(), message.partition(), message.offset()
    assert topic is not None and partition is not None and offset is not None
    return topic, partition, offset
