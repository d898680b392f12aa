"""Settings for eventpipeline, read from the environment.

Every value comes through one of the small typed helpers below. A missing or malformed
value stops the process at start with one line naming the variable and what was wrong
(SystemExit prints its message to stderr and exits with status 1), so an operator never
has to read a traceback to find a typo in a deployment.
"""

from __future__ import annotations

import os
import re
import socket
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import dj_database_url

BASE_DIR = Path(__file__).resolve().parent.parent

T = TypeVar("T")


def _refuse(name: str, problem: str) -> None:
    sys.exit(f"eventpipeline: configuration error: {name} {problem}")


def _env(name: str, default: T, parse: Callable[[str], T], expected: str) -> T:
    raw = os.environ.get(name)
    if raw is None or raw == "":
        return default
    try:
        return parse(raw)
    except ValueError:
        _refuse(name, f"must be {expected}, got {raw!r}")
        raise  # unreachable: _refuse exits


def env_str(name: str, default: str) -> str:
    return _env(name, default, str, "text")


def env_int(name: str, default: int, *, minimum: int = 0, maximum: int | None = None) -> int:
    value = _env(name, default, int, "an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bounds = f">= {minimum}" if maximum is None else f"between {minimum} and {maximum}"
        _refuse(name, f"must be {bounds}, got {value}")
    return value


def env_float(name: str, default: float, *, minimum: float = 0.0) -> float:
    value = _env(name, default, float, "a number")
    if value < minimum:
        _refuse(name, f"must be >= {minimum}, got {value}")
    return value


def env_ratio(name: str) -> float | None:
    """A share above 0 and at most 1, or None when unset (the feature it bounds is off)."""
    value = _env(name, None, float, "a number")
    if value is not None and not 0 < value <= 1:
        _refuse(name, f"must be above 0 and at most 1, got {value}")
    return value


def _parse_bool(raw: str) -> bool:
    lowered = raw.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(raw)


def env_bool(name: str, default: bool) -> bool:
    return _env(name, default, _parse_bool, "one of true/false/1/0/yes/no/on/off")


def env_list(name: str, default: list[str]) -> list[str]:
    return _env(name, default, lambda raw: [item.strip() for item in raw.split(",") if item.strip()], "a list")


# The periods DRF's throttles understand (they read the first letter).
_RATE_PERIODS = {"s", "sec", "second", "m", "min", "minute", "h", "hour", "d", "day"}


def _parse_rate(raw: str) -> str:
    count, _, period = raw.strip().partition("/")
    if not (count.isdigit() and int(count) > 0 and period in _RATE_PERIODS):
        raise ValueError(raw)
    return f"{int(count)}/{period}"


def env_rate(name: str, default: str) -> str:
    return _env(name, default, _parse_rate, "a rate such as 6000/min (a count, then s, min, hour or day)")


def env_choice(name: str, default: str, choices: tuple[str, ...]) -> str:
    value = env_str(name, default)
    if value not in choices:
        _refuse(name, f"must be one of {'/'.join(choices)}, got {value!r}")
    return value


def env_url(name: str, default: str, schemes: tuple[str, ...]) -> str:
    value = env_str(name, default)
    scheme = value.split("://", 1)[0] if "://" in value else ""
    if scheme not in schemes:
        _refuse(name, f"must be a URL starting with {' or '.join(s + '://' for s in schemes)}, got {value!r}")
    return value


# Closed by default: a deployment that forgets DEBUG runs as production, and one that
# forgets SECRET_KEY does not start. `make run` and `make test` supply development values
# (scripts/devservices.py); nothing else does.
DEBUG = env_bool("DEBUG", False)
SECRET_KEY = env_str("SECRET_KEY", "")
if not SECRET_KEY:
    _refuse("SECRET_KEY", "is required (make run and make test supply a development one)")
ALLOWED_HOSTS = env_list("ALLOWED_HOSTS", ["localhost", "127.0.0.1", "[::1]"] if DEBUG else [])

# --- Infrastructure -------------------------------------------------------------------
KAFKA_BOOTSTRAP_SERVERS = env_str("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
DATABASE_URL = env_url(
    "DATABASE_URL", "postgres://postgres@127.0.0.1:5432/eventpipeline", ("postgres", "postgresql", "postgis")
)
REDIS_URL = env_url("REDIS_URL", "redis://127.0.0.1:6379/0", ("redis", "rediss", "unix"))
CELERY_BROKER_URL = env_url("CELERY_BROKER_URL", REDIS_URL, ("redis", "rediss", "unix", "amqp", "amqps"))
CELERY_RESULT_BACKEND = env_url("CELERY_RESULT_BACKEND", REDIS_URL, ("redis", "rediss", "unix"))

# --- Pipeline -------------------------------------------------------------------------
SIGNALS_TOPIC = env_str("SIGNALS_TOPIC", "signal-events")
DLQ_TOPIC = env_str("DLQ_TOPIC", "signal-events-dlq")
ANOMALIES_TOPIC = env_str("ANOMALIES_TOPIC", "anomaly-events")
# Partitions of the topics made when missing. A topic's partitions are the most bridges
# that can share its records; 12 shares evenly among 2, 3, 4 or 6 of them. An existing
# topic is not changed, only warned about (docs/operations.md, "Raising partitions").
TOPIC_PARTITIONS = env_int("TOPIC_PARTITIONS", 12, minimum=1)
BATCH_SIZE = env_int("BATCH_SIZE", 500, minimum=1, maximum=100_000)
# The bridge closes a batch after this long even if it is not full, so a trickle of
# events is stored promptly.
BATCH_TIMEOUT_MS = env_int("BATCH_TIMEOUT_MS", 200, minimum=1)
# Batches handed to Celery but not yet stored and analysed. When this many are
# outstanding the bridge pauses its partitions: back-pressure instead of an unbounded
# Redis queue. It must cover the events/s wanted times a batch's time in flight (queued,
# run by both tasks, seen done), or the pipeline waits instead of working
# (docs/performance.md, "Batches in flight").
BRIDGE_MAX_IN_FLIGHT = env_int("BRIDGE_MAX_IN_FLIGHT", 64, minimum=1)
# A batch with no result after this long is handed to Celery again (storing is
# idempotent). It covers tasks a worker held when it died (kill -9). A Redis that lost its
# data is noticed at once instead (bridge/consumer.py, `_results_lost`). The bridge's
# back-pressure bounds the queues to BRIDGE_MAX_IN_FLIGHT batches, so a task queued this
# long is rarer than one lost; a copy that runs anyway changes nothing.
BRIDGE_REDISPATCH_SECONDS = env_float("BRIDGE_REDISPATCH_SECONDS", 20.0, minimum=1.0)
BRIDGE_GROUP_ID = env_str("BRIDGE_GROUP_ID", "eventpipeline-bridge")
# Every this many seconds the bridge measures its consumer lag and leaves a status record
# in Redis (on REDIS_URL) for `pipeline_status`; a record expires after three periods.
BRIDGE_STATUS_SECONDS = env_float("BRIDGE_STATUS_SECONDS", 5.0, minimum=0.5)
# Static membership (Kafka's group.instance.id, KIP-345): a bridge that restarts under the
# same id takes back its own partitions at once instead of waiting for the group to notice
# its predecessor died. Stable across restarts and unique per bridge: the host name (one
# per container under compose replicas). Two bridges on one host need one each; an empty
# value means dynamic membership (docs/operations.md, "Recovery after a crash").
BRIDGE_INSTANCE_ID = os.environ.get("BRIDGE_INSTANCE_ID", f"bridge-{socket.gethostname()}")
if BRIDGE_INSTANCE_ID and not re.fullmatch(r"[A-Za-z0-9._-]{1,249}", BRIDGE_INSTANCE_ID):
    # Kafka's rule for group.instance.id: the broker refuses any other.
    _refuse(
        "BRIDGE_INSTANCE_ID", f"may hold only letters, digits, '.', '_' and '-' (1 to 249), got {BRIDGE_INSTANCE_ID!r}"
    )
# How long the group waits for a bridge that stopped heartbeating before it gives the
# bridge's partitions to another (or, when nobody takes its place, forgets it). 6 s is the
# smallest session Apache Kafka's brokers accept by default (group.min.session.timeout.ms);
# librdkafka heartbeats from a thread of its own, so a busy bridge loop does not miss one.
# On Tansu a bridge's join waits for half of it plus 3 s (docs/configuration.md,
# "Consumer group timeouts").
KAFKA_SESSION_TIMEOUT_MS = env_int("KAFKA_SESSION_TIMEOUT_MS", 6_000, minimum=1000)
# The longest the bridge may go between two polls before librdkafka takes it out of the
# group, and the rebalance timeout: the longest a join waits for the other members (KIP-62).
# The loop polls at least every BATCH_TIMEOUT_MS and keeps polling through every wait
# (docs/design.md, "Consumer group"); librdkafka wants it at least the session timeout.
KAFKA_MAX_POLL_INTERVAL_MS = env_int("KAFKA_MAX_POLL_INTERVAL_MS", 30_000, minimum=1000)
if KAFKA_MAX_POLL_INTERVAL_MS < KAFKA_SESSION_TIMEOUT_MS:
    _refuse(
        "KAFKA_MAX_POLL_INTERVAL_MS",
        f"must be at least KAFKA_SESSION_TIMEOUT_MS ({KAFKA_SESSION_TIMEOUT_MS}), got {KAFKA_MAX_POLL_INTERVAL_MS}",
    )
# Messages larger than this are dead letters ("oversize"), whatever Kafka accepted.
MAX_MESSAGE_BYTES = env_int("MAX_MESSAGE_BYTES", 64 * 1024, minimum=256)
# Unset: a flood of bad records becomes dead letters, all of them, and DeadLetterRateHigh
# fires. Set: the bridge stops when at least this share of the records it read in the last
# minute (and at least DLQ_RATIO_MIN_RECORDS of them) were refused (docs/design.md, "Dead letters").
DLQ_MAX_RATIO = env_ratio("DLQ_MAX_RATIO")
DLQ_RATIO_MIN_RECORDS = env_int("DLQ_RATIO_MIN_RECORDS", 100, minimum=1)
# Event timestamps outside [now - MAX_EVENT_AGE_DAYS, now + MAX_CLOCK_SKEW_S] are absurd.
MAX_EVENT_AGE_DAYS = env_int("MAX_EVENT_AGE_DAYS", 365, minimum=1)
MAX_CLOCK_SKEW_S = env_int("MAX_CLOCK_SKEW_S", 300, minimum=0)
# How often the store and detect tasks retry a batch (with back-off) before they give up on it.
STORE_MAX_RETRIES = env_int("STORE_MAX_RETRIES", 5, minimum=0)
DETECT_MAX_RETRIES = env_int("DETECT_MAX_RETRIES", 5, minimum=0)
SIGNALS_PER_SECOND = env_int("SIGNALS_PER_SECOND", 1000, minimum=1)
BURST_MODE = env_bool("BURST_MODE", False)
# POST /emitter/configure and /emitter/burst write here (on REDIS_URL); running emitters
# read it every EMITTER_CONTROL_POLL_SECONDS.
EMITTER_CONTROL_KEY = env_str("EMITTER_CONTROL_KEY", "eventpipeline:emitter:control")
# The fastest POST /emitter/configure and /emitter/burst may make the emitters go, bursts
# included (rate x multiplier): a request beyond it is a 400. The default is 20 times the
# 1,000 events/s of the system this replaces.
EMITTER_MAX_RATE = env_int("EMITTER_MAX_RATE", 20_000, minimum=1)
EMITTER_CONTROL_POLL_SECONDS = env_float("EMITTER_CONTROL_POLL_SECONDS", 0.5, minimum=0.05)
# Retention (`manage.py cleanup`, and beat every hour): how many days each table keeps.
# RETENTION_DAYS is the default of all four. Signals go a whole day's partition at a time,
# so they stay between N and N+1 days (docs/design.md, "Retention").
RETENTION_DAYS = env_int("RETENTION_DAYS", 30, minimum=1)
RETENTION_DAYS_BY_TABLE = {
    "signals": env_int("SIGNALS_RETENTION_DAYS", RETENTION_DAYS, minimum=1),
    "anomalies": env_int("ANOMALIES_RETENTION_DAYS", RETENTION_DAYS, minimum=1),
    "dead_letters": env_int("DEAD_LETTERS_RETENTION_DAYS", RETENTION_DAYS, minimum=1),
    "injection_runs": env_int("INJECTION_RUNS_RETENTION_DAYS", RETENTION_DAYS, minimum=1),
}
# Rows a retention DELETE removes per transaction, so none holds a long one.
RETENTION_CHUNK_ROWS = env_int("RETENTION_CHUNK_ROWS", 10_000, minimum=1)
# Days ahead that beat keeps a partition of `signals` ready for (docs/design.md, "Partitions").
SIGNALS_PARTITIONS_AHEAD_DAYS = env_int("SIGNALS_PARTITIONS_AHEAD_DAYS", 3, minimum=1)
# How long adding or dropping a partition waits for its lock before giving up (and trying
# again later), instead of queueing every insert behind it.
PARTITION_LOCK_TIMEOUT_MS = env_int("PARTITION_LOCK_TIMEOUT_MS", 5_000, minimum=100)
# How often a worker reads the rules again: an edit in the admin applies within this time.
RULES_REFRESH_SECONDS = env_float("RULES_REFRESH_SECONDS", 5.0, minimum=0.0)
# Detection windows live in Redis under this key prefix (REDIS_URL unless DETECT_REDIS_URL).
DETECT_REDIS_URL = env_url("DETECT_REDIS_URL", REDIS_URL, ("redis", "rediss", "unix"))
DETECT_KEY_PREFIX = env_str("DETECT_KEY_PREFIX", "detection-windows")
# How late (event time, behind the user's newest event) an event may arrive and still be
# counted exactly: windows keep this much more than the rules need.
DETECT_LATENESS_SECONDS = env_int("DETECT_LATENESS_SECONDS", 300, minimum=0)
# active_user_sessions counts the users with an event analysed within this many minutes.
ACTIVE_SESSION_MINUTES = env_int("ACTIVE_SESSION_MINUTES", 5, minimum=1, maximum=60)

# Where the api (under `make run`), Flower and the metrics endpoints listen. Containers
# set 0.0.0.0 and publish their ports on the host's 127.0.0.1 (docker-compose.yml).
BIND_ADDRESS = env_str("BIND_ADDRESS", "127.0.0.1")
# "user:password" (several: comma-separated). Flower reads it itself; `make run` and
# docker-compose.yml refuse to start Flower without it, and `make run` prints it.
FLOWER_BASIC_AUTH = env_str("FLOWER_BASIC_AUTH", "")
# `pipeline_status` exits non-zero when the bridge's consumer group lags by more than
# STATUS_MAX_LAG records in all, when nothing was stored for STATUS_MAX_STORE_AGE_SECONDS
# while records wait, when no worker answers a ping within STATUS_PING_TIMEOUT_SECONDS,
# or when no bridge reports (docs/operations.md, "Reading pipeline_status").
STATUS_MAX_LAG = env_int("STATUS_MAX_LAG", 100_000)
STATUS_MAX_STORE_AGE_SECONDS = env_float("STATUS_MAX_STORE_AGE_SECONDS", 120.0, minimum=1.0)
STATUS_PING_TIMEOUT_SECONDS = env_float("STATUS_PING_TIMEOUT_SECONDS", 1.0, minimum=0.1)

EMITTER_METRICS_PORT = env_int("EMITTER_METRICS_PORT", 8011, maximum=65535)
BRIDGE_METRICS_PORT = env_int("BRIDGE_METRICS_PORT", 8012, maximum=65535)
WORKER_METRICS_PORT = env_int("WORKER_METRICS_PORT", 8013, maximum=65535)

# --- Django ---------------------------------------------------------------------------
INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "django.contrib.postgres",
    "django_prometheus",
    "rest_framework",
    "rest_framework.authtoken",
    "django_filters",
    "drf_spectacular",
    "drf_spectacular_sidecar",
    "eventpipeline",
    "signals_app",
    "anomalies_app",
    "emitter",
    "bridge",
    "api",
]

MIDDLEWARE = [
    "django_prometheus.middleware.PrometheusBeforeMiddleware",
    "django.middleware.security.SecurityMiddleware",
    "whitenoise.middleware.WhiteNoiseMiddleware",
    # After WhiteNoise: static files are not API requests.
    "api.middleware.RequestMetricsMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
    "django_prometheus.middleware.PrometheusAfterMiddleware",
]

ROOT_URLCONF = "eventpipeline.urls"
WSGI_APPLICATION = "eventpipeline.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

DATABASES = {"default": dj_database_url.parse(DATABASE_URL, conn_max_age=600, conn_health_checks=True)}
DATABASES["default"].setdefault("OPTIONS", {})["connect_timeout"] = 10
# True when DATABASE_URL names a pooler in transaction mode (PgBouncer's
# pool_mode=transaction), where consecutive transactions of one client may run on different
# server sessions, so nothing may rely on a session: no server-side cursors (Django's
# QuerySet.iterator() would open one WITH HOLD and fetch from it in later transactions), and
# retention detaches a day in one transaction instead of CONCURRENTLY
# (docs/scaling.md, "PgBouncer in transaction mode").
DATABASE_TRANSACTION_POOLING = env_bool("DATABASE_TRANSACTION_POOLING", False)
DATABASES["default"]["DISABLE_SERVER_SIDE_CURSORS"] = DATABASE_TRANSACTION_POOLING
# Bounds one statement of the store task: the threads pool does not enforce Celery's
# time limits, and a COPY waiting on a lock must not hold a worker thread for ever.
STORE_STATEMENT_TIMEOUT_MS = env_int("STORE_STATEMENT_TIMEOUT_MS", 30_000, minimum=100)
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
    {"NAME": "django.contrib.auth.password_validation.CommonPasswordValidator"},
    {"NAME": "django.contrib.auth.password_validation.NumericPasswordValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True

STATIC_URL = "static/"
STATIC_ROOT = BASE_DIR / ".data" / "static"
# Hashed, compressed files in production; in development (and tests) no collectstatic needed.
STORAGES = {
    "default": {"BACKEND": "django.core.files.storage.FileSystemStorage"},
    "staticfiles": {
        "BACKEND": "django.contrib.staticfiles.storage.StaticFilesStorage"
        if DEBUG
        else "whitenoise.storage.CompressedManifestStaticFilesStorage"
    },
}

# --- Query API ------------------------------------------------------------------------
# Requests per user. The default is far above what a person or a paging script asks
# (100 a second, sustained) and stops only a runaway client; a load test sets its own.
API_THROTTLE_RATE = env_rate("API_THROTTLE_RATE", "6000/min")
# Longest statement of a request to the api (0: none). Below gunicorn's 30 s worker
# timeout, so PostgreSQL cancels a runaway query instead of gunicorn killing its worker
# and leaving the query running. The api's connections only (eventpipeline/wsgi.py):
# workers, beat and migrations are bounded otherwise or not at all.
API_STATEMENT_TIMEOUT_MS = env_int("API_STATEMENT_TIMEOUT_MS", 20_000, minimum=0)
if DATABASE_TRANSACTION_POOLING and API_STATEMENT_TIMEOUT_MS:
    # It is set once per session; behind a transaction pooler that session is lent to other
    # clients, and the api's later transactions run on sessions without it.
    _refuse(
        "API_STATEMENT_TIMEOUT_MS",
        "must be 0 with DATABASE_TRANSACTION_POOLING: a pooler in transaction mode cannot keep a "
        "session's statement_timeout; give the api's pool its own (docs/scaling.md, \"PgBouncer in transaction mode\")",
    )
# /metrics computes each period's report at most this often (0: on every request).
METRICS_CACHE_SECONDS = env_float("METRICS_CACHE_SECONDS", 30.0, minimum=0.0)
# /health waits this long for each of PostgreSQL, Redis, Kafka and a Celery worker.
HEALTH_TIMEOUT_SECONDS = env_float("HEALTH_TIMEOUT_SECONDS", 2.0, minimum=0.1)
# /health answers no caller needs authenticating; this many requests per caller's address.
HEALTH_THROTTLE_RATE = env_rate("HEALTH_THROTTLE_RATE", "60/min")

# The /metrics reports, shared by every gunicorn worker. Short timeouts: a Redis that does
# not answer must not hold requests; the report is then computed (api/selectors.py).
# (The throttle keeps its counts on REDIS_URL itself, with the same timeouts: throttling.py.)
CACHES = {
    "default": {
        "BACKEND": "django.core.cache.backends.redis.RedisCache",
        "LOCATION": REDIS_URL,
        "KEY_PREFIX": "api",
        "OPTIONS": {"socket_connect_timeout": 1, "socket_timeout": 1},
    }
}

REST_FRAMEWORK = {
    # How many proxies in front of the api add to X-Forwarded-For: the throttles tell
    # anonymous callers apart by the address that many hops back. 0 (no proxy): the
    # connection's own address, so a caller cannot pick its key by sending the header.
    "NUM_PROXIES": env_int("NUM_PROXIES", 0),
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "api.authentication.TokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_RENDERER_CLASSES": [
        "api.renderers.JSONRenderer",
        "rest_framework.renderers.BrowsableAPIRenderer",
    ],
    "DEFAULT_THROTTLE_CLASSES": ["api.throttling.UserThrottle"],
    "DEFAULT_FILTER_BACKENDS": ["api.filters.FilterBackend"],
    "DEFAULT_PAGINATION_CLASS": "api.pagination.PageOrCursorPagination",
    "DEFAULT_SCHEMA_CLASS": "drf_spectacular.openapi.AutoSchema",
    "EXCEPTION_HANDLER": "api.exceptions.exception_handler",
}

SPECTACULAR_SETTINGS = {
    "TITLE": "eventpipeline query API",
    "DESCRIPTION": (
        "Signals and anomalies as stored by the pipeline. Every endpoint but /health and the "
        "documentation needs a token (`Authorization: Token <key>`) or a session (log in at /api-auth/login/). "
        "A bad parameter gets 400 with a JSON object naming each bad parameter and the reasons."
    ),
    "VERSION": "1",
    # One name for the statuses that the anomaly and both triage requests share.
    "ENUM_NAME_OVERRIDES": {"AnomalyStatusEnum": "anomalies_app.models.AnomalyStatus"},
    "SERVE_INCLUDE_SCHEMA": False,
    "SERVE_PERMISSIONS": ["rest_framework.permissions.AllowAny"],
    # Swagger UI's files are served from this server: the UI must work with no CDN in reach.
    "SWAGGER_UI_DIST": "SIDECAR",
    "SWAGGER_UI_FAVICON_HREF": "SIDECAR",
    "REDOC_DIST": "SIDECAR",
}

if not DEBUG:
    SECURE_SSL_REDIRECT = env_bool("SECURE_SSL_REDIRECT", True)
    SESSION_COOKIE_SECURE = True
    CSRF_COOKIE_SECURE = True
    SECURE_HSTS_SECONDS = env_int("SECURE_HSTS_SECONDS", 31_536_000)
    SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    SECURE_HSTS_PRELOAD = True
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

# text: a line for a person, as it always was. json: one JSON object per line, in every
# process, for a log store to index; the records logged while a store or detect task runs
# carry its batch id and the Celery task's id and name (eventpipeline/logs.py), so that
# a batch can be followed from the bridge to its rows and anomalies
# (docs/operations.md, "Following a batch").
LOG_FORMAT = env_choice("LOG_FORMAT", "text", ("text", "json"))
LOG_LEVEL = env_choice("LOG_LEVEL", "INFO", ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"))
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "filters": {"task_context": {"()": "eventpipeline.logs.TaskContext"}},
    "formatters": {
        "text": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"},
        "json": {
            "()": "pythonjsonlogger.json.JsonFormatter",
            "fmt": ["levelname", "name", "message"],
            "rename_fields": {"levelname": "level", "name": "logger"},
            "timestamp": "time",
        },
    },
    "handlers": {
        "console": {"class": "logging.StreamHandler", "formatter": LOG_FORMAT, "filters": ["task_context"]},
    },
    "root": {"handlers": ["console"], "level": LOG_LEVEL},
    # Django (in DEBUG) and gunicorn give some loggers handlers of their own, which write
    # text: in JSON their records go through the root's handler instead.
    "loggers": (
        {
            name: {"handlers": [], "propagate": True}
            for name in ("django", "django.server", "gunicorn.error", "gunicorn.access")
        }
        if LOG_FORMAT == "json"
        else {}
    ),
}

# --- Celery ---------------------------------------------------------------------------
# Read by eventpipeline/celery.py with namespace="CELERY".
CELERY_TASK_SERIALIZER = "json"
CELERY_RESULT_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_ACKS_LATE = True
# A worker child killed mid-task (OOM, kill -9) puts its message back instead of
# acknowledging it as failed: storing is idempotent, losing a batch is not acceptable.
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
# Celery replaces the root logger's handlers with its own, which write text; in JSON the
# workers and beat keep the one LOGGING gives them (and --loglevel still sets the level).
CELERY_WORKER_HIJACK_ROOT_LOGGER = LOG_FORMAT == "text"
# Threads, not prefork: the tasks mostly wait on PostgreSQL and Redis, and prefork's pipe
# between the pool and its children cost more CPU than the task itself
# (docs/performance.md, "The worker pool").
CELERY_WORKER_POOL = env_str("WORKER_POOL", "threads")
CELERY_WORKER_CONCURRENCY = env_int("WORKER_CONCURRENCY", 8, minimum=1)
CELERY_TASK_TIME_LIMIT = 120
CELERY_TASK_SOFT_TIME_LIMIT = 100
CELERY_RESULT_EXPIRES = 3600
# Storing and detecting run on their own queues so each can be scaled on its own.
STORE_QUEUE = env_str("STORE_QUEUE", "store")
DETECT_QUEUE = env_str("DETECT_QUEUE", "detect")
CELERY_TASK_ROUTES = {
    "signals_app.tasks.store_signals": {"queue": STORE_QUEUE},
    "anomalies_app.tasks.detect_anomalies": {"queue": DETECT_QUEUE},
}
CELERY_TASK_DEFAULT_QUEUE = "default"
CELERY_BROKER_TRANSPORT_OPTIONS = {
    # An unacknowledged message (its worker died) becomes visible again after this long.
    # It must exceed the longest task (CELERY_TASK_TIME_LIMIT, or two statements of
    # STORE_STATEMENT_TIMEOUT_MS), or a slow task would be delivered twice while it runs;
    # the bridge re-dispatches a silent batch sooner (BRIDGE_REDISPATCH_SECONDS).
    "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 300, minimum=5),
    "unacked_restore_interval": 5,
    "unacked_restore_throttle": 1,
    # The body goes into the transport's JSON envelope as the JSON text it is, not in
    # base64: an eighth fewer bytes, and no encoding it and decoding it again. Each message
    # says how its body is encoded, so a worker reads both kinds
    # (docs/performance.md, "Celery's envelope").
    "body_encoding": None,
}
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True
# Celery closes the database connection around every task unless this is set; the
# store task then pays a new connection and a new staging table each time
# (docs/performance.md, "Database connection reuse").
CELERY_DB_REUSE_MAX = 1000
# Task events add to Celery's fixed cost of every task
# (docs/performance.md, "Celery's cost per task"). Celery's default is off; Flower
# switches them on while it runs (its --enable_events), so they are paid for only while
# someone watches.
CELERY_WORKER_SEND_TASK_EVENTS = env_bool("WORKER_SEND_TASK_EVENTS", False)
CELERY_BEAT_SCHEDULE = {
    "cleanup-old-data": {
        "task": "eventpipeline.cleanup_old_data",
        "schedule": 3600.0,
    },
    "signals-partitions-ahead": {
        "task": "eventpipeline.signals_partitions_ahead",
        "schedule": 3600.0,
    },
}
