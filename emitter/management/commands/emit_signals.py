"""`manage.py emit_signals`: synthetic load, at a steady rate, onto the signals topic."""

from __future__ import annotations

import argparse
import logging
import signal
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

import redis
from confluent_kafka import KafkaError, KafkaException, Message, Producer
from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser
from prometheus_client import start_http_server

from anomalies_app.rules import (
    HIGH_FREQUENCY_LOGIN,
    RAPID_SUCCESSIVE_PURCHASES,
    UNUSUAL_TIME_ACTIVITY,
    RuleSettings,
    fewest_to_break,
)
from anomalies_app.selectors import rule_settings_list
from emitter.generator import TYPE_MIX, SignalGenerator, encode
from emitter.models import InjectionRun
from emitter.pacing import DEFAULT_BURST_MULTIPLIER, Pace, TimedBurst
from emitter.scenarios import ScenarioWeaver, clean_start_ms
from emitter.selectors import EmitterControl, emitter_control_get
from emitter.services import injection_run_finish, injection_run_start
from eventpipeline.kafka import producer_config, topics_ensure
from eventpipeline.metrics import SIGNAL_PRODUCTION_LATENCY, SIGNALS_PRODUCED

logger = logging.getLogger(__name__)

# At most this many events per step, so that a loop running behind (rate above what the
# machine can do) still serves delivery reports, progress and signals in between.
MAX_EVENTS_PER_STEP = 2000
# Observing every delivery's latency costs the emitter's top rate; one delivery in this
# many is enough to draw the latency curve (docs/performance.md, "Emitter latency sampling").
LATENCY_SAMPLE_EVERY = 10
PROGRESS_EVERY_SECONDS = 1.0
FLUSH_TIMEOUT_SECONDS = 30.0


