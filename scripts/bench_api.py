"""`make bench-api`: the query API's latency on ten million signals.

1. Loads 10,000,000 signals (100,000 users, 30 days, the emitter's mix of types), 100,000
   anomalies and 1,000 dead letters into a database of its own, `<DATABASE_URL's
   name>_bench_api`, with COPY, then VACUUM ANALYZE. Loading takes minutes, so the data
   is kept for the next run (`--reload` loads it again).
2. Starts the API as deployed (gunicorn, production settings) against it, with a token.
3. Measures each endpoint with hey, a real HTTP load generator, at concurrency 1 and 16,
   after a warm-up: p50, p95 and requests/s. Any response other than 200 fails the bench.
4. Measures the admin as an analyst uses it, one request at a time: the anomaly
   changelist filtered, one anomaly, the page of an active user, and a bulk acknowledge
   of 500 anomalies (put back afterwards).
The table ends with one line per measurement scripts can read:
    endpoint=NAME concurrency=C p50_ms=X p95_ms=Y requests_per_s=Z
Needs DATABASE_URL, REDIS_URL and KAFKA_BOOTSTRAP_SERVERS (make bench-api starts local ones).
"""

from __future__ import annotations

import argparse
import csv
import io
import os
import random
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson
import psutil
import psycopg
from psycopg import sql

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

SIGNALS = 10_000_000
ANOMALIES = 100_000
DEAD_LETTERS = 1_000
USERS = 100_000
DAYS = 30
HEAVY_USERS_SHARE = 0.3  # of the events, from the most active tenth of the users
SEED = 20_261_129
CHUNK = 20_000


def bench_database_url() -> str:
    """DATABASE_URL with `_bench_api` appended to the database name; created if missing."""
    base = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/eventpipeline")
    parts = urlsplit(base)
    name = f"{parts.path.lstrip('/')}_bench_api"
    with psycopg.connect(base, autocommit=True) as connection:
        if not connection.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            connection.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    return urlunsplit(parts._replace(path=f"/{name}"))


# The server's key: the bench signs deep cursors with it, as the server would.
SECRET_KEY = f"bench-api-{uuid.uuid4().hex}{uuid.uuid4().hex}"


def django_setup(database_url: str) -> None:
    os.environ["DATABASE_URL"] = database_url
    os.environ["SECRET_KEY"] = SECRET_KEY
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "eventpipeline.settings")
    import django

    django.setup()
    from django.core.management import call_command

    call_command("migrate", interactive=False, verbosity=0)


def user_of(rng: random.Random) -> int:
    heavy = rng.random() < HEAVY_USERS_SHARE
    return rng.randint(1, USERS // 10 if heavy else USERS)


def copy_text(value: str) -> str:
    """A value in COPY's text format: backslashes doubled (JSON escapes carry them)."""
    return value.replace("\\", "\\\\")


def signal_lines(now_ms: int) -> Iterator[str]:
    """The signals as COPY text lines, in event-time order as they would arrive."""
    from emitter.generator import TYPE_MIX, SignalGenerator

    rng = random.Random(SEED)
    payload_makers = {
        "login": SignalGenerator.login_payload,
        "purchase": SignalGenerator.purchase_payload,
        "api_call": SignalGenerator.api_call_payload,
        "click": SignalGenerator.click_payload,
        "file_access": SignalGenerator.file_access_payload,
    }
    # A pool of real payloads per type: making one per row would take most of the load time.
    payloads = {
        signal_type: [copy_text(orjson.dumps(make(rng, rng.randint(1, USERS))).decode()) for _ in range(500)]
        for signal_type, make in payload_makers.items()
    }
    start_ms = now_ms - DAYS * 86_400_000
    step = DAYS * 86_400_000 / SIGNALS
    for index in range(SIGNALS):
        signal_type = TYPE_MIX(rng)
        event_id = uuid.UUID(int=rng.getrandbits(128), version=4)
        timestamp = start_ms + int(index * step)
        payload = payloads[signal_type][rng.randrange(500)]
        yield f"{event_id}\t{user_of(rng)}\t{signal_type}\t{timestamp}\t{payload}\n"


def anomaly_lines(now_ms: int) -> Iterator[str]:
    from anomalies_app.rules import DEFAULT_RULES, describe

    rng = random.Random(SEED + 1)
    rules = list(DEFAULT_RULES.values())
    statuses = ["new"] * 14 + ["acknowledged"] * 3 + ["resolved"] * 2 + ["false_positive"]
    start_ms = now_ms - DAYS * 86_400_000
    for index in range(ANOMALIES):
        rule = rules[rng.randrange(len(rules))]
        detected_ms = start_ms + int(index * DAYS * 86_400_000 / ANOMALIES)
        detected = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(detected_ms / 1000)) + f".{detected_ms % 1000:03d}+00"
        value = rule.threshold + 1 + rng.randrange(5)
        description = copy_text(describe(rule, value))
        # As detection writes it; the event ids are filled in from the user's signals after loading.
        snapshot = {
            "threshold": rule.threshold,
            "window_seconds": rule.window_seconds,
            "comparison": rule.comparison.value,
            "severity": rule.severity,
        }
        window = {"window_start_ms": detected_ms - 60_000, "window_end_ms": detected_ms}
        evidence = copy_text(orjson.dumps({"rule": snapshot, "value": value, **window, "event_ids": []}).decode())
        status = statuses[rng.randrange(len(statuses))]
        yield (
            f"{user_of(rng)}\t{rule.anomaly_type}\t{rule.severity}\t{description}\t{{}}\t{detected}\t{detected}\t"
            f"{status}\t\t\t{detected_ms - 60_000}\t{detected_ms}\t{evidence}\t{detected}\n"
        )


