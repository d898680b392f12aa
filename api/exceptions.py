"""How the API answers an error DRF does not know: a statement PostgreSQL cancelled."""

from __future__ import annotations

import logging
from typing import Any

from django.conf import settings
from django.db import OperationalError
from psycopg.errors import QueryCanceled
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

logger = logging.getLogger(__name__)


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's answers, and a 503 for a statement cut at API_STATEMENT_TIMEOUT_MS: the
    request asked more than the api gives one request, which is no bug of the api's."""
    if isinstance(exc, OperationalError) and isinstance(exc.__cause__, QueryCanceled):
        logger.warning("%s %s cancelled: %s", context["request"].method, context["request"].get_full_path(), exc)
        detail = (
            f"cancelled after API_STATEMENT_TIMEOUT_MS ({settings.API_STATEMENT_TIMEOUT_MS} ms); "
            "narrow the request (filters, a smaller size, a cursor) or try again later"
        )
        return Response({"detail": detail}, status=503)
    return drf_exception_handler(exc, context)
