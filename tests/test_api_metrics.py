"""api_requests_total{endpoint,status} and api_request_duration_seconds: one label value per
URL pattern, whatever the ids in the path."""

from __future__ import annotations

import pytest
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

pytestmark = pytest.mark.django_db


def requests_counted(endpoint: str, status: str) -> float:
    return REGISTRY.get_sample_value("api_requests_total", {"endpoint": endpoint, "status": status}) or 0.0


def requests_timed(endpoint: str) -> float:
    return REGISTRY.get_sample_value("api_request_duration_seconds_count", {"endpoint": endpoint}) or 0.0


def test_a_request_counts_under_its_url_pattern_and_status(api: APIClient) -> None:
    endpoint = "/users/<str:user_id>/risk"
    before, timed_before = requests_counted(endpoint, "200"), requests_timed(endpoint)
    for user_id in (1, 2, 3):
        assert api.get(f"/users/{user_id}/risk").status_code == 200
    assert requests_counted(endpoint, "200") == before + 3
    assert requests_timed(endpoint) == timed_before + 3


def test_a_refused_request_counts_with_its_status(api: APIClient) -> None:
    before = requests_counted("/signals", "400")
    assert api.get("/signals", {"size": "many"}).status_code == 400
    assert requests_counted("/signals", "400") == before + 1


def test_every_unknown_path_is_one_endpoint(api: APIClient) -> None:
    before = requests_counted("unmatched", "404")
    for path in ("/nothing-here", "/wp-login.php", "/users/1/unknown"):
        assert api.get(path).status_code == 404
    assert requests_counted("unmatched", "404") == before + 3