def dead_letter_lines(now_ms: int) -> Iterator[str]:
    for index in range(DEAD_LETTERS):
        received_ms = now_ms - int(index * DAYS * 86_400_000 / DEAD_LETTERS)
        received = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(received_ms / 1000)) + "+00"
        yield f"\\\\x7b7d\tsignal-events\t{index % 4}\t{index}\tfield 'user_id' is required\t{received}\n"


def copy_lines(connection: psycopg.Connection, statement: str, lines: Iterator[str], total: int) -> None:
    started = time.monotonic()
    with connection.cursor() as cursor, cursor.copy(statement) as copy:
        chunk: list[str] = []
        for done, line in enumerate(lines, 1):
            chunk.append(line)
            if len(chunk) == CHUNK:
                copy.write("".join(chunk))
                chunk = []
                if done % 1_000_000 == 0:
                    rate = done / (time.monotonic() - started)
                    print(f"  {done:,} of {total:,} ({rate:,.0f} rows/s)", flush=True)
        if chunk:
            copy.write("".join(chunk))


EVIDENCE_EVENTS_SQL = """
UPDATE anomalies SET evidence = jsonb_set(evidence, '{event_ids}', coalesce((
    SELECT jsonb_agg(recent.event_id::text) FROM (
        SELECT event_id FROM signals WHERE signals.user_id = anomalies.user_id ORDER BY timestamp DESC LIMIT 5
    ) AS recent
), '[]'::jsonb))
"""


def signals_partitions_days(now_ms: int) -> None:
    """The daily partitions of `signals` the dataset's days need (docs/design.md, "Partitions")."""
    from signals_app.partitions import day_number, signals_partitions_ensure

    signals_partitions_ensure(days=range(day_number(now_ms - DAYS * 86_400_000), day_number(now_ms) + 1))


def dataset_load(database_url: str, *, reload: bool) -> None:
    """The rows of the bench, unless a previous run left exactly them."""
    wanted = (
        f"{SIGNALS} signals, {ANOMALIES} anomalies with their evidence events, {DEAD_LETTERS} dead letters, seed {SEED}"
    )
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute("CREATE TABLE IF NOT EXISTS bench_api_dataset (description text NOT NULL)")
        loaded = connection.execute("SELECT description FROM bench_api_dataset").fetchone()
        if loaded and loaded[0] == wanted and not reload:
            print(f"dataset already loaded: {wanted}", flush=True)
            return
        print(f"loading {wanted} (minutes; kept for the next run)", flush=True)
        connection.execute("TRUNCATE bench_api_dataset, signals, anomalies, dead_letters RESTART IDENTITY")
        now_ms = int(time.time() * 1000)
        signals_partitions_days(now_ms)
        started = time.monotonic()
        copy_lines(
            connection,
            "COPY signals (event_id, user_id, type, timestamp, payload) FROM STDIN",
            signal_lines(now_ms),
            SIGNALS,
        )
        copy_lines(
            connection,
            "COPY anomalies (user_id, anomaly_type, severity, description, original_signal_data, "
            "detection_timestamp, created_at, status, triage_notes, episode_key, episode_start_ms, "
            "episode_end_ms, evidence, published_at) FROM STDIN",
            anomaly_lines(now_ms),
            ANOMALIES,
        )
        copy_lines(
            connection,
            "COPY dead_letters (raw, source_topic, source_partition, source_offset, reason, received_at) FROM STDIN",
            dead_letter_lines(now_ms),
            DEAD_LETTERS,
        )
        print("  evidence: the latest five signals of each anomaly's user", flush=True)
        connection.execute(EVIDENCE_EVENTS_SQL)
        connection.execute("VACUUM ANALYZE signals")
        connection.execute("VACUUM ANALYZE anomalies")
        connection.execute("VACUUM ANALYZE dead_letters")
        connection.execute("INSERT INTO bench_api_dataset VALUES (%s)", [wanted])
        print(f"loaded in {time.monotonic() - started:.0f} s", flush=True)


