"""Every request counted and timed by the URL pattern it resolved to
(`api_requests_total{endpoint,status}`, `api_request_duration_seconds{endpoint}`)."""

from __future__ import annotations

import time
from collections.abc import Callable

from django.http import HttpRequest, HttpResponseBase

from eventpipeline.metrics import API_REQUEST_DURATION, API_REQUESTS

# The endpoint of a request that matched no URL pattern: one label value for every
# unknown path, however many a scanner tries.
UNMATCHED = "unmatched"


class RequestMetricsMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponseBase]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponseBase:
        started = time.perf_counter()
        response = self.get_response(request)
        endpoint = request_endpoint(request)
        API_REQUEST_DURATION.labels(endpoint=endpoint).observe(time.perf_counter() - started)
        API_REQUESTS.labels(endpoint=endpoint, status=str(response.status_code)).inc()
        return response


def request_endpoint(request: HttpRequest) -> str:
    """The URL pattern, such as `/users/<str:user_id>/risk`: never the path itself, whose
    ids would make a label value per user."""
    match = request.resolver_match
    return f"/{match.route}" if match is not None else UNMATCHED
