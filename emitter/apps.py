from __future__ import annotations

from django.apps import AppConfig


class EmitterConfig(AppConfig):
    name = "emitter"
    verbose_name = "Emitter"
