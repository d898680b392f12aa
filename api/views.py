"""HTTP doors of the query API, triage, /metrics, /health and the emitter control: each
parses its input, calls one selector or service and shapes the output (docs/design.md,
"Query API")."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, ClassVar, cast

from django.conf import settings
from django.contrib.auth.models import User
from django.db.models import QuerySet
from drf_spectacular.utils import OpenApiResponse, extend_schema
from drf_spectacular.views import SpectacularAPIView
from rest_framework import generics
from rest_framework.exceptions import NotFound, PermissionDenied, ValidationError
from rest_framework.parsers import JSONParser
from rest_framework.permissions import AllowAny, IsAuthenticated
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from anomalies_app.models import Anomaly
from anomalies_app.selectors import anomaly_list, user_risk_score
from anomalies_app.triage import TriageError, TriageResult, anomalies_triage
from api.filters import (
    AnomalyFilter,
    FilterBackend,
    SignalFilter,
    StrictOrderingFilter,
    UserAnomalyFilter,
    UserSignalFilter,
    user_id_from_path,
    whole_number_from_path,
)
from api.permissions import CanControlEmitter, CanTriage
from api.schema import (
    ANOMALY_ID_PATH_PARAMETER,
    AUTHENTICATED_ERRORS,
    BAD_BODY,
    BAD_PARAMETERS,
    BAD_TRIAGE,
    CONFLICT,
    FORBIDDEN,
    FORBIDDEN_EMITTER,
    NOT_FOUND,
    UNSUPPORTED_MEDIA_TYPE,
    USER_ID_PATH_PARAMETER,
)
from api.selectors import health_check, pipeline_metrics_recent
from api.serializers import (
    AnomaliesTriageSerializer,
    AnomalySerializer,
    AnomalyTriageSerializer,
    EmitterBurstSerializer,
    EmitterConfigureSerializer,
    EmitterControlSerializer,
    HealthSerializer,
    MetricsQuerySerializer,
    MetricsSerializer,
    RiskScoreSerializer,
    SignalSerializer,
    TriageResultSerializer,
)
from api.throttling import HealthThrottle
from emitter.selectors import EmitterControl
from emitter.services import EmitterControlRefused, emitter_burst, emitter_configure
from signals_app.models import Signal
from signals_app.selectors import signal_list


@extend_schema(responses={200: SignalSerializer, 400: BAD_PARAMETERS, **AUTHENTICATED_ERRORS})
class SignalListView(generics.ListAPIView):
    """Stored signals, newest event first, `page` and `size` as in the system this replaces,
    or `cursor` for deep paging."""

    serializer_class = SignalSerializer
    # The model, for the schema generator; the rows come from get_queryset.
    queryset = Signal.objects.none()
    filter_backends = [FilterBackend, StrictOrderingFilter]
    filterset_class = SignalFilter
    # Not by id: `signals` is partitioned by event time and has no btree index on id, so
    # that order would read every partition (docs/design.md, "Partitions"). The id still
    # breaks ties within a time.
    ordering_fields = ["timestamp"]
    ordering = "-timestamp"

    def get_queryset(self) -> QuerySet[Signal, dict[str, Any]]:
        return SignalSerializer.rows(signal_list())


@extend_schema(parameters=[USER_ID_PATH_PARAMETER])
class UserSignalListView(SignalListView):
    """One user's signals, newest event first."""

    filterset_class = UserSignalFilter

    def get_queryset(self) -> QuerySet[Signal, dict[str, Any]]:
        return SignalSerializer.rows(signal_list(user_id=user_id_from_path(self.kwargs["user_id"])))


def _control_body(control: EmitterControl) -> dict[str, object]:
    active = control.burst_until is not None and control.burst_until > time.time()
    burst = (
        {"multiplier": control.burst_multiplier, "until": datetime.fromtimestamp(control.burst_until, tz=UTC)}
        if active and control.burst_until is not None
        else None
    )
    body = {
        "version": control.version,
        "signals_per_second": control.signals_per_second,
        "burst_mode": control.burst_mode,
        "burst": burst,
        "follows_within_seconds": settings.EMITTER_CONTROL_POLL_SECONDS,
    }
    return dict(EmitterControlSerializer(body).data)


