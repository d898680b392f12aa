from __future__ import annotations

from django.apps import AppConfig


class AnomaliesAppConfig(AppConfig):
    name = "anomalies_app"
    verbose_name = "Anomalies"
