"""The histogram the bridge observes a batch at a time reads as prometheus_client's own."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Histogram, generate_latest

from eventpipeline.metrics import END_TO_END_LATENCY, BatchHistogram

BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
AMOUNTS = [0.0, 0.05, 0.1, 0.1000001, 0.25, 0.7, 1.0, 2.5, 4.99, 5.0, 9.0, 10.0, 11.0, 3600.5]


def exposition(registry: CollectorRegistry) -> list[str]:
    """The lines, without the _created ones a Histogram adds (a time, not a count)."""
    lines = generate_latest(registry).decode().splitlines()
    return [line for line in lines if "_created" not in line]


def test_a_batch_reads_as_the_same_amounts_observed_one_by_one() -> None:
    one_by_one, batched = CollectorRegistry(), CollectorRegistry()
    histogram = Histogram("latency_seconds", "Seconds.", buckets=BUCKETS, registry=one_by_one)
    batch_histogram = BatchHistogram("latency_seconds", "Seconds.", BUCKETS, registry=batched)
    for amount in AMOUNTS:
        histogram.observe(amount)
    batch_histogram.observe_many(AMOUNTS[:5])
    batch_histogram.observe_many([])
    batch_histogram.observe_many(AMOUNTS[5:])

    assert exposition(batched) == exposition(one_by_one)
    assert 'latency_seconds_bucket{le="0.1"} 3.0' in exposition(batched)  # an amount on a bound counts in it
    assert f"latency_seconds_count {float(len(AMOUNTS))}" in exposition(batched)


def test_the_end_to_end_latency_keeps_its_name_and_buckets() -> None:
    assert END_TO_END_LATENCY.name == "end_to_end_latency_seconds"
    assert END_TO_END_LATENCY.bounds == (
        *(0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 900.0, 3600.0),
        math.inf,
    )
    samples = {sample.name for family in END_TO_END_LATENCY.collect() for sample in family.samples}
    assert samples == {f"end_to_end_latency_seconds_{part}" for part in ("bucket", "count", "sum")}
