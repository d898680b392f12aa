"""Who may use which door of the API, beyond being a user."""

from __future__ import annotations

from typing import Any

from rest_framework.permissions import BasePermission
from rest_framework.request import Request

from anomalies_app.triage import can_triage
from emitter.services import EMITTER_CONTROL_PERMISSION


class CanTriage(BasePermission):
    """The triage permission, as the admin asks it (docs/design.md, "Roles"). A request
    without valid credentials still gets 401: DRF answers that whenever a permission says
    no and no authenticator succeeded."""

    message = (
        "you may not triage anomalies: that takes the permission anomalies_app.triage_anomaly, "
        "which the analysts group gives"
    )

    def has_permission(self, request: Request, view: Any) -> bool:
        return can_triage(request.user)


class CanControlEmitter(BasePermission):
    """Steering the running emitters fills Kafka and PostgreSQL with synthetic users: a
    permission of its own, which neither analysts nor rule editors have."""

    message = (
        f"you may not steer the emitters: that takes the permission {EMITTER_CONTROL_PERMISSION}, "
        "given to a user or group in the admin"
    )

    def has_permission(self, request: Request, view: Any) -> bool:
        user = request.user
        return bool(user is not None and user.is_active and user.has_perm(EMITTER_CONTROL_PERMISSION))
