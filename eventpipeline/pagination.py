"""Pagination with the old system's parameters: `page` and `size`, size capped."""

from __future__ import annotations

from rest_framework.pagination import PageNumberPagination


class PageSizePagination(PageNumberPagination):
    page_size = 50
    page_query_param = "page"
    page_size_query_param = "size"
    max_page_size = 1000
