"""Shared fixtures: real servers, real processes.

Integration tests need KAFKA_BOOTSTRAP_SERVERS, DATABASE_URL and REDIS_URL pointing at
running servers; `make test` starts local ones (scripts/devservices.py) when none are
configured. Each test gets its own topics, Celery queue and consumer group, and the
test database of pytest-django, which the bridge and worker subprocesses share.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Generator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Message, Producer, TopicPartition
from django.conf import settings
from django.contrib.auth.models import User
from django.db import connection
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient
from selenium.webdriver import Chrome, ChromeOptions
from selenium.webdriver.chrome.service import Service as ChromeService
from selenium.webdriver.common.by import By

from eventpipeline.kafka import topics_ensure

REPO = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for(predicate: Callable[[], bool], *, timeout: float, interval: float = 0.25, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what or predicate}")


def database_url() -> str:
    """The URL of the database this test uses (pytest-django's test database)."""
    db = connection.settings_dict
    auth = db["USER"] + (f":{db['PASSWORD']}" if db["PASSWORD"] else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def topic_records(topic: str, expected: int, timeout: float = 60) -> list[Message]:
    """The records on a topic, read from the beginning until `expected` or `timeout`."""
    consumer = Consumer(
        {
            "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
            "group.id": f"topic-check-{uuid.uuid4().hex}",
            "auto.offset.reset": "earliest",
            "session.timeout.ms": 6000,
        }
    )
    consumer.subscribe([topic])
    records: list[Message] = []
    deadline = time.monotonic() + timeout
    try:
        while len(records) < expected and time.monotonic() < deadline:
            records += [m for m in consumer.consume(500, timeout=1.0) if m.error() is None]
    finally:
        consumer.close()
    return records


def topic_values(topic: str, expected: int, timeout: float = 60) -> list[bytes]:
    return [record.value() or b"" for record in topic_records(topic, expected, timeout)]


def dlq_reasons(topic: str, expected: int, timeout: float = 60) -> list[str]:
    """The `reason` headers of the records on a DLQ topic, read from the beginning."""
    reasons = [dict(record.headers() or [])["reason"] for record in topic_records(topic, expected, timeout)]
    return [reason.decode() if isinstance(reason, bytes) else str(reason) for reason in reasons]


@dataclass
class Pipeline:
    """The real bridge and Celery worker processes on this test's own topic and queue.

    They run with the settings users get: every timeout at its default, DEBUG off, the
    metrics endpoints on. A test that needs another value sets it where it starts the
    process, saying why. Only the names of topics, queues, group and keys are the test's
    own, and the metrics ports, which are free ones: the defaults would collide with a
    pipeline that runs on this machine, and with each other."""

    logs: Path
    topic: str = field(default_factory=lambda: f"test-signals-{uuid.uuid4().hex[:10]}")
    env: dict[str, str] = field(default_factory=dict)
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    log_paths: dict[str, Path] = field(default_factory=dict)
    starts: int = 0
    _end_offsets: dict[int, int] | None = None

    def __post_init__(self) -> None:
        suffix = self.topic.removeprefix("test-signals-")
        self.dlq_topic = f"test-dlq-{suffix}"
        self.anomalies_topic = f"test-anomalies-{suffix}"
        self.queue = f"test-store-{suffix}"
        self.detect_queue = f"test-detect-{suffix}"
        self.key_prefix = f"test-dw-{suffix}"
        self.group_id = f"test-bridge-{suffix}"
        self.worker_metrics_port = free_port()
        self.env = {
            **os.environ,
            "DATABASE_URL": database_url(),
            "SIGNALS_TOPIC": self.topic,
            "DLQ_TOPIC": self.dlq_topic,
            "ANOMALIES_TOPIC": self.anomalies_topic,
            "STORE_QUEUE": self.queue,
            "DETECT_QUEUE": self.detect_queue,
            "DETECT_KEY_PREFIX": self.key_prefix,
            "BRIDGE_GROUP_ID": self.group_id,
            "WORKER_METRICS_PORT": str(self.worker_metrics_port),
            # `make test` (and devservices) run with DEBUG=true; users' processes do not.
            "DEBUG": "false",
            "PYTHONUNBUFFERED": "1",
        }
        topics_ensure([self.topic, self.dlq_topic, self.anomalies_topic], partitions=4)

    def start(self, name: str, command: list[str], **env: str) -> subprocess.Popen[bytes]:
        self.starts += 1
        path = self.logs / f"{name}.{self.starts}.log"
        log = open(path, "wb")  # noqa: SIM115 - closed with the process
        ports = {"BRIDGE_METRICS_PORT": str(free_port()), "EMITTER_METRICS_PORT": str(free_port())}
        process = subprocess.Popen(
            command,
            cwd=REPO,
            env={**self.env, **ports, **env},
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.processes[name] = process
        self.log_paths[name] = path
        return process

    def log_of(self, name: str) -> str:
        """What the process last started as `name` has logged so far."""
        return self.log_paths[name].read_text(errors="replace")

    def start_worker(self, name: str = "worker", loglevel: str = "WARNING", **env: str) -> subprocess.Popen[bytes]:
        queues = f"{self.queue},{self.detect_queue}"
        command = [sys.executable, "-m", "celery", "-A", "eventpipeline", "worker", "-Q", queues]
        command += ["--without-gossip", "--without-mingle", "--loglevel", loglevel]
        command += ["-n", f"{name}-{uuid.uuid4().hex[:6]}@%h"]
        return self.start(name, command, **env)

    def start_bridge(self, name: str = "bridge", **env: str) -> subprocess.Popen[bytes]:
        return self.start(name, [sys.executable, "manage.py", "run_bridge"], **env)

    def start_emitter(self, *args: str) -> subprocess.Popen[bytes]:
        """The real `emit_signals` command, writing to this pipeline's topic."""
        command = [sys.executable, "manage.py", "emit_signals", "--topic", self.topic]
        return self.start("emitter", [*command, "--no-progress", *args])

    def emit(self, *args: str) -> None:
        process = self.start_emitter(*args)
        assert process.wait(timeout=300) == 0, self.log_tail()

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Signal the whole process group: a worker's pool children die with it."""
        process = self.processes[name]
        os.killpg(process.pid, sig)
        process.wait(timeout=60)

    def stop(self, name: str, timeout: float = 60, sig: int = signal.SIGTERM) -> int:
        process = self.processes[name]
        if process.poll() is None:
            os.killpg(process.pid, sig)
        return process.wait(timeout=timeout)

    def stop_all(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is None:
                try:
                    self.stop(name, timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def log_tail(self, lines: int = 40) -> str:
        parts = []
        for path in sorted(self.logs.glob("*.log")):
            text = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path.name}\n" + "\n".join(text))
        return "\n".join(parts)

    def producer(self) -> Producer:
        return Producer({"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "linger.ms": 5})

    def produce(self, events: Iterable[dict[str, Any]]) -> None:
        """Put signal messages on this pipeline's topic, keyed by user id, and wait for Kafka."""
        producer = self.producer()
        for event in events:
            producer.produce(self.topic, key=str(event["user_id"]), value=json.dumps(event).encode())
        assert producer.flush(30) == 0

    def replay(self) -> None:
        """Stop the bridge and consume the whole topic again with a new consumer group."""
        assert self.stop("bridge") == 0
        replay_group = f"{self.group_id}-replay"
        self.start_bridge("replay-bridge", BRIDGE_GROUP_ID=replay_group)
        wait_for(lambda: self.all_committed(replay_group), timeout=120, what="the replay to be committed")

    def end_offsets(self) -> dict[int, int]:
        """Per partition, the offset after the last record, found by reading the topic.

        (The Tansu broker used in tests reports wrong high watermarks, so they are not asked.)
        """
        consumer = Consumer(
            {
                "bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS,
                "group.id": "end-offsets",
                "enable.auto.commit": False,
            }
        )
        try:
            partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            ends = dict.fromkeys(partitions, 0)
            consumer.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in partitions])
            idle_since = time.monotonic()
            while time.monotonic() - idle_since < 2.0:
                messages = consumer.consume(10_000, timeout=0.5)
                if messages:
                    idle_since = time.monotonic()
                for message in messages:
                    partition, offset = message.partition(), message.offset()
                    if message.error() is None and partition is not None and offset is not None:
                        ends[partition] = max(ends[partition], offset + 1)
            return ends
        finally:
            consumer.close()

    def committed_offsets(self, group_id: str | None = None) -> dict[int, int]:
        consumer = Consumer(
            {"bootstrap.servers": settings.KAFKA_BOOTSTRAP_SERVERS, "group.id": group_id or self.group_id}
        )
        try:
            partitions = consumer.list_topics(self.topic, timeout=10).topics[self.topic].partitions
            committed = consumer.committed([TopicPartition(self.topic, p) for p in partitions], timeout=10)
            return {tp.partition: max(tp.offset, 0) for tp in committed}
        finally:
            consumer.close()

    def all_committed(self, group_id: str | None = None) -> bool:
        """Whether the group has committed every record of the topic."""
        if self._end_offsets is None:
            self._end_offsets = self.end_offsets()
        return self.committed_offsets(group_id) == self._end_offsets

    def worker_metric(self, name: str, **labels: str) -> float:
        import urllib.request

        with urllib.request.urlopen(f"http://127.0.0.1:{self.worker_metrics_port}/metrics", timeout=5) as response:
            text = response.read().decode()
        wanted = ",".join(f'{key}="{value}"' for key, value in labels.items())
        total = 0.0
        for line in text.splitlines():
            if line.startswith(f"{name}{{{wanted}}}") or (not labels and line.startswith(f"{name} ")):
                total += float(line.rsplit(" ", 1)[1])
        return total


@pytest.fixture
def pipeline(
    request: pytest.FixtureRequest, tmp_path: Path, django_db_serialized_rollback: None, transactional_db: Any
) -> Iterator[Pipeline]:
    """(Serialized rollback puts back what migrations wrote, such as the rules, after the
    flush that ends a transactional test.)"""
    running = Pipeline(logs=tmp_path)
    try:
        yield running
    finally:
        running.stop_all()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            print(running.log_tail())


@pytest.hookimpl(wrapper=True, tryfirst=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, Any]:
    report = yield
    setattr(item, f"rep_{report.when}", report)
    return report


# --- the admin, as an analyst uses it: in a browser ------------------------------------
@pytest.fixture
def browser(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Chrome]:
    """Headless Chromium, driven by the system's chromedriver (Debian's `chromium` and
    `chromium-driver`, which `make test` installs): given the driver's path, selenium
    never tries to download one. When the test fails, the page's address and text are
    printed, and a screenshot and its HTML kept next to the test's other files."""
    chromium, chromedriver = shutil.which("chromium"), shutil.which("chromedriver")
    if chromium is None or chromedriver is None:
        pytest.fail(
            "chromium or chromedriver not found on PATH: install them (Debian: `apt-get install -y chromium "
            "chromium-driver`, or `make chromium` as root) so that the admin can be tested in a browser"
        )
    options = ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking"):
        options.add_argument(argument)
    options.add_argument("--window-size=1400,1000")
    driver = Chrome(options=options, service=ChromeService(chromedriver))
    try:
        yield driver
    finally:
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            screenshot, html = tmp_path / "browser.png", tmp_path / "browser.html"
            driver.save_screenshot(str(screenshot))
            html.write_text(driver.page_source)
            print(f"browser at {driver.current_url}: screenshot {screenshot}, page {html}")
            print(driver.find_element(By.TAG_NAME, "body").text)
        driver.quit()


# --- the query API, as a client with a token uses it -----------------------------------
@pytest.fixture
def user(db: None) -> User:
    return User.objects.create_user("analyst", password="a-long-enough-password")


@pytest.fixture
def token(user: User) -> str:
    return Token.objects.create(user=user).key


@pytest.fixture
def api(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {token}")
    return client
