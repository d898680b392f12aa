"""Flower asks for a login: the real Flower process, against this test's Redis, as `make run`
and docker-compose.yml start it."""

from __future__ import annotations

import base64
import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.conf import settings

from tests.conftest import REPO, free_port, wait_for

CREDENTIALS = "flower:a-test-password"


def status_of(url: str, credentials: str | None = None) -> int:
    request = urllib.request.Request(url)
    if credentials is not None:
        request.add_header("Authorization", "Basic " + base64.b64encode(credentials.encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return error.code


def answers(url: str) -> bool:
    try:
        status_of(url)
    except OSError:
        return False
    return True


@pytest.fixture
def flower(tmp_path: Path) -> Iterator[str]:
    port = free_port()
    command = [sys.executable, "-m", "celery", "-A", "eventpipeline", "flower", f"--port={port}"]
    command += ["--address=127.0.0.1"]
    env = {**os.environ, "CELERY_BROKER_URL": settings.CELERY_BROKER_URL, "FLOWER_BASIC_AUTH": CREDENTIALS}
    with open(tmp_path / "flower.log", "wb") as log:
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_for(lambda: process.poll() is not None or answers(url), timeout=60, what="Flower to listen")
        assert process.poll() is None, (tmp_path / "flower.log").read_text()
        yield url
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


@pytest.mark.integration
def test_flower_answers_401_without_its_login(flower: str) -> None:
    assert status_of(f"{flower}/") == 401
    assert status_of(f"{flower}/", "flower:a-wrong-password") == 401
    assert status_of(f"{flower}/api/workers") == 401
    assert status_of(f"{flower}/", CREDENTIALS) == 200
    # What Prometheus scrapes (prometheus/prometheus.yml): counts of tasks, no task's arguments.
    assert status_of(f"{flower}/metrics") == 200


def test_make_run_does_not_start_flower_without_a_login() -> None:
    """The Procfile's flower line, as honcho runs it (through sh), with FLOWER_BASIC_AUTH unset."""
    line = next(line for line in (REPO / "Procfile").read_text().splitlines() if line.startswith("flower:"))
    env = {name: value for name, value in os.environ.items() if name != "FLOWER_BASIC_AUTH"}
    result = subprocess.run(
        ["sh", "-c", line.removeprefix("flower:").strip()], cwd=REPO, env=env, capture_output=True, text=True
    )
    assert result.returncode != 0
    assert re.search(r"FLOWER_BASIC_AUTH: Flower needs FLOWER_BASIC_AUTH=user:password", result.stderr)
