"""The query API's JSON."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson
from rest_framework import renderers
from rest_framework.utils import encoders

_OPTIONS = orjson.OPT_PASSTHROUGH_DATETIME | orjson.OPT_NON_STR_KEYS


class JSONRenderer(renderers.JSONRenderer):
    """DRF's JSON renderer, with compact JSON written by orjson, for the CPU the standard
    library's encoder took on every page (docs/performance.md, "JSON rendering"). The
    output is the same as DRF's compact, UTF-8 JSON: anything orjson does not write itself
    (dates and times included, so that they keep DRF's format; lazy strings, decimals) goes
    through DRF's encoder, and U+2028 and U+2029 are escaped as DRF escapes them. Indented
    JSON (the browsable API, `Accept: application/json; indent=2`) is DRF's own. Where they
    differ, no endpoint produces the value: NaN and infinities (orjson writes null, DRF
    refuses them), floats below 1e-4 (written `1e-7` rather than `1e-07`) and integers
    beyond 64 bits (orjson refuses them)."""

    def render(
        self, data: Any, accepted_media_type: str | None = None, renderer_context: Mapping[str, Any] | None = None
    ) -> bytes:
        if data is None:
            return b""
        text = orjson.dumps(data, default=_DRF_ENCODER.default, option=_OPTIONS)
        if self.get_indent(accepted_media_type or "", renderer_context or {}) is not None:
            # Through orjson first: the list rows carry JSON text (orjson.Fragment).
            return super().render(orjson.loads(text), accepted_media_type, renderer_context)
        return text.replace("\u2028".encode(), b"\\u2028").replace("\u2029".encode(), b"\\u2029")


_DRF_ENCODER = encoders.JSONEncoder()
