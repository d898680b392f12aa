"""Ground truth of the anomaly-injection runs: what `emit_signals --inject-anomalies` sent,
and what `verify_detection` compares the detected anomalies with."""

from __future__ import annotations

from django.db import models
from django.utils import timezone


class InjectionRun(models.Model):
    """One `emit_signals --inject-anomalies` run: what `verify_detection` checks against.
    Its users (background and scenarios) are its own id range, so other traffic on the
    same pipeline does not blur the comparison."""

    seed = models.BigIntegerField(null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now)
    first_user_id = models.BigIntegerField()
    last_user_id = models.BigIntegerField()
    events = models.PositiveBigIntegerField(default=0, help_text="Events the emitter had delivered when it ended.")
    finished = models.BooleanField(default=False)

    class Meta:
        db_table = "injection_runs"
        # The app's permission to steer the running emitters (POST /emitter/...), carried by
        # its first model as Django needs a model for it. Neither analysts' nor rule editors'.
        permissions = [("control_emitter", "Can change the running emitters' rate and start bursts")]

    def __str__(self) -> str:
        return f"injection run {self.pk}"


class InjectedScenario(models.Model):
    run = models.ForeignKey(InjectionRun, on_delete=models.CASCADE, related_name="scenarios")
    kind = models.CharField(max_length=64)
    user_id = models.BigIntegerField()
    # The rule the scenario must raise, once; empty for a near miss, which must raise nothing.
    anomaly_type = models.CharField(max_length=64, blank=True, default="")
    first_event_ms = models.BigIntegerField()
    last_event_ms = models.BigIntegerField()
    events = models.PositiveIntegerField()

    class Meta:
        db_table = "injected_scenarios"

    def __str__(self) -> str:
        return f"{self.kind} for user {self.user_id}"