def positive_float(raw: str) -> float:
    value = float(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {raw}")
    return value


def positive_int(raw: str) -> int:
    value = int(raw)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {raw}")
    return value


def allowed(rule: RuleSettings) -> tuple[int, int]:
    """The most events a counting rule lets through in its window, and the window in ms."""
    return fewest_to_break(rule) - 1, rule.window_seconds * 1000


class Command(BaseCommand):
    help = (
        "Emit synthetic user-behaviour signals to Kafka at a steady rate, until --count events, "
        "--duration seconds, or SIGINT/SIGTERM. --seed with --start-ms makes a run fully reproducible."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--rate",
            type=positive_float,
            default=float(settings.SIGNALS_PER_SECOND),
            help="Events per second (default SIGNALS_PER_SECOND, %(default)s).",
        )
        stop = parser.add_mutually_exclusive_group()
        stop.add_argument("--count", type=positive_int, help="Stop after this many events.")
        stop.add_argument("--duration", type=positive_float, help="Stop after this many seconds.")
        parser.add_argument(
            "--users",
            type=positive_int,
            default=10_000,
            help="Distinct user ids (default 10000).",
        )
        parser.add_argument(
            "--burst",
            action=argparse.BooleanOptionalAction,
            default=settings.BURST_MODE,
            help="Burst mode: emit --burst-multiplier times the rate (default BURST_MODE).",
        )
        parser.add_argument(
            "--burst-multiplier", type=positive_float, default=DEFAULT_BURST_MULTIPLIER, help="Default %(default)g."
        )
        parser.add_argument(
            "--follow-control",
            action=argparse.BooleanOptionalAction,
            default=None,
            help="Follow POST /emitter/configure and /emitter/burst while running (default: yes, "
            "except with --inject-anomalies, whose run must stay as recorded).",
        )
        parser.add_argument("--seed", type=int, help="Random seed; the same seed gives the same events.")
        parser.add_argument(
            "--start-ms",
            type=int,
            help="Event time of the first event, ms since the epoch (default now). "
            "Later events follow a virtual clock at the rate, so with --seed the run is fully reproducible.",
        )
        parser.add_argument(
            "--topic",
            default=settings.SIGNALS_TOPIC,
            help="Default SIGNALS_TOPIC (%(default)s).",
        )
        parser.add_argument(
            "--metrics-port",
            type=int,
            default=settings.EMITTER_METRICS_PORT,
            help="Serve Prometheus metrics on this port, 0 to disable (default EMITTER_METRICS_PORT, %(default)s).",
        )
        parser.add_argument(
            "--inject-anomalies",
            action="store_true",
            help="Clean background traffic (it breaks no rule) with known anomalies of every rule, and near "
            "misses, woven in; recorded for `manage.py verify_detection`. Needs --count or --duration.",
        )
        parser.add_argument(
            "--inject-every",
            type=positive_int,
            default=100,
            help="With --inject-anomalies: one scenario per this many background events (default %(default)s).",
        )
        parser.add_argument(
            "--no-progress",
            action="store_true",
            help="No progress line, only the summary.",
        )

    def on_signal(self, signum: int, frame: FrameType | None) -> None:
        self.shutdown = True

    def handle(self, *args: Any, **options: Any) -> None:
        self.shutdown = False
        signal.signal(signal.SIGTERM, self.on_signal)
        signal.signal(signal.SIGINT, self.on_signal)
        self.setup(options)

        while not self.shutdown:
            now = time.monotonic()
            self.produce_due(now)
            self.control_follow(now)
            self.producer.poll(0)
            self.metrics_publish()
            self.progress_show(now)
            if self.pace.finished(now, self.sent):
                break
            self.tick_wait()
        elapsed = time.monotonic() - self.pace.start

        self.injection_finish()
        undelivered = self.drain()
        self.summary_report(elapsed, undelivered)

    def setup(self, options: dict[str, Any]) -> None:
        self.topic: str = options["topic"]
        self.show_progress = self.stdout.isatty() and not options["no_progress"]
        try:
            topics_ensure([self.topic], partitions=settings.TOPIC_PARTITIONS)
        except KafkaException as error:
            raise CommandError(
                f"cannot create topic {self.topic} on Kafka at {settings.KAFKA_BOOTSTRAP_SERVERS}: {error}"
            ) from error
        if options["metrics_port"]:
            try:
                start_http_server(options["metrics_port"], addr=settings.BIND_ADDRESS)
            except OSError as error:
                problem = f"cannot serve metrics on port {options['metrics_port']}: {error}"
                if options["count"] is None and options["duration"] is None:
                    raise CommandError(problem) from error  # an endless emitter must be watched
                # A run of a set length next to a running pipeline (whose emitter has the
                # port) is a one-off: its summary says what it sent.
                self.report(f"{problem}; emitting without metrics (--metrics-port picks another)", problem=True)
        self.producer = Producer(producer_config())

        self.sent = 0
        self.delivered_by_type = dict.fromkeys(TYPE_MIX.values, 0)
        self.published_by_type = dict.fromkeys(TYPE_MIX.values, 0)
        self.delivery_errors = 0
        self.last_delivery_error: KafkaError | None = None
        self.delivery_callbacks = {signal_type: self.delivery_callback(signal_type) for signal_type in TYPE_MIX.values}

        start_ms = options["start_ms"] if options["start_ms"] is not None else int(time.time() * 1000)
        self.injection: InjectionRun | None = None
        self.generator: SignalGenerator | ScenarioWeaver
        if options["inject_anomalies"]:
            self.generator = self.weaver_setup(options, start_ms)
        else:
            self.generator = SignalGenerator(
                seed=options["seed"], users=options["users"], start_ms=start_ms, rate=options["rate"]
            )
        self.pace = Pace(
            start=time.monotonic(),
            rate=options["rate"],
            burst=options["burst"],
            burst_multiplier=options["burst_multiplier"],
            count=options["count"],
            duration=options["duration"],
        )
        self.generator.rate_change(self.pace.rate_at(self.pace.start))  # burst mode spaces the event times too
        follow = options["follow_control"]
        self.follow_control = not options["inject_anomalies"] if follow is None else follow
        self.control_version = 0
        self.control_unreachable = False
        if self.follow_control:
            self.control_version = self.control_read().version
        self.control_due = 0.0
        self.progress_at = self.pace.start
        self.progress_sent = 0

    def weaver_setup(self, options: dict[str, Any], start_ms: int) -> ScenarioWeaver:
        """Clean traffic for the rules as they are now, starting out of the quiet hours,
        on the users of a new injection run."""
        rate = options["rate"] * (options["burst_multiplier"] if options["burst"] else 1)
        if options["count"]:
            span_ms = int(options["count"] / rate * 1000)
        elif options["duration"]:
            span_ms = int(options["duration"] * 1000)
        else:
            raise CommandError("--inject-anomalies needs --count or --duration: the run must end to be verified")
        rules = rule_settings_list()
        quiet = rules[UNUSUAL_TIME_ACTIVITY]
        if options["start_ms"] is None:
            start_ms = clean_start_ms(quiet, start_ms, span_ms)
        self.injection = injection_run_start(seed=options["seed"])
        background = SignalGenerator(
            seed=options["seed"],
            users=options["users"],
            start_ms=start_ms,
            rate=options["rate"],
            clean=True,
            caps={
                "login": allowed(rules[HIGH_FREQUENCY_LOGIN]),
                "purchase": allowed(rules[RAPID_SUCCESSIVE_PURCHASES]),
            },
            first_user_id=self.injection.first_user_id,
        )
        return ScenarioWeaver(
            background=background,
            quiet_rule=quiet,
            first_user_id=self.injection.first_user_id + options["users"],
            every=options["inject_every"],
            seed=options["seed"],
        )

    def injection_finish(self) -> None:
        """Send the scenario events still waiting, then record what was injected."""
        if self.injection is None or not isinstance(self.generator, ScenarioWeaver):
            return
        for event in self.generator.leftover():
            key, value = encode(event)
            self.produce(key, value, event["type"])
        undelivered = self.producer.flush(FLUSH_TIMEOUT_SECONDS)
        if undelivered or self.delivery_errors:
            return  # summary_report says what went wrong; the run stays unfinished
        scenarios = self.generator.scenarios
        injection_run_finish(run=self.injection, scenarios=scenarios, events=self.sent)
        anomalies = sum(1 for scenario in scenarios if scenario.anomaly_type)
        self.report(
            f"injection run {self.injection.pk}: {anomalies} anomalies and {len(scenarios) - anomalies} near misses "
            f"woven into clean traffic of users {self.injection.first_user_id} and up; "
            f"check with: python manage.py verify_detection --run {self.injection.pk}"
        )

    def report(self, text: str, *, problem: bool = False) -> None:
        """Tell the operator: a line on stdout (stderr for a problem) or, with
        LOG_FORMAT=json, a log record, so that the emitter too writes only JSON lines."""
        if settings.LOG_FORMAT == "json":
            logger.log(logging.WARNING if problem else logging.INFO, text)
        else:
            (self.stderr if problem else self.stdout).write(text)

    def summary_report(self, elapsed: float, undelivered: int) -> None:
        if self.show_progress:
            self.stdout.write("")
        self.report(
            f"emitted {self.sent} events in {elapsed:.1f} s ({self.sent / elapsed:.1f} events/s), "
            f"{self.delivery_errors} delivery errors"
        )
        if self.delivery_errors or undelivered:
            reason = f": last error {self.last_delivery_error}" if self.last_delivery_error else ""
            raise CommandError(
                f"{self.delivery_errors + undelivered} of {self.sent} events were not delivered to "
                f"{self.topic} ({undelivered} still queued after {FLUSH_TIMEOUT_SECONDS:.0f} s){reason}"
            )

    def control_read(self) -> EmitterControl:
        """The control as stored; as last seen if Redis cannot be reached (the emitter
        goes on at its rate: its job is Kafka, not Redis)."""
        try:
            control = emitter_control_get()
        except redis.RedisError as error:
            if not self.control_unreachable:
                self.report(f"cannot read the emitter control from Redis, going on as before: {error}", problem=True)
            self.control_unreachable = True
            return EmitterControl(self.control_version, None, None, None, None)
        self.control_unreachable = False
        return control

    def control_follow(self, now: float) -> None:
        """Every EMITTER_CONTROL_POLL_SECONDS: go on at the pace of a new request, from `now`."""
        if not self.follow_control or now < self.control_due:
            return
        self.control_due = now + settings.EMITTER_CONTROL_POLL_SECONDS
        control = self.control_read()
        if control.version == self.control_version:
            return
        self.control_version = control.version
        timed_burst = self.timed_burst_of(control)
        self.pace.change(
            now,
            rate=control.signals_per_second,
            burst=control.burst_mode,
            timed_burst=timed_burst,
            sent=self.sent,
        )
        self.generator.rate_change(self.pace.rate_at(now))
        burst = f", burst x{timed_burst.multiplier:g} for {timed_burst.until - now:.0f} s" if timed_burst else ""
        self.pace_report(f"{self.pace.rate_at(now):g} events/s{burst}")

    def timed_burst_of(self, control: EmitterControl) -> TimedBurst | None:
        """The control's timed burst, if it is not over, with its end moved from the wall
        clock (another process set it) onto the monotonic clock of the schedule."""
        if control.burst_until is None:
            return None
        left = control.burst_until - time.time()
        if left <= 0:
            return None
        return TimedBurst(control.burst_multiplier or self.pace.burst_multiplier, time.monotonic() + left)

    def pace_report(self, pace: str) -> None:
        """Say the pace taken and the control version it follows: what an operator, and a
        test, reads to know that the emitter follows a request."""
        self.report(f"following the control: {pace} (version {self.control_version})")

    def produce_due(self, now: float) -> None:
        ended = self.pace.burst_end(now, self.sent)
        if ended is not None:
            # The events of the burst keep its spacing in event time; those after it, the steady rate's.
            self.produce_up_to(self.pace.due(ended))
            self.generator.rate_change(self.pace.rate_at(ended))
            self.pace_report(f"{self.pace.rate_at(ended):g} events/s, the burst is over")
        self.produce_up_to(self.pace.due(now))

    def produce_up_to(self, due: int) -> None:
        pending = min(due - self.sent, MAX_EVENTS_PER_STEP)
        for _ in range(pending):
            event = self.generator.next()
            key, value = encode(event)
            if not self.produce(key, value, event["type"]):
                return

    def produce(self, key: bytes, value: bytes, signal_type: str) -> bool:
        """Hand one event to the producer; False if a shutdown came while its queue was full."""
        while True:
            try:
                self.producer.produce(self.topic, value, key, on_delivery=self.delivery_callbacks[signal_type])
                self.sent += 1
                return True
            except BufferError:
                # librdkafka's queue is full: Kafka takes less than the asked rate.
                if self.shutdown:
                    return False
                self.producer.poll(0.05)

    def delivery_callback(self, signal_type: str) -> Callable[[KafkaError | None, Message], None]:
        """A delivery report handler per type, so the report needs no decoding to be counted.

        It runs for every message, inside poll()/flush(), so it only counts; the counts
        reach Prometheus in batches from metrics_publish().
        """
        delivered_by_type = self.delivered_by_type

        def on_delivery(error: KafkaError | None, message: Message) -> None:
            if error is not None:
                self.delivery_errors += 1
                self.last_delivery_error = error
                return
            delivered_by_type[signal_type] += 1
            if delivered_by_type[signal_type] % LATENCY_SAMPLE_EVERY == 0:
                latency = message.latency()
                if latency is not None:
                    SIGNAL_PRODUCTION_LATENCY.observe(latency)

        return on_delivery

    def metrics_publish(self) -> None:
        for signal_type, delivered in self.delivered_by_type.items():
            published = self.published_by_type[signal_type]
            if delivered > published:
                SIGNALS_PRODUCED.labels(type=signal_type).inc(delivered - published)
                self.published_by_type[signal_type] = delivered

    def progress_show(self, now: float) -> None:
        if not self.show_progress or now - self.progress_at < PROGRESS_EVERY_SECONDS:
            return
        current_rate = (self.sent - self.progress_sent) / (now - self.progress_at)
        self.stdout.write(
            f"\rsent {self.sent:,}  {current_rate:,.0f} events/s (asked {self.pace.rate_at(now):,.0f})  "
            f"delivered {sum(self.delivered_by_type.values()):,}  errors {self.delivery_errors:,}   ",
            ending="",
        )
        self.stdout.flush()
        self.progress_at = now
        self.progress_sent = self.sent

    def tick_wait(self) -> None:
        """Sleep until the schedule has something to do (Pace.wake_at)."""
        now = time.monotonic()
        time.sleep(max(0.0, self.pace.wake_at(now, self.sent) - now))

    def drain(self) -> int:
        """Wait (bounded) for the queued events to be delivered; return how many were not."""
        undelivered = self.producer.flush(FLUSH_TIMEOUT_SECONDS)
        self.metrics_publish()
        return undelivered
