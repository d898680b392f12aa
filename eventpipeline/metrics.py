"""Every Prometheus metric of eventpipeline, defined once (names from docs/design.md).

Each process exposes the ones it updates: the emitter on 8011, the bridge on 8012, the
Celery worker on 8013 (prefork children write to PROMETHEUS_MULTIPROC_DIR, the worker's
main process serves the sum), the api at /prometheus/metrics (its gunicorn workers
likewise, when PROMETHEUS_MULTIPROC_DIR is set).
"""

from __future__ import annotations

import bisect
import logging
import math
import threading
from collections.abc import Callable, Iterable, Iterator

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry
from prometheus_client.utils import floatToGoString

logger = logging.getLogger(__name__)

# emitter
SIGNALS_PRODUCED = Counter("signals_produced", "Signals handed to Kafka by the emitter.", ["type"])
SIGNAL_PRODUCTION_LATENCY = Histogram(
    "signal_production_latency_seconds",
    "Time from producing a signal to Kafka acknowledging it.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5),
)

# bridge and worker
EVENTS_PROCESSED = Counter(
    "events_processed",
    "Events by outcome: accepted/dead_letter (bridge), stored/duplicate/dead_letter (worker).",
    ["status"],
)
PROCESSING_LATENCY = Histogram(
    "processing_latency_seconds",
    "Bridge: Kafka receipt to stored batch. Worker: time to store one batch.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
BATCH_SIZE_CURRENT = Gauge(
    "batch_size_current", "Events in the batch most recently dispatched or stored.", multiprocess_mode="livemax"
)
BRIDGE_IN_FLIGHT = Gauge(
    "bridge_batches_in_flight",
    "Batches read and not yet done: not yet stored and analysed, or their dead letters not yet kept.",
)
BRIDGE_PAUSED = Gauge(
    "bridge_paused", "1 while the bridge pauses consuming: workers fall behind, or dead letters wait to be kept."
)
BRIDGE_CONSUMER_LAG = Gauge(
    "bridge_consumer_lag",
    "Records of an assigned partition after the bridge's committed offset (log end less committed).",
    ["topic", "partition"],
)


class BatchHistogram(Collector):
    """A histogram observed a batch of amounts at a time, exposed as prometheus_client's
    Histogram exposes one (buckets, count, sum). Histogram.observe takes one amount per
    call, through two locks and a walk of the bounds: per record in the bridge, several
    microseconds an event (docs/performance.md, "The end-to-end histogram")."""

    def __init__(
        self, name: str, documentation: str, buckets: Iterable[float], registry: CollectorRegistry | None = REGISTRY
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.bounds = (*sorted(float(bound) for bound in buckets if bound != math.inf), math.inf)
        self.counts = [0] * len(self.bounds)
        self.sum = 0.0
        self.lock = threading.Lock()
        if registry is not None:
            registry.register(self)

    def observe_many(self, amounts: Iterable[float]) -> None:
        counts = [0] * len(self.bounds)
        total = 0.0
        bounds, bucket_of = self.bounds, bisect.bisect_left  # an amount counts in the first bound >= it
        for amount in amounts:
            counts[bucket_of(bounds, amount)] += 1
            total += amount
        with self.lock:
            self.counts = [mine + added for mine, added in zip(self.counts, counts, strict=True)]
            self.sum += total

    def collect(self) -> Iterator[HistogramMetricFamily]:
        with self.lock:
            counts, total = list(self.counts), self.sum
        cumulative, buckets = 0, []
        for bound, count in zip(self.bounds, counts, strict=True):
            cumulative += count
            buckets.append((floatToGoString(bound), cumulative))
        yield HistogramMetricFamily(self.name, self.documentation, buckets=buckets, sum_value=total)


# Observed for every accepted record, a batch at a time, when the bridge commits the
# offsets that cover them: stored and analysed (docs/design.md, "Prometheus metrics").
END_TO_END_LATENCY = BatchHistogram(
    "end_to_end_latency_seconds",
    "Kafka record timestamp to the commit of its offset (stored and analysed), per record.",
    buckets=(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0),
)
DEAD_LETTERS = Counter(
    "dead_letters",
    "Dead letters kept, by kind of reason (signals_app.messages.dead_letter_category).",
    ["reason"],
)


class CeleryQueueLengths(Collector):
    """celery_queue_length{queue}: tasks waiting in each Celery queue, read from the broker
    at every scrape (always current, a few Redis round trips). When the broker does not
    answer, the metric is left out of that scrape instead of failing the whole scrape."""

    def __init__(self, read: Callable[[], dict[str, int]]) -> None:
        self.read = read

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield self._family()  # without reading: registering must not wait for the broker

    def collect(self) -> Iterator[GaugeMetricFamily]:
        try:
            lengths = self.read()
        except Exception as error:  # noqa: BLE001 - a scrape must not fail with the broker
            logger.warning("cannot read the Celery queue lengths: %s", error)
            return
        family = self._family()
        for queue, length in lengths.items():
            family.add_metric([queue], length)
        yield family

    @staticmethod
    def _family() -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "celery_queue_length", "Tasks waiting for a worker, per Celery queue.", labels=["queue"]
        )


# detection
ANOMALIES_DETECTED = Counter("anomalies_detected", "Anomalies raised, by rule.", ["anomaly_type"])
ANOMALIES_MUTED = Counter(
    "anomalies_muted",
    "Episodes found while a mute of their user and rule was on: recorded, not raised.",
    ["anomaly_type"],
)
ANOMALY_DETECTION_LATENCY = Histogram(
    "anomaly_detection_latency_seconds", "Event time to anomaly stored.", buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 300)
)
ACTIVE_USER_SESSIONS = Gauge(
    "active_user_sessions", "Users with at least one live detection window.", multiprocess_mode="livemax"
)

# api: the endpoint is the URL pattern a request resolved to, never the raw path.
API_REQUESTS = Counter("api_requests", "HTTP requests answered, by URL pattern and status.", ["endpoint", "status"])
API_REQUEST_DURATION = Histogram(
    "api_request_duration_seconds",
    "Time to answer an HTTP request, by URL pattern.",
    ["endpoint"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
