"""Per-user request throttling for the query API."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from redis.exceptions import RedisError
from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle

logger = logging.getLogger(__name__)


class UserThrottle(UserRateThrottle):
    """DRF's per-user throttle at `API_THROTTLE_RATE`, counted in the shared cache (Redis).

    The rate is read on each request rather than once at import, as DRF does, so that a
    test can change the setting. When Redis does not answer, the request goes through:
    the throttle guards against a runaway client, and losing it for a while costs less
    than refusing every reader of the API.
    """

    def get_rate(self) -> str:
        return str(settings.API_THROTTLE_RATE)

    def allow_request(self, request: Request, view: Any) -> bool:
        try:
            return super().allow_request(request, view)
        except RedisError as error:
            logger.warning("throttle not applied, its cache did not answer: %s", error)
            return True