def _emitter_control(change: Callable[..., EmitterControl], asked: dict[str, Any]) -> Response:
    try:
        control = change(**asked)
    except EmitterControlRefused as refused:
        raise ValidationError({refused.field: [refused.message]}) from refused
    return Response(_control_body(control))


_EMITTER_RESPONSES = {
    200: EmitterControlSerializer,
    400: BAD_BODY,
    403: FORBIDDEN_EMITTER,
    415: UNSUPPORTED_MEDIA_TYPE,
    **AUTHENTICATED_ERRORS,
}


class EmitterConfigureView(APIView):
    """Set the running emitters' rate and burst mode; a field left out stays as it is.
    They follow within `follows_within_seconds`."""

    permission_classes = [IsAuthenticated, CanControlEmitter]
    parser_classes = [JSONParser]  # the body is JSON, as docs/design.md's examples send it

    @extend_schema(request=EmitterConfigureSerializer, responses=_EMITTER_RESPONSES)
    def post(self, request: Request) -> Response:
        asked = EmitterConfigureSerializer(data=request.data)
        asked.is_valid(raise_exception=True)
        return _emitter_control(emitter_configure, dict(asked.validated_data))


class EmitterBurstView(APIView):
    """Multiply the running emitters' rate for a while, then go back to it."""

    permission_classes = [IsAuthenticated, CanControlEmitter]
    parser_classes = [JSONParser]

    @extend_schema(request=EmitterBurstSerializer, responses=_EMITTER_RESPONSES)
    def post(self, request: Request) -> Response:
        asked = EmitterBurstSerializer(data=request.data)
        asked.is_valid(raise_exception=True)
        return _emitter_control(emitter_burst, dict(asked.validated_data))


@extend_schema(responses={200: AnomalySerializer, 400: BAD_PARAMETERS, **AUTHENTICATED_ERRORS})
class AnomalyListView(generics.ListAPIView):
    """Anomalies, latest detected first."""

    serializer_class = AnomalySerializer
    # The model, for the schema generator; the rows come from get_queryset.
    queryset = Anomaly.objects.none()
    filter_backends = [FilterBackend, StrictOrderingFilter]
    filterset_class = AnomalyFilter
    ordering_fields = ["detection_timestamp", "id"]
    ordering = "-detection_timestamp"

    def get_queryset(self) -> QuerySet[Anomaly, dict[str, Any]]:
        return AnomalySerializer.rows(anomaly_list())


@extend_schema(parameters=[USER_ID_PATH_PARAMETER])
class UserAnomalyListView(AnomalyListView):
    """One user's anomalies, latest detected first."""

    filterset_class = UserAnomalyFilter

    def get_queryset(self) -> QuerySet[Anomaly, dict[str, Any]]:
        return AnomalySerializer.rows(anomaly_list(user_id=user_id_from_path(self.kwargs["user_id"])))


def _triage(request: Request, *, anomaly_ids: list[int], asked: dict[str, Any]) -> TriageResult:
    """The triage service with what the request asked; a request it refuses as a whole is
    a 400 naming the field."""
    try:
        return anomalies_triage(anomaly_ids=anomaly_ids, by=cast(User, request.user), via="API", **asked)
    except TriageError as error:
        if error.field == "user":  # the user lost the permission since DRF checked it
            raise PermissionDenied(error.message) from error
        raise ValidationError({error.field: [error.message]}) from error


