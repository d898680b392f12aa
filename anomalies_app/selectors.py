"""Read-only queries for detection."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from anomalies_app.models import Rule
from anomalies_app.rules import DEFAULT_RULES, RuleSettings


def rule_settings_list() -> dict[str, RuleSettings]:
    """The rules as stored, on top of their definitions (the comparison is not stored)."""
    stored = {
        rule.anomaly_type: replace(
            DEFAULT_RULES[rule.anomaly_type],
            enabled=rule.enabled,
            threshold=rule.threshold,
            window_seconds=rule.window_seconds,
            severity=rule.severity,
        )
        for rule in Rule.objects.filter(anomaly_type__in=DEFAULT_RULES)
    }
    return {anomaly_type: stored.get(anomaly_type, default) for anomaly_type, default in DEFAULT_RULES.items()}


class RuleBook:
    """The rules a worker applies, read again at most every `refresh_seconds`: an edit in
    the admin reaches every worker within that time, without a restart."""

    def __init__(
        self,
        *,
        refresh_seconds: float,
        load: Callable[[], dict[str, RuleSettings]] = rule_settings_list,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.refresh_seconds = refresh_seconds
        self.load = load
        self.clock = clock
        self._rules: dict[str, RuleSettings] = {}
        self._loaded_at: float | None = None

    def rules(self) -> dict[str, RuleSettings]:
        now = self.clock()
        if self._loaded_at is None or now - self._loaded_at >= self.refresh_seconds:
            self._rules = self.load()
            self._loaded_at = now
        return self._rules
