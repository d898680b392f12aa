"""HTTP doors into the signal selectors, and into the emitter control."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from django.conf import settings
from django.db.models import QuerySet
from drf_spectacular.utils import extend_schema
from rest_framework import generics
from rest_framework.parsers import JSONParser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from eventpipeline.filters import FilterBackend, StrictOrderingFilter, user_id_from_path
from eventpipeline.schema import (
    AUTHENTICATED_ERRORS,
    BAD_BODY,
    BAD_PARAMETERS,
    UNSUPPORTED_MEDIA_TYPE,
    USER_ID_PATH_PARAMETER,
)
from signals_app.filters import SignalFilter, UserSignalFilter
from signals_app.models import Signal
from signals_app.selectors import EmitterControl, signal_list
from signals_app.serializers import (
    EmitterBurstSerializer,
    EmitterConfigureSerializer,
    EmitterControlSerializer,
    SignalSerializer,
)
from signals_app.services import emitter_burst, emitter_configure


@extend_schema(responses={200: SignalSerializer, 400: BAD_PARAMETERS, **AUTHENTICATED_ERRORS})
class SignalListView(generics.ListAPIView):
    """Stored signals, newest event first, `page` and `size` as in the system this replaces,
    or `cursor` for deep paging."""

    serializer_class = SignalSerializer
    # The model, for the schema generator; the rows come from get_queryset.
    queryset = Signal.objects.none()
    filter_backends = [FilterBackend, StrictOrderingFilter]
    filterset_class = SignalFilter
    ordering_fields = ["timestamp", "id"]
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


class EmitterConfigureView(APIView):
    """Set the running emitters' rate and burst mode; a field left out stays as it is.
    They follow within `follows_within_seconds`."""

    parser_classes = [JSONParser]  # the body is JSON, as DESIGN.md's examples send it

    @extend_schema(
        request=EmitterConfigureSerializer,
        responses={200: EmitterControlSerializer, 400: BAD_BODY, 415: UNSUPPORTED_MEDIA_TYPE, **AUTHENTICATED_ERRORS},
    )
    def post(self, request: Request) -> Response:
        asked = EmitterConfigureSerializer(data=request.data)
        asked.is_valid(raise_exception=True)
        return Response(_control_body(emitter_configure(**asked.validated_data)))


class EmitterBurstView(APIView):
    """Multiply the running emitters' rate for a while, then go back to it."""

    parser_classes = [JSONParser]

    @extend_schema(
        request=EmitterBurstSerializer,
        responses={200: EmitterControlSerializer, 400: BAD_BODY, 415: UNSUPPORTED_MEDIA_TYPE, **AUTHENTICATED_ERRORS},
    )
    def post(self, request: Request) -> Response:
        asked = EmitterBurstSerializer(data=request.data)
        asked.is_valid(raise_exception=True)
        return Response(_control_body(emitter_burst(**asked.validated_data)))
