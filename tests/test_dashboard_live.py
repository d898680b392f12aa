"""Every dashboard query returns data from a real Prometheus scraping the real processes.

The test starts the bridge, a worker, the emitter and the api (gunicorn, two workers
sharing their metrics through PROMETHEUS_MULTIPROC_DIR as in docker-compose.yml), and
Debian's `prometheus` server scraping them every second; it sends traffic of every kind
the panels show (signals, refused records, anomalies raised and muted, API requests), then
runs each dashboard query until each returns a series with a number. Every query counts:
none is left out.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml
from django.contrib.auth.models import User
from rest_framework.authtoken.models import Token

from anomalies_app.triage import mute_add
from tests.conftest import Pipeline, free_port, wait_for
from tests.factories import PAYLOADS, signal_message
from tests.test_deploy_files import (
    DASHBOARD_FILE,
    GRAFANA_VARIABLES,
    dashboard_exprs,
)

pytestmark = pytest.mark.integration

# Sent with every round of traffic: one anomaly raised, one muted.
RAISED_USER, MUTED_USER = 910_001, 910_002
DATA_TIMEOUT_S = 240


def prometheus_config(path: Path, targets: dict[str, tuple[int, str]]) -> None:
    config = {
        "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [
            {"job_name": job, "metrics_path": metrics_path, "static_configs": [{"targets": [f"127.0.0.1:{port}"]}]}
            for job, (port, metrics_path) in targets.items()
        ],
    }
    path.write_text(yaml.safe_dump(config), encoding="utf-8")


def query(prometheus_port: int, expr: str) -> list[dict[str, Any]]:
    url = f"http://127.0.0.1:{prometheus_port}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    with urllib.request.urlopen(url, timeout=10) as response:
        body = json.load(response)
    assert body["status"] == "success", body
    return list(body["data"]["result"])


def has_a_number(result: list[dict[str, Any]]) -> bool:
    return any(not math.isnan(float(series["value"][1])) for series in result)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5):
            return True
    except (OSError, urllib.error.URLError):
        return False


def api_traffic(api_port: int, token: str) -> None:
    """A few requests to distinct endpoints, one refused and one to no endpoint."""
    for path in ("/signals?size=5", "/anomalies?size=5", f"/users/{RAISED_USER}/risk", "/signals?size=x", "/nowhere"):
        request = urllib.request.Request(
            f"http://127.0.0.1:{api_port}{path}", headers={"Authorization": f"Token {token}"}
        )
        with contextlib.suppress(urllib.error.HTTPError):  # a 400 and a 404 are traffic too
            urllib.request.urlopen(request, timeout=10).close()


def signal_traffic(pipeline: Pipeline) -> None:
    """A purchase over 1000 by each of two users, one muted, and a record that is no signal."""
    pipeline.produce(
        signal_message("purchase", user_id=user_id, payload={**PAYLOADS["purchase"], "amount": 5000})
        for user_id in (RAISED_USER, MUTED_USER)
    )
    producer = pipeline.producer()
    producer.produce(pipeline.topic, key=b"0", value=b"{not json")
    assert producer.flush(30) == 0


def test_every_dashboard_query_returns_data(pipeline: Pipeline, tmp_path: Path) -> None:
    prometheus = shutil.which("prometheus")
    if prometheus is None:
        pytest.fail("the prometheus server is not on PATH: install Debian's `prometheus` package (`make promtool`)")
    analyst = User.objects.create_superuser("operator", password="a-long-enough-password")
    token = Token.objects.create(user=analyst).key
    mute_add(user_id=MUTED_USER, anomaly_type="high_value_purchase", days=1, reason="dashboard test", by=analyst)

    ports = {name: free_port() for name in ("api", "bridge", "emitter", "prometheus")}
    multiproc_dir = tmp_path / "api-metrics"
    multiproc_dir.mkdir()
    pipeline.start_worker()
    pipeline.start_bridge(BRIDGE_METRICS_PORT=str(ports["bridge"]))
    api_command = [sys.executable, "-m", "gunicorn", "eventpipeline.wsgi", "--workers", "2"]
    # With DEBUG off, as users run it, the api answers only the hosts it is told, and over
    # plain HTTP only when told so: what docker-compose.yml sets for Prometheus to scrape it.
    pipeline.start(
        "api",
        [*api_command, "--bind", f"127.0.0.1:{ports['api']}"],
        PROMETHEUS_MULTIPROC_DIR=str(multiproc_dir),
        ALLOWED_HOSTS="localhost,127.0.0.1",
        SECURE_SSL_REDIRECT="false",
    )
    emitter = [sys.executable, "manage.py", "emit_signals", "--topic", pipeline.topic, "--no-progress"]
    emitter += ["--rate", "100", "--duration", str(DATA_TIMEOUT_S + 60), "--no-follow-control"]
    pipeline.start("emitter", [*emitter, "--metrics-port", str(ports["emitter"])])
    config = tmp_path / "prometheus.yml"
    prometheus_config(
        config,
        {
            "api": (ports["api"], "/prometheus/metrics"),
            "bridge": (ports["bridge"], "/metrics"),
            "worker": (pipeline.worker_metrics_port, "/metrics"),
            "emitter": (ports["emitter"], "/metrics"),
        },
    )
    pipeline.start(
        "prometheus",
        [
            prometheus,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'prometheus-data'}",
            f"--web.listen-address=127.0.0.1:{ports['prometheus']}",
        ],
    )
    wait_for(lambda: answers(f"http://127.0.0.1:{ports['api']}/health"), timeout=60, what="the api")
    wait_for(lambda: answers(f"http://127.0.0.1:{ports['prometheus']}/-/ready"), timeout=60, what="Prometheus")

    exprs = []
    for expr in dashboard_exprs(json.loads(DASHBOARD_FILE.read_text(encoding="utf-8"))):
        for variable, value in GRAFANA_VARIABLES.items():
            expr = expr.replace(variable, value)
        exprs.append(expr)

    empty = list(exprs)
    deadline = time.monotonic() + DATA_TIMEOUT_S
    while empty and time.monotonic() < deadline:
        signal_traffic(pipeline)
        api_traffic(ports["api"], token)
        empty = [expr for expr in empty if not has_a_number(query(ports["prometheus"], expr))]
        time.sleep(1.0)
    assert not empty, f"{len(empty)} of {len(exprs)} dashboard queries returned no data: {empty}"
