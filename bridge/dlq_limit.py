"""When dead letters are a poison flood: the refused share of the last minute, pure, no I/O.

Like arroyo's `DlqLimit` (its `max_invalid_ratio`), but over a sliding window rather than
since the start, so that an old burst does not count for ever: records read and refused
are counted in one-second buckets, and the limit is judged on the buckets of the last
`window_s` seconds, never on fewer than `min_records` records (one bad record out of two
is not a flood).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass


@dataclass
class _Second:
    second: int
    read: int = 0
    refused: int = 0


class DeadLetterWindow:
    def __init__(self, *, max_ratio: float, min_records: int, window_s: int = 60, reasons_kept: int = 3) -> None:
        self.max_ratio = max_ratio
        self.min_records = min_records
        self.window_s = window_s
        self._seconds: deque[_Second] = deque()
        self._reasons_kept = reasons_kept
        # The last distinct reasons, oldest first (a dict keeps insertion order).
        self._reasons: dict[str, None] = {}

    def add(self, *, now: float, accepted: int, reasons: Iterable[str]) -> None:
        """Count one batch: `accepted` good records and one reason per refused record."""
        second = int(now)
        if not self._seconds or self._seconds[-1].second != second:
            self._seconds.append(_Second(second))
        bucket = self._seconds[-1]
        refused = 0
        for reason in reasons:
            refused += 1
            self._reasons.pop(reason, None)
            self._reasons[reason] = None
            if len(self._reasons) > self._reasons_kept:
                del self._reasons[next(iter(self._reasons))]
        bucket.read += accepted + refused
        bucket.refused += refused

    def counts(self, *, now: float) -> tuple[int, int]:
        """(refused, read) over the last `window_s` seconds, `now`'s second included."""
        oldest = int(now) - self.window_s + 1
        while self._seconds and self._seconds[0].second < oldest:
            self._seconds.popleft()
        return sum(s.refused for s in self._seconds), sum(s.read for s in self._seconds)

    def exceeded(self, *, now: float) -> bool:
        """At least `max_ratio` of at least `min_records` records refused in the window.
        (At least, so that 1.0 means "stop when every record is refused".)"""
        refused, read = self.counts(now=now)
        return read >= self.min_records and refused / read >= self.max_ratio

    def last_reasons(self) -> list[str]:
        """The last distinct reasons, newest first."""
        return list(reversed(self._reasons))
