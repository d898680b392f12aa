"""Paging the admin's lists of large tables without counting them."""

from __future__ import annotations

from typing import Any

from django.core.paginator import Paginator
from django.utils.functional import cached_property

COUNT_CAP = 10_000


class CappedCountPaginator(Paginator):
    """Counts at most COUNT_CAP + 1 matching rows (`SELECT count(*) FROM (... LIMIT n)`),
    so that a list of ten million signals, filtered or not, costs a few milliseconds, not
    a scan of the table. Past the cap the list says "more than 10,000", and its pages stop
    at the cap's: nobody pages a hundred pages deep; they filter or search instead
    (docs/triage.md, "Large lists")."""

    @cached_property
    def capped(self) -> bool:
        return self._counted > COUNT_CAP

    @cached_property
    def _counted(self) -> int:
        rows: Any = self.object_list
        if hasattr(rows, "query"):
            return int(rows.order_by()[: COUNT_CAP + 1].count())
        return len(rows)

    @cached_property
    def count(self) -> int:
        return min(self._counted, COUNT_CAP)
