"""HTTP doors into the signal selectors."""

from __future__ import annotations

from django.db.models import QuerySet
from rest_framework import generics

from signals_app.models import Signal
from signals_app.selectors import signal_list
from signals_app.serializers import SignalSerializer


class SignalListView(generics.ListAPIView):
    """Stored signals, newest first, `page` and `size` as in the system this replaces."""

    serializer_class = SignalSerializer

    def get_queryset(self) -> QuerySet[Signal]:
        return signal_list()
