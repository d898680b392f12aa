"""HTTP doors into the signal selectors."""

from __future__ import annotations

from django.db.models import QuerySet
from django_filters.rest_framework import DjangoFilterBackend
from drf_spectacular.utils import extend_schema
from rest_framework import generics

from eventpipeline.filters import StrictOrderingFilter, user_id_from_path
from eventpipeline.schema import AUTHENTICATED_ERRORS, BAD_PARAMETERS, USER_ID_PATH_PARAMETER
from signals_app.filters import SignalFilter, UserSignalFilter
from signals_app.models import Signal
from signals_app.selectors import signal_list
from signals_app.serializers import SignalSerializer


@extend_schema(responses={200: SignalSerializer, 400: BAD_PARAMETERS, **AUTHENTICATED_ERRORS})
class SignalListView(generics.ListAPIView):
    """Stored signals, newest event first, `page` and `size` as in the system this replaces,
    or `cursor` for deep paging."""

    serializer_class = SignalSerializer
    # The model, for the schema generator; the rows come from get_queryset.
    queryset = Signal.objects.none()
    filter_backends = [DjangoFilterBackend, StrictOrderingFilter]
    filterset_class = SignalFilter
    ordering_fields = ["timestamp", "id"]
    ordering = "-timestamp"

    def get_queryset(self) -> QuerySet[Signal]:
        return signal_list()


@extend_schema(parameters=[USER_ID_PATH_PARAMETER])
class UserSignalListView(SignalListView):
    """One user's signals, newest event first."""

    filterset_class = UserSignalFilter

    def get_queryset(self) -> QuerySet[Signal]:
        return signal_list(user_id=user_id_from_path(self.kwargs["user_id"]))