@dataclass(frozen=True)
class Measurement:
    endpoint: str
    concurrency: int
    p50_ms: float
    p95_ms: float
    requests_per_s: float
    # CPU ms per request, by process: the api (gunicorn), PostgreSQL, Redis, hey. At
    # concurrency 16 the two cores are full, so these say where a request's time goes.
    cpu_ms: dict[str, float] | None = None


CPU_PARTS = ("api", "postgresql", "redis", "hey")


def cpu_seconds(server: subprocess.Popen[bytes]) -> dict[str, float]:
    """CPU time used so far by the api's processes, PostgreSQL, Redis and hey (the
    children this script has waited for)."""
    totals = dict.fromkeys(CPU_PARTS, 0.0)
    api = psutil.Process(server.pid)
    for process in [api, *api.children(recursive=True)]:
        times = process.cpu_times()
        totals["api"] += times.user + times.system
    for process in psutil.process_iter(["name", "cmdline", "cpu_times"]):
        cmdline = " ".join(process.info["cmdline"] or [])
        name = process.info["name"] or ""
        if name.startswith("postgres") or "postgres:" in cmdline:
            part = "postgresql"
        elif "redis-server" in name or "redis-server" in cmdline:
            part = "redis"
        else:
            continue
        if process.info["cpu_times"] is not None:
            totals[part] += process.info["cpu_times"].user + process.info["cpu_times"].system
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    totals["hey"] = children.ru_utime + children.ru_stime
    return totals


