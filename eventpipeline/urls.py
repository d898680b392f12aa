from __future__ import annotations

from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularSwaggerView

from api.views import (
    AnomaliesTriageView,
    AnomalyListView,
    AnomalyView,
    EmitterBurstView,
    EmitterConfigureView,
    HealthView,
    MetricsView,
    SchemaView,
    SignalListView,
    UserAnomalyListView,
    UserRiskView,
    UserSignalListView,
)

# `<str:user_id>`, `<str:id>`: an id that is not a number is a 400 naming it, not a 404.
# "anomalies/triage" comes before "anomalies/<str:id>", which would take it too.
urlpatterns = [
    path("signals", SignalListView.as_view(), name="signal-list"),
    path("anomalies", AnomalyListView.as_view(), name="anomaly-list"),
    path("anomalies/triage", AnomaliesTriageView.as_view(), name="anomalies-triage"),
    path("anomalies/<str:id>", AnomalyView.as_view(), name="anomaly"),
    path("users/<str:user_id>/signals", UserSignalListView.as_view(), name="user-signal-list"),
    path("users/<str:user_id>/anomalies", UserAnomalyListView.as_view(), name="user-anomaly-list"),
    path("users/<str:user_id>/risk", UserRiskView.as_view(), name="user-risk"),
    path("metrics", MetricsView.as_view(), name="metrics"),
    path("health", HealthView.as_view(), name="health"),
    path("emitter/configure", EmitterConfigureView.as_view(), name="emitter-configure"),
    path("emitter/burst", EmitterBurstView.as_view(), name="emitter-burst"),
    path("schema", SchemaView.as_view(), name="schema"),
    path("docs", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
    path("api-auth/", include("rest_framework.urls")),
    path("admin/", admin.site.urls),
    path("prometheus/", include("django_prometheus.urls")),
]
