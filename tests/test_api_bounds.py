"""What one request may cost the api: its statements are bounded, /health ends within its
timeout against servers that never answer and is limited per address, and what answers
without credentials (/health, /docs, /schema, /prometheus/metrics) does so on purpose and
cheaply. (Page depth and /metrics periods: tests/test_api.py.)"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from django.db import connection
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from api.views import SchemaView
from tests.conftest import REPO, database_url, wait_for

# What a process sees of its statement timeout on its first connection, and what a long
# statement gets.
SHOW_AND_SLEEP = """
from django.db import OperationalError, connection
with connection.cursor() as cursor:
    cursor.execute("SHOW statement_timeout")
    print(cursor.fetchone()[0])
    try:
        cursor.execute("SELECT pg_sleep(1)")
        print("slept")
    except OperationalError as error:
        print(type(error.__cause__).__name__)
"""


def python(code: str) -> list[str]:
    env = {**os.environ, "DATABASE_URL": database_url(), "API_STATEMENT_TIMEOUT_MS": "250"}
    env["DJANGO_SETTINGS_MODULE"] = "eventpipeline.settings"
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return result.stdout.split()


@pytest.mark.django_db
def test_the_apis_statements_are_cut_at_api_statement_timeout_ms() -> None:
    """The api (what gunicorn loads: eventpipeline.wsgi) cancels a statement longer than
    API_STATEMENT_TIMEOUT_MS; any other process (a worker, `migrate`) does not."""
    assert python("import eventpipeline.wsgi\n" + SHOW_AND_SLEEP) == ["250ms", "QueryCanceled"]
    assert python("import django\ndjango.setup()\n" + SHOW_AND_SLEEP) == ["0", "slept"]


@pytest.mark.django_db
def test_a_request_cut_short_is_a_503_that_says_why(api: APIClient, settings: Any) -> None:
    """A statement held past the timeout (here by a lock another session holds) is
    cancelled, and the client told so, not given a 500."""
    settings.API_STATEMENT_TIMEOUT_MS = 200
    with psycopg.connect(database_url()) as locker:
        locker.execute("LOCK TABLE signals IN ACCESS EXCLUSIVE MODE")
        with connection.cursor() as cursor:  # the test's transaction: as the api's session would be
            cursor.execute("SELECT set_config('statement_timeout', '200', true)")
        response = api.get("/signals")
    assert response.status_code == 503
    assert response.json() == {
        "detail": "cancelled after API_STATEMENT_TIMEOUT_MS (200 ms); narrow the request (filters, a smaller "
        "size, a cursor) or try again later"
    }


# --- /health ---------------------------------------------------------------------------
@pytest.fixture
def silent_server() -> Iterator[str]:
    """A server that accepts every connection and never says a word: a hung PostgreSQL,
    Redis or Kafka as a client sees one. Its address, host:port."""
    listener = socket.create_server(("127.0.0.1", 0))
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                continue

    acceptor = threading.Thread(target=accept, daemon=True)
    acceptor.start()
    host, port = listener.getsockname()[:2]
    try:
        yield f"{host}:{port}"
    finally:
        stop.set()
        acceptor.join()
        for connection in accepted:
            connection.close()
        listener.close()


def health_threads() -> list[threading.Thread]:
    return [thread for thread in threading.enumerate() if thread.name.startswith("health")]


@pytest.mark.django_db
def test_health_ends_within_its_timeout_when_every_server_hangs(settings: Any, silent_server: str) -> None:
    """Every check gives up on its own, so a server that hangs costs a request its timeout
    and leaves no thread behind to pile up with the next requests."""
    settings.HEALTH_TIMEOUT_SECONDS = 1.0
    settings.HEALTH_THROTTLE_RATE = "1000/min"
    settings.DATABASE_URL = f"postgres://postgres@{silent_server}/eventpipeline"
    settings.REDIS_URL = settings.CELERY_BROKER_URL = settings.DETECT_REDIS_URL = f"redis://{silent_server}/0"
    settings.KAFKA_BOOTSTRAP_SERVERS = silent_server
    before = len(health_threads())
    started = time.monotonic()
    response = APIClient().get("/health", REMOTE_ADDR=f"10.0.0.{uuid.uuid4().int % 250}")
    took = time.monotonic() - started
    assert response.status_code == 503
    assert response.json()["failed"] == ["postgresql", "redis", "kafka", "celery"]
    # libpq waits at least 2 s to connect; the broker's socket gets a second more than the ping.
    assert took < 4, f"/health took {took:.1f} s"
    assert len(health_threads()) == before, "a check's thread outlived the request"


@pytest.mark.django_db
def test_health_is_limited_per_address(settings: Any) -> None:
    settings.HEALTH_TIMEOUT_SECONDS = 0.2
    settings.HEALTH_THROTTLE_RATE = "2/min"
    address, other = (f"10.{n}.{uuid.uuid4().int % 250}.{uuid.uuid4().int % 250}" for n in (1, 2))
    statuses = [APIClient().get("/health", REMOTE_ADDR=address).status_code for _ in range(3)]
    assert 429 not in statuses[:2] and statuses[2] == 429, statuses
    refused = APIClient().get("/health", REMOTE_ADDR=address)
    assert refused.status_code == 429 and int(refused["Retry-After"]) > 0
    assert APIClient().get("/health", REMOTE_ADDR=other).status_code in {200, 503}, "another address is not"


# --- open on purpose ---------------------------------------------------------------------
@pytest.mark.django_db
def test_the_schema_is_open_and_made_once_per_process(monkeypatch: pytest.MonkeyPatch) -> None:
    made = []
    real = SchemaGenerator.get_schema

    def counted(self: SchemaGenerator, *args: Any, **kwargs: Any) -> Any:
        made.append(1)
        return real(self, *args, **kwargs)

    monkeypatch.setattr(SchemaGenerator, "get_schema", counted)
    monkeypatch.setattr(SchemaView, "_schema", None)
    answers = [APIClient().get("/schema", {"lang": lang, "version": lang}) for lang in ("en", "xx", "yy")]
    assert [answer.status_code for answer in answers] == [200, 200, 200]
    assert len(made) == 1, "one document per process, whatever the query"
    assert answers[0].content == answers[2].content


@pytest.mark.django_db
def test_prometheus_scrapes_the_api_without_credentials() -> None:
    """Open on purpose, as the metrics ports of the other processes: counts and timings
    per view, no signal, anomaly or user."""
    response = APIClient().get("/prometheus/metrics")
    assert response.status_code == 200
    assert b"django_http_requests_latency_seconds_by_view_method" in response.content


@pytest.mark.django_db
@pytest.mark.parametrize(
    "url", ["/signals", "/anomalies", "/users/1/risk", "/metrics", "/admin/anomalies_app/anomaly/"]
)
def test_everything_else_needs_credentials(url: str) -> None:
    assert APIClient().get(url).status_code in {401, 302}


def test_no_health_thread_is_left_from_any_test() -> None:
    wait_for(lambda: not health_threads(), timeout=10, what="the health checks' threads to end")
