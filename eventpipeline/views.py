"""HTTP doors that span the apps: /metrics and /health."""

from __future__ import annotations

from django.conf import settings
from drf_spectacular.utils import OpenApiResponse, extend_schema
from rest_framework.permissions import AllowAny
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from eventpipeline.schema import AUTHENTICATED_ERRORS, BAD_PARAMETERS
from eventpipeline.selectors import health_check, pipeline_metrics_recent
from eventpipeline.serializers import HealthSerializer, MetricsQuerySerializer, MetricsSerializer


class MetricsView(APIView):
    """Counts, rates and breakdowns of the last `hours` (JSON; Prometheus scrapes /prometheus/metrics),
    as of `until`: at most METRICS_CACHE_SECONDS old."""

    @extend_schema(
        parameters=[MetricsQuerySerializer],
        responses={200: MetricsSerializer, 400: BAD_PARAMETERS, **AUTHENTICATED_ERRORS},
    )
    def get(self, request: Request) -> Response:
        query = MetricsQuerySerializer(data=request.query_params)
        query.is_valid(raise_exception=True)
        report = pipeline_metrics_recent(hours=query.validated_data["hours"])
        return Response(MetricsSerializer(report).data)


class HealthView(APIView):
    """200 when PostgreSQL, Redis and Kafka answer and a Celery worker answers a ping; 503
    naming what does not. Open to all, unthrottled: load balancers and monitors call it."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = []

    @extend_schema(
        auth=[],
        responses={
            200: HealthSerializer,
            503: OpenApiResponse(HealthSerializer, description="At least one check failed; `failed` names them."),
        },
    )
    def get(self, request: Request) -> Response:
        results = health_check(timeout=settings.HEALTH_TIMEOUT_SECONDS)
        failed = [result.name for result in results if not result.ok]
        body = {
            "status": "unavailable" if failed else "ok",
            "failed": failed,
            "checks": {result.name: {"ok": result.ok, "detail": result.detail} for result in results},
        }
        return Response(HealthSerializer(body).data, status=503 if failed else 200)
