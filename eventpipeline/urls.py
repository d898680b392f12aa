from __future__ import annotations

from django.contrib import admin
from django.urls import include, path

from signals_app.views import SignalListView

urlpatterns = [
    path("signals", SignalListView.as_view(), name="signal-list"),
    path("admin/", admin.site.urls),
    path("prometheus/", include("django_prometheus.urls")),
]
