"""Schemathesis against the generated OpenAPI schema: requests made from the schema (and
deliberately invalid ones) never get a 500, and every response matches what the schema says."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.contrib.auth.models import Group, User
from django.core.signals import request_finished, request_started
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections
from hypothesis import HealthCheck
from hypothesis import settings as hypothesis_settings
from rest_framework.authtoken.models import Token
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from emitter.selectors import control_redis
from tests.factories import anomaly_create, dead_letter_create, signal_create

pytestmark = pytest.mark.django_db

# Read from the app itself through WSGI, as the cases are sent. (Schemathesis' lazy
# `from_fixture` loader does not run on this pytest.)
schema = schemathesis.openapi.from_wsgi("/schema", get_wsgi_application())


@pytest.fixture(autouse=True)
def requests_keep_the_test_transaction(settings: Any) -> Iterator[None]:
    """Django closes the database connection at the end of every request, which would end
    the test's transaction; Django's own test client stops that the same way."""
    # /health waits this long for a worker that this test does not start: keep it short.
    settings.HEALTH_TIMEOUT_SECONDS = 0.2
    # Every case comes from one address: /health's limit per address is not under test here.
    settings.HEALTH_THROTTLE_RATE = "1000000/min"
    # The emitter endpoints write the control: a key of this test's own, gone after it.
    settings.EMITTER_CONTROL_KEY = f"test-schemathesis-control-{uuid.uuid4().hex[:8]}"
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    try:
        yield
    finally:
        request_started.connect(close_old_connections)
        request_finished.connect(close_old_connections)
        control_redis().delete(settings.EMITTER_CONTROL_KEY)


@pytest.fixture
def token() -> str:
    """An analyst, who may triage, and rows of every kind for the lists to return (one
    anomaly triaged, one suppressed)."""
    analyst = User.objects.create_user("schemathesis")
    analyst.groups.add(Group.objects.get(name="analysts"))
    for n, signal_type in enumerate(["login", "purchase", "click", "api_call", "file_access"]):
        signal_create(user_id=n, signal_type=signal_type)
    anomaly_create(user_id=1)
    anomaly_create(user_id=2, severity="high", status="acknowledged", assigned_to=analyst, triage_notes="looked")
    anomaly_create(user_id=3, suppressed=True)
    dead_letter_create(offset=1)
    return Token.objects.create(user=analyst).key


@schema.parametrize()
# The fixtures' rows are shared by every generated request on purpose: the lists read them,
# and the triage endpoints change them as an analyst would (the emitter endpoints write
# to Redis only).
@hypothesis_settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_no_500_and_every_response_as_documented(case: Any, token: str) -> None:
    # /health answers a documented 503 here (no worker runs): any other 5xx is a failure.
    server_errors = [] if case.operation.path == "/health" else [not_a_server_error]
    response = case.call_and_validate(
        headers={"Authorization": f"Token {token}"},
        checks=[*server_errors, status_code_conformance, content_type_conformance, response_schema_conformance],
    )
    assert response.status_code < 500 or (case.operation.path == "/health" and response.status_code == 503)
