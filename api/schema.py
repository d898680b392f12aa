"""OpenAPI pieces shared by the API's views: the error bodies and the ids in paths."""

from __future__ import annotations

from typing import Any

from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse

_DETAIL = {"type": "object", "properties": {"detail": {"type": "string"}}, "required": ["detail"]}

BAD_PARAMETERS = OpenApiResponse(
    response={
        "type": "object",
        "description": "Each bad parameter, with the reasons.",
        "additionalProperties": {"type": "array", "items": {"type": "string"}},
    },
    description='A bad parameter, e.g. `{"size": ["is capped at 1000: ask for 1000 or fewer rows per page"]}`.',
)

# A request body: bad fields as above, or a body that is not JSON at all.
BAD_BODY = OpenApiResponse(
    response={"anyOf": [BAD_PARAMETERS.response, _DETAIL]},
    description='A bad field, e.g. `{"signals_per_second": ["must be more than 0"]}`, or a body that is not '
    'JSON: `{"detail": "JSON parse error - ..."}`.',
)

# A body sent as anything but JSON.
UNSUPPORTED_MEDIA_TYPE = OpenApiResponse(
    response=_DETAIL, description="The body is not sent as JSON (`Content-Type: application/json`)."
)

# The triage endpoints' answers besides 200 and those of every endpoint.
BAD_TRIAGE = OpenApiResponse(
    response=BAD_BODY.response,
    description="A request that cannot be carried out at all, changing nothing: each bad field with the reasons, "
    'e.g. `{"assigned_to": ["no user has the id 99"]}` or `{"severity": ["is read-only"]}`, or a body that is '
    "not JSON.",
)
FORBIDDEN = OpenApiResponse(
    response=_DETAIL,
    description="The user may not triage anomalies (the permission anomalies_app.triage_anomaly, which the "
    "analysts group gives).",
)
FORBIDDEN_EMITTER = OpenApiResponse(
    response=_DETAIL,
    description="The user may not steer the emitters (the permission emitter.control_emitter, which no group "
    "gives by default).",
)
NOT_FOUND = OpenApiResponse(response=_DETAIL, description='No such anomaly: `{"detail": "no anomaly has the id 5"}`.')
CONFLICT = OpenApiResponse(
    response=BAD_PARAMETERS.response,
    description="The decision makes no sense for this anomaly as it now is, and changed nothing; the field it "
    'was refused on, with the reason: `{"status": ["false positive: reopen it (acknowledge) before marking '
    'it resolved"]}`.',
)

# Every endpoint that needs a user answers these besides its own 200 and 400.
AUTHENTICATED_ERRORS: dict[int, Any] = {
    401: OpenApiResponse(response=_DETAIL, description="No credentials, or a token that is not valid."),
    429: OpenApiResponse(response=_DETAIL, description="Too many requests from this user (API_THROTTLE_RATE)."),
    503: OpenApiResponse(
        response=_DETAIL, description="A statement ran longer than API_STATEMENT_TIMEOUT_MS and was cancelled."
    ),
}

ANOMALY_ID_PATH_PARAMETER = OpenApiParameter(
    "id", OpenApiTypes.INT64, OpenApiParameter.PATH, description="The anomaly's id."
)

USER_ID_PATH_PARAMETER = OpenApiParameter(
    "user_id", OpenApiTypes.INT64, OpenApiParameter.PATH, description="The user's id; a user with no rows is no error."
)
