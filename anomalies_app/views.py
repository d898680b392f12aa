"""HTTP doors into the anomaly selectors."""

from __future__ import annotations

from typing import Any

from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from anomalies_app.filters import AnomalyFilter, UserAnomalyFilter
from anomalies_app.models import Anomaly
from anomalies_app.selectors import anomaly_list, user_risk_score
from anomalies_app.serializers import AnomalySerializer, RiskScoreSerializer
from eventpipeline.filters import FilterBackend, StrictOrderingFilter, user_id_from_path
from eventpipeline.schema import AUTHENTICATED_ERRORS, BAD_PARAMETERS, USER_ID_PATH_PARAMETER


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


class UserRiskView(APIView):
    """A user's risk over the last 30 days: the numbers of `SELECT * FROM get_user_risk_score(user_id)`."""

    @extend_schema(
        parameters=[USER_ID_PATH_PARAMETER],
        responses={200: RiskScoreSerializer, 400: BAD_PARAMETERS, **AUTHENTICATED_ERRORS},
    )
    def get(self, request: Request, user_id: str) -> Response:
        return Response(RiskScoreSerializer(user_risk_score(user_id=user_id_from_path(user_id))).data)
