"""The API's JSON renderer writes what DRF's would (api/renderers.py)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal

import orjson
import pytest
from django.utils.translation import gettext_lazy
from rest_framework.exceptions import ErrorDetail
from rest_framework.renderers import JSONRenderer as DRFJSONRenderer

from api.renderers import JSONRenderer

DATA = {
    "moment": datetime(2026, 11, 29, 22, 44, 20, 123456, tzinfo=UTC),
    "day": date(2026, 11, 29),
    "span": timedelta(seconds=90),
    "amount": Decimal("12.50"),
    "lazy": gettext_lazy("This field is required."),
    "error": [ErrorDetail("must be a whole number", code="invalid")],
    "id": uuid.UUID("21e82305-7dbb-4ac5-ab26-7b6adac1b141"),
    "text": "line\u2028and\u2029paragraph, ünïcode",
    "nested": {"list": [1, 2.5, None, True], 7: "an int key"},
}


def test_compact_json_is_byte_for_byte_drfs() -> None:
    assert JSONRenderer().render(DATA) == DRFJSONRenderer().render(DATA)


@pytest.mark.parametrize("media_type", ["application/json; indent=4", "application/json; indent=2"])
def test_indented_json_is_drfs_and_takes_json_text(media_type: str) -> None:
    assert JSONRenderer().render(DATA, media_type) == DRFJSONRenderer().render(DATA, media_type)
    with_text = JSONRenderer().render({"payload": orjson.Fragment('{"a": [1, 2]}')}, media_type)
    assert with_text == DRFJSONRenderer().render({"payload": {"a": [1, 2]}}, media_type)


def test_nothing_is_empty() -> None:
    assert JSONRenderer().render(None) == b""
