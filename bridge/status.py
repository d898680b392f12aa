"""What a running bridge tells operators, measured off its hot loop: its consumer lag as
the metric `bridge_consumer_lag`, and a small status record in Redis that
`pipeline_status` reads (a separate process cannot read the bridge's gauges, and there may
be several bridges, or none with a metrics port).

Every BRIDGE_STATUS_SECONDS a thread of the bridge asks Kafka for the lag of the
partitions the bridge is assigned and writes the record under
`eventpipeline:bridge-status:<group>:<host>:<pid>`, expiring after three periods: a bridge
that stops reporting disappears by itself.
"""

from __future__ import annotations

import json
import logging
import math
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import redis
from confluent_kafka import Consumer
from confluent_kafka.admin import AdminClient

from eventpipeline.kafka import LOG_END_PROBE_SECONDS, consumer_lag
from eventpipeline.metrics import BRIDGE_CONSUMER_LAG

logger = logging.getLogger(__name__)

STATUS_KEY_PREFIX = "eventpipeline:bridge-status"
# A record lives this many reporting periods: one missed write is not a bridge down.
PERIODS_TO_LIVE = 3


@dataclass(frozen=True)
class BridgeState:
    """What the bridge loop knows of itself, read from the reporting thread."""

    in_flight: int
    paused: bool
    assigned: list[int]


@dataclass(frozen=True)
class BridgeReport:
    """One bridge's status record. `lag` per assigned partition, None when Kafka did not
    answer; `updated_at` in seconds since the epoch."""

    group_id: str
    topic: str
    host: str
    pid: int
    in_flight: int
    paused: bool
    assigned: list[int]
    updated_at: float
    lag: dict[int, int] | None = field(default=None)

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, raw: str | bytes) -> BridgeReport:
        fields = json.loads(raw)
        if fields.get("lag") is not None:
            fields["lag"] = {int(partition): lag for partition, lag in fields["lag"].items()}
        return cls(**fields)


def bridge_report_write(*, client: redis.Redis, report: BridgeReport, ttl_seconds: float) -> None:
    key = f"{STATUS_KEY_PREFIX}:{report.group_id}:{report.host}:{report.pid}"
    client.set(key, report.to_json(), ex=max(math.ceil(ttl_seconds), 1))


def bridge_report_delete(*, client: redis.Redis, report: BridgeReport) -> None:
    client.delete(f"{STATUS_KEY_PREFIX}:{report.group_id}:{report.host}:{report.pid}")


def bridge_report_list(*, client: redis.Redis, group_id: str) -> list[BridgeReport]:
    """The records of the group's bridges that reported recently (older ones expired)."""
    keys = sorted(client.scan_iter(match=f"{STATUS_KEY_PREFIX}:{group_id}:*", count=1000))
    if not keys:
        return []
    return [BridgeReport.from_json(raw) for raw in client.mget(keys) if raw is not None]


class StatusReporter(threading.Thread):
    """The bridge's reporting thread: Kafka and Redis are asked here, never in the loop."""

    def __init__(
        self,
        *,
        state: Callable[[], BridgeState],
        group_id: str,
        topic: str,
        interval_seconds: float,
        client: redis.Redis,
        probe: Consumer,
        admin: AdminClient,
    ) -> None:
        super().__init__(name="bridge-status", daemon=True)
        self.state = state
        self.group_id = group_id
        self.topic = topic
        self.interval_seconds = interval_seconds
        self.client = client
        self.probe = probe
        self.admin = admin
        self.stopping = threading.Event()
        self.last_report: BridgeReport | None = None
        self._exported: set[int] = set()

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self.report()
            except Exception as error:  # noqa: BLE001 - Redis away: report again next period
                logger.warning("cannot write the bridge's status record: %s", error)
            self.stopping.wait(self.interval_seconds)

    def stop(self) -> None:
        """Stop reporting and take the record away: a bridge that stopped is not running."""
        self.stopping.set()
        # A report held up by a Kafka that is away is left to end with the process; the
        # bridge's own shutdown must not wait for it.
        self.join(timeout=LOG_END_PROBE_SECONDS + 2)
        if self.last_report is not None:
            try:
                bridge_report_delete(client=self.client, report=self.last_report)
            except redis.RedisError as error:
                logger.warning("cannot remove the bridge's status record: %s", error)
        if not self.is_alive():
            self.probe.close()

    def report(self) -> BridgeReport:
        state = self.state()
        report = BridgeReport(
            group_id=self.group_id,
            topic=self.topic,
            host=socket.gethostname(),
            pid=os.getpid(),
            in_flight=state.in_flight,
            paused=state.paused,
            assigned=state.assigned,
            updated_at=time.time(),
            lag=self.measure_lag(state.assigned),
        )
        if self.stopping.is_set():
            return report  # stopped while measuring (a slow broker): its record is deleted, not written
        bridge_report_write(client=self.client, report=report, ttl_seconds=self.interval_seconds * PERIODS_TO_LIVE)
        self.last_report = report
        return report

    def measure_lag(self, assigned: list[int]) -> dict[int, int] | None:
        """Lag per assigned partition, also set as `bridge_consumer_lag`; the series of
        partitions no longer assigned are removed."""
        try:
            lags = consumer_lag(
                probe=self.probe, admin=self.admin, group_id=self.group_id, topic=self.topic, partitions=assigned
            )
        except Exception as error:  # noqa: BLE001 - Kafka away: the loop reports it; try next period
            logger.warning("cannot measure the consumer lag: %s", error)
            return None
        for partition in self._exported - set(assigned):
            BRIDGE_CONSUMER_LAG.remove(self.topic, str(partition))
        for lag in lags:
            BRIDGE_CONSUMER_LAG.labels(topic=self.topic, partition=str(lag.partition)).set(lag.lag)
        self._exported = set(assigned)
        return {lag.partition: lag.lag for lag in lags}