def hey(url: str, token: str, *, requests: int, concurrency: int) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, requests/s) of `requests` GETs; raises if any was not a 200.
    Percentiles come from hey's per-request CSV (its summary rounds small runs badly)."""
    command = ["hey", "-n", str(requests), "-c", str(concurrency), "-o", "csv"]
    output = subprocess.run(
        [*command, "-H", f"Authorization: Token {token}", url],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = list(csv.DictReader(io.StringIO(output)))
    statuses = sorted({row["status-code"] for row in rows})
    if len(rows) != requests or statuses != ["200"]:
        raise SystemExit(f"bench-api: {url} gave {len(rows)} answers with statuses {statuses}, wanted {requests} 200s")
    seconds = sorted(float(row["response-time"]) for row in rows)
    spans = [(float(row["offset"]), float(row["offset"]) + float(row["response-time"])) for row in rows]
    elapsed = max(end for _, end in spans) - min(start for start, _ in spans)
    p95 = statistics.quantiles(seconds, n=20, method="inclusive")[-1]
    return statistics.median(seconds) * 1000, p95 * 1000, len(rows) / elapsed


def server_environment(database_url: str, **settings: str) -> dict[str, str]:
    return {
        **os.environ,
        "DATABASE_URL": database_url,
        "DEBUG": "false",
        "SECRET_KEY": SECRET_KEY,
        "ALLOWED_HOSTS": "127.0.0.1",
        "SECURE_SSL_REDIRECT": "false",
        "API_THROTTLE_RATE": "1000000/min",  # measuring the queries, not the throttle
        "LOG_LEVEL": "WARNING",
        **settings,
    }


def static_collect(database_url: str) -> None:
    """The admin's static files, hashed as deployed (its pages fail without them)."""
    command = [sys.executable, "manage.py", "collectstatic", "--noinput", "--verbosity", "0"]
    subprocess.run(command, cwd=REPO, env=server_environment(database_url), check=True)


def serve(database_url: str, port: int, log: Path, **settings: str) -> subprocess.Popen[bytes]:
    env = server_environment(database_url, **settings)
    # As the Dockerfile and docker-compose.yml run it.
    workers = os.environ.get("GUNICORN_WORKERS", "3")
    command = [sys.executable, "-m", "gunicorn", "eventpipeline.wsgi", "-b", f"127.0.0.1:{port}", "-w", workers]
    with open(log, "ab") as output:
        process = subprocess.Popen(command, cwd=REPO, env=env, stdout=output, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/schema", timeout=5)
            return process
        except Exception:  # noqa: BLE001 - not up yet, or 503 while a check fails
            time.sleep(0.5)
    raise SystemExit(f"bench-api: the API did not answer on port {port}; see {log}")


def stop(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


HEAVY_USER = 7  # among the most active tenth: about 370 signals in the 30 days
USER = 54_321  # an ordinary one: about 70


def deep_cursor(table: str, ordering_field: str, depth: int) -> str:
    """A cursor that starts `depth` rows into `table`, newest first: what a client holds
    after paging that far (made directly, as the server would sign it)."""
    from django.db import connection

    from api.pagination import cursor_token

    with connection.cursor() as cursor:
        cursor.execute(
            sql.SQL("SELECT {field}, id FROM {table} ORDER BY {field} DESC, id DESC OFFSET %s LIMIT 1")
            .format(field=sql.Identifier(ordering_field), table=sql.Identifier(table))
            .as_string(),
            [depth],
        )
        key = cursor.fetchone()
    return cursor_token([f"-{ordering_field}", "-id"], list(key))


def endpoints() -> dict[str, str]:
    from urllib.parse import quote

    day_ms = 86_400_000
    now_ms = int(time.time() * 1000)
    signals_cursor = quote(deep_cursor("signals", "timestamp", SIGNALS // 2))
    anomalies_cursor = quote(deep_cursor("anomalies", "detection_timestamp", ANOMALIES // 2))
    return {
        "signals page 1": "/signals?page=1&size=50",
        "signals of a user": f"/signals?user_id={USER}",
        "signals by type, one day": f"/signals?signal_type=login&start_timestamp={now_ms - 3 * day_ms}"
        f"&end_timestamp={now_ms - 2 * day_ms}",
        "signals, cursor 5M deep": f"/signals?cursor={signals_cursor}&size=50",
        "signals page 1, size 1000": "/signals?page=1&size=1000",
        "anomalies page 1": "/anomalies?page=1&size=50",
        "anomalies filtered": "/anomalies?severity=high&status=new&anomaly_type=repeated_login_failures",
        "anomalies, cursor 50k deep": f"/anomalies?cursor={anomalies_cursor}&size=50",
        "user signals (active user)": f"/users/{HEAVY_USER}/signals",
        "user signals": f"/users/{USER}/signals",
        "user anomalies": f"/users/{HEAVY_USER}/anomalies",
        "user risk": f"/users/{HEAVY_USER}/risk",
        "metrics, 24 hours": "/metrics?hours=24",
        "metrics, 720 hours": "/metrics?hours=720",
    }


def token_make() -> str:
    from django.contrib.auth.models import User
    from rest_framework.authtoken.models import Token

    user, _ = User.objects.get_or_create(username="bench-api")
    return str(Token.objects.get_or_create(user=user)[0].key)


def measure_once(database_url: str, token: str, port: int, log: Path, *, requests: int) -> list[Measurement]:
    """Each endpoint at concurrency 1 and 16, then /metrics computed on every request."""
    results = []
    urls = endpoints()
    server = serve(database_url, port, log)
    try:
        for name, path in urls.items():
            url = f"http://127.0.0.1:{port}{path}"
            hey(url, token, requests=20, concurrency=4)  # warm-up: connections, caches, plans
            results.append(Measurement(name, 1, *hey(url, token, requests=requests, concurrency=1)))
            before = cpu_seconds(server)
            measured = hey(url, token, requests=requests * 4, concurrency=16)
            after = cpu_seconds(server)
            cpu_ms = {part: 1000 * (after[part] - before[part]) / (requests * 4) for part in CPU_PARTS}
            results.append(Measurement(name, 16, *measured, cpu_ms=cpu_ms))
    finally:
        stop(server)
    # The report above is cached for METRICS_CACHE_SECONDS (30), as deployed, so most of
    # those requests were cache hits: what computing it costs, without the cache.
    server = serve(database_url, port, log, METRICS_CACHE_SECONDS="0")
    try:
        for name, path in urls.items():
            if path.startswith("/metrics"):
                url = f"http://127.0.0.1:{port}{path}"
                results.append(Measurement(f"{name}, uncached", 1, *hey(url, token, requests=20, concurrency=1)))
    finally:
        stop(server)
    return results


ADMIN = "/admin/anomalies_app/anomaly/"
BULK = 500  # anomalies per bulk action


def admin_analyst() -> tuple[str, str]:
    """An analyst (group `analysts`) to measure the admin as analysts use it."""
    from django.contrib.auth.models import Group, User

    password = uuid.uuid4().hex
    user, _ = User.objects.get_or_create(username="bench-analyst", defaults={"is_staff": True})
    user.set_password(password)
    user.save()
    user.groups.add(Group.objects.get(name="analysts"))
    return user.username, password


def admin_session(base: str, username: str, password: str) -> Any:
    """A logged-in browser session. The production settings mark cookies Secure; the
    bench talks plain HTTP to 127.0.0.1, so it sends them anyway."""
    import requests

    class PlainHttpSession(requests.Session):
        def request(self, *args: Any, **kwargs: Any) -> Any:
            response = super().request(*args, **kwargs)
            for cookie in self.cookies:
                cookie.secure = False
            return response

    session = PlainHttpSession()
    login = session.get(f"{base}/admin/login/", timeout=30)
    token = login.text.split('name="csrfmiddlewaretoken" value="', 1)[1].split('"', 1)[0]
    answer = session.post(
        f"{base}/admin/login/?next=/admin/",
        data={"csrfmiddlewaretoken": token, "username": username, "password": password},
        allow_redirects=False,
        timeout=30,
    )
    if answer.status_code != 302:
        raise SystemExit(f"bench-api: the admin login failed ({answer.status_code})")
    return session


def admin_pages() -> dict[str, str]:
    from anomalies_app.models import Anomaly

    anomaly = Anomaly.objects.filter(user_id=HEAVY_USER).order_by("-id").values_list("id", flat=True)[0]
    return {
        "admin: anomalies new+high": f"{ADMIN}?status__exact=new&severity__exact=high",
        "admin: anomalies of a user": f"{ADMIN}?q={HEAVY_USER}",
        "admin: one anomaly": f"{ADMIN}{anomaly}/change/",
        "admin: user page (active user)": f"{ADMIN}user/{HEAVY_USER}/",
    }


def percentiles(seconds: list[float]) -> tuple[float, float, float]:
    """(p50 ms, p95 ms, requests/s) of requests made one after another."""
    p95 = statistics.quantiles(sorted(seconds), n=20, method="inclusive")[-1]
    return statistics.median(seconds) * 1000, p95 * 1000, len(seconds) / sum(seconds)


def admin_measure_once(database_url: str, port: int, log: Path, *, requests: int, bulk_runs: int) -> list[Measurement]:
    """The admin pages an analyst uses most, and a bulk acknowledge of BULK anomalies, one
    request at a time (an analyst is one person). The anomalies acknowledged are put back."""
    from django.contrib.admin.models import LogEntry
    from django.db import connection

    from anomalies_app.models import Anomaly

    base = f"http://127.0.0.1:{port}"
    username, password = admin_analyst()
    server = serve(database_url, port, log)
    results = []
    acknowledged: list[int] = []
    try:
        session = admin_session(base, username, password)
        for name, path in admin_pages().items():
            seconds = []
            for attempt in range(5 + requests):
                started = time.perf_counter()
                answer = session.get(f"{base}{path}", timeout=60)
                if answer.status_code != 200:
                    raise SystemExit(f"bench-api: {path} answered {answer.status_code}")
                if attempt >= 5:  # the first five warm up
                    seconds.append(time.perf_counter() - started)
            results.append(Measurement(name, 1, *percentiles(seconds)))
        seconds = []
        token = session.cookies.get("csrftoken")
        for _ in range(bulk_runs):
            ids = list(Anomaly.objects.filter(status="new").order_by("id").values_list("id", flat=True)[:BULK])
            started = time.perf_counter()
            answer = session.post(
                f"{base}{ADMIN}",
                data={"action": "acknowledge", "index": "0", "_selected_action": ids, "csrfmiddlewaretoken": token},
                headers={"Referer": f"{base}{ADMIN}"},
                allow_redirects=False,
                timeout=60,
            )
            seconds.append(time.perf_counter() - started)
            acknowledged += ids
            if answer.status_code != 302 or Anomaly.objects.filter(id__in=ids, status="new").exists():
                raise SystemExit(f"bench-api: the bulk action answered {answer.status_code} and left anomalies new")
        results.append(Measurement(f"admin: acknowledge {BULK}", 1, *percentiles(seconds)))
    finally:
        stop(server)
        Anomaly.objects.filter(id__in=acknowledged).update(
            status="new", assigned_to=None, triaged_at=None, triaged_by=None
        )
        LogEntry.objects.filter(user__username=username).delete()
        connection.close()
    return results


def measure(database_url: str, *, requests: int, runs: int, parts: str = "all") -> list[Measurement]:
    """The median of `runs` runs, each figure on its own."""
    port = int(os.environ.get("BENCH_API_PORT", "8099"))
    log = REPO / ".data" / "bench" / "logs" / "bench-api.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    token = token_make()
    every: list[list[Measurement]] = []
    for run in range(1, runs + 1):
        measured = measure_once(database_url, token, port, log, requests=requests) if parts != "admin" else []
        if parts != "api":
            measured += admin_measure_once(database_url, port, log, requests=40, bulk_runs=10)
        every.append(measured)
        print(f"run {run} of {runs} done", flush=True)
    results = [
        Measurement(
            same[0].endpoint,
            same[0].concurrency,
            statistics.median(m.p50_ms for m in same),
            statistics.median(m.p95_ms for m in same),
            statistics.median(m.requests_per_s for m in same),
            None
            if same[0].cpu_ms is None
            else {part: statistics.median(m.cpu_ms[part] for m in same if m.cpu_ms) for part in CPU_PARTS},
        )
        for same in zip(*every, strict=True)  # one measurement, as each run made it
    ]
    print(
        f"median of {runs} runs; {requests} requests at concurrency 1, {requests * 4} at 16; "
        f"admin: 40 requests per page and 10 bulk actions, one at a time"
    )
    print("CPU ms per request at concurrency 16: " + ", ".join(CPU_PARTS))
    print(f"{'endpoint':32} {'c':>3} {'p50 ms':>9} {'p95 ms':>9} {'req/s':>8}  CPU ms per request")
    for m in results:
        cpu = " / ".join(f"{m.cpu_ms[part]:.2f}" for part in CPU_PARTS) if m.cpu_ms else ""
        print(f"{m.endpoint:32} {m.concurrency:>3} {m.p50_ms:>9.1f} {m.p95_ms:>9.1f} {m.requests_per_s:>8.1f}  {cpu}")
    for m in results:
        slug = m.endpoint.replace(" ", "_").replace(",", "")
        print(
            f"endpoint={slug} concurrency={m.concurrency} p50_ms={m.p50_ms:.1f} "
            f"p95_ms={m.p95_ms:.1f} requests_per_s={m.requests_per_s:.1f}"
        )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--reload", action="store_true", help="load the dataset again even if it is there")
    parser.add_argument("--load-only", action="store_true", help="load the dataset and stop")
    parser.add_argument("--requests", type=int, default=200, help="per endpoint at concurrency 1 (4x that at 16)")
    parser.add_argument("--runs", type=int, default=3, help="the figures are the medians of this many runs")
    parser.add_argument(
        "--only", choices=["api", "admin"], help="measure only the query API, or only the admin (default both)"
    )
    args = parser.parse_args()
    if not shutil.which("hey"):
        raise SystemExit("bench-api: hey is missing (Debian package 'hey'; make bench-api installs it as root)")
    database_url = bench_database_url()
    django_setup(database_url)
    dataset_load(database_url, reload=args.reload)
    if args.load_only:
        return
    static_collect(database_url)
    measure(database_url, requests=args.requests, runs=args.runs, parts=args.only or "all")


if __name__ == "__main__":
    main()
