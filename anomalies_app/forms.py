"""The forms of the triage admin: they parse what an analyst typed, and nothing more. What
is allowed (how many days a mute may last, that it needs a reason) is the triage services'
to say, once; their refusals come back here as errors on the field they name."""

from __future__ import annotations

from typing import Any

from django import forms

from anomalies_app.models import RULE_CHOICES
from anomalies_app.rules import UNUSUAL_LOCATION_LOGIN
from anomalies_app.triage import TriageError
from signals_app.messages import BIGINT_MAX


class TriageForm(forms.Form):
    # A service's name for a field, where this form calls it something else.
    service_fields: dict[str, str] = {}
    # What the service returned, once it was called with this form's data.
    result: Any = None

    def add_triage_error(self, error: TriageError) -> None:
        """Show a service's refusal on the field it names, or above the form."""
        name = self.service_fields.get(error.field, error.field)
        self.add_error(name if name in self.fields else None, error.message)


class FalsePositiveForm(TriageForm):
    """Marking anomalies false positive, and what may come with it."""

    mute_days = forms.IntegerField(
        label="Mute the rule for the user for (days)",
        required=False,
        help_text="Blank: no mute. Otherwise 1 to 365 (30 is a usual choice): no new anomalies of this rule for "
        "each user concerned for that many days; detection records them as suppressed instead.",
    )
    mute_reason = forms.CharField(
        label="Why",
        required=False,
        widget=forms.TextInput(attrs={"size": 60}),
        help_text="Needed with a mute: the next analyst will ask.",
    )
    add_known_place = forms.BooleanField(
        label="Add the place to the user's known places",
        required=False,
        help_text=f"Only for {UNUSUAL_LOCATION_LOGIN}: a login from that place is never new again. "
        "Other rules have no place, and this changes nothing for them.",
    )

    def clean(self) -> dict[str, object]:
        cleaned = super().clean() or {}
        if cleaned.get("mute_reason", "").strip() and cleaned.get("mute_days") is None:
            self.add_error("mute_days", "say for how many days to mute, or leave the reason blank")
        return cleaned


class MuteForm(TriageForm):
    """A mute of one rule for one user (the user comes from the page it is on)."""

    service_fields = {"mute_days": "days", "mute_reason": "reason"}

    anomaly_type = forms.ChoiceField(label="Rule", choices=[("", "---------"), *RULE_CHOICES])
    days = forms.IntegerField(label="Days", help_text="1 to 365.")
    reason = forms.CharField(label="Why", widget=forms.TextInput(attrs={"size": 60}))


class MuteAddForm(MuteForm):
    field_order = ["user_id"]

    user_id = forms.IntegerField(label="User id", min_value=0, max_value=BIGINT_MAX)


class KnownPlaceForm(TriageForm):
    """A place added by hand to a user's known places."""

    location = forms.CharField(label="Place", max_length=255, help_text="As logins name it, for example 'Lisbon, PT'.")
    note = forms.CharField(label="Note", required=False, widget=forms.TextInput(attrs={"size": 60}))


class KnownPlaceAddForm(KnownPlaceForm):
    field_order = ["user_id"]

    user_id = forms.IntegerField(label="User id", min_value=0, max_value=BIGINT_MAX)