class AnomalyView(APIView):
    """Triage one anomaly: its status, assignee and notes; the anomaly as the lists show it."""

    permission_classes = [IsAuthenticated, CanTriage]
    parser_classes = [JSONParser]

    @extend_schema(
        parameters=[ANOMALY_ID_PATH_PARAMETER],
        request=AnomalyTriageSerializer,
        responses={
            200: AnomalySerializer,
            400: BAD_TRIAGE,
            403: FORBIDDEN,
            404: NOT_FOUND,
            409: CONFLICT,
            415: UNSUPPORTED_MEDIA_TYPE,
            **AUTHENTICATED_ERRORS,
        },
    )
    def patch(self, request: Request, id: str) -> Response:  # `id`: the path is /anomalies/{id}
        anomaly_id = whole_number_from_path("id", id)
        asked = AnomalyTriageSerializer(data=request.data)
        asked.is_valid(raise_exception=True)
        result = _triage(request, anomaly_ids=[anomaly_id], asked=dict(asked.validated_data))
        if anomaly_id in result.refused:
            field, reason = result.refused_fields[anomaly_id], result.refused[anomaly_id]
            if field == "id":
                raise NotFound(f"no anomaly has the id {anomaly_id}")
            return Response({field: [reason]}, status=409)
        row = AnomalySerializer.rows(anomaly_list(anomaly_id=anomaly_id)).first()
        if row is None:  # removed by retention since
            raise NotFound(f"no anomaly has the id {anomaly_id}")
        return Response(AnomalySerializer(row).data)


class AnomaliesTriageView(APIView):
    """One triage decision for many anomalies, each taken on its own merits: the answer
    names every id as changed (with what changed) or refused (with why)."""

    permission_classes = [IsAuthenticated, CanTriage]
    parser_classes = [JSONParser]

    @extend_schema(
        request=AnomaliesTriageSerializer,
        responses={
            200: TriageResultSerializer,
            400: BAD_TRIAGE,
            403: FORBIDDEN,
            415: UNSUPPORTED_MEDIA_TYPE,
            **AUTHENTICATED_ERRORS,
        },
    )
    def post(self, request: Request) -> Response:
        asked = AnomaliesTriageSerializer(data=request.data)
        asked.is_valid(raise_exception=True)
        decision = dict(asked.validated_data)
        anomaly_ids = decision.pop("ids")
        result = _triage(request, anomaly_ids=anomaly_ids, asked=decision)
        answer = {
            "changed": [{"id": pk, "change": result.changed[pk]} for pk in anomaly_ids if pk in result.changed],
            "refused": [
                {"id": pk, "field": result.refused_fields[pk], "reason": result.refused[pk]}
                for pk in anomaly_ids
                if pk in result.refused
            ],
            "mutes": result.mutes,
            "known_places": result.places,
            "summary": result.summary(),
        }
        return Response(TriageResultSerializer(answer).data)


class UserRiskView(APIView):
    """A user's risk over the last 30 days: the numbers of `SELECT * FROM get_user_risk_score(user_id)`."""

    @extend_schema(
        parameters=[USER_ID_PATH_PARAMETER],
        responses={200: RiskScoreSerializer, 400: BAD_PARAMETERS, **AUTHENTICATED_ERRORS},
    )
    def get(self, request: Request, user_id: str) -> Response:
        return Response(RiskScoreSerializer(user_risk_score(user_id=user_id_from_path(user_id))).data)


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
    naming what does not. Open to all, as load balancers and monitors call it; so limited
    per caller's address (HEALTH_THROTTLE_RATE), and every check ends within its timeout."""

    authentication_classes = []
    permission_classes = [AllowAny]
    throttle_classes = [HealthThrottle]

    @extend_schema(
        auth=[],
        responses={
            200: HealthSerializer,
            503: OpenApiResponse(HealthSerializer, description="At least one check failed; `failed` names them."),
            429: OpenApiResponse(
                response={"type": "object", "properties": {"detail": {"type": "string"}}},
                description="Too many requests from this address (HEALTH_THROTTLE_RATE).",
            ),
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


class SchemaView(SpectacularAPIView):
    """/schema, the OpenAPI document that /docs shows: open to all on purpose
    (docs/design.md, "Query API"), so made once per process, not on every request: it
    describes the code, which does not change while the process runs, and making it costs
    far more than any other answer the api gives without credentials. One language and one
    version: `?lang=` and `?version=` make no other document."""

    _schema: ClassVar[dict[str, Any] | None] = None

    def _get_schema_response(self, request: Request) -> Response:
        if SchemaView._schema is None:
            generator = self.generator_class(urlconf=self.urlconf, api_version=None, patterns=self.patterns)
            SchemaView._schema = generator.get_schema(request=request, public=self.serve_public)
        filename = self._get_filename(request, None)
        return Response(data=SchemaView._schema, headers={"Content-Disposition": f'inline; filename="{filename}"'})
