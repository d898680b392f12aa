"""Query parameters of the anomaly lists (DESIGN.md "Query API")."""

from __future__ import annotations

from django_filters import rest_framework as filters

from anomalies_app.models import Anomaly, AnomalyStatus, Severity
from anomalies_app.rules import DEFAULT_RULES
from eventpipeline.filters import BigIntegerFilter, FilterSet


class UserAnomalyFilter(FilterSet):
    """The filters of /users/{user_id}/anomalies: the user is in the path."""

    severity = filters.ChoiceFilter(choices=Severity.choices, help_text="The anomaly's severity.")
    anomaly_type = filters.ChoiceFilter(
        choices=[(anomaly_type, anomaly_type) for anomaly_type in DEFAULT_RULES], help_text="The rule that raised it."
    )
    status = filters.ChoiceFilter(choices=AnomalyStatus.choices, help_text="Where triage has got to.")

    class Meta:
        model = Anomaly
        fields: list[str] = []


class AnomalyFilter(UserAnomalyFilter):
    user_id = BigIntegerFilter(field_name="user_id", help_text="Only this user's anomalies.")
