"""Per-user sliding windows in Redis, on event time.

Each user has one sorted set per kind of counted event (`login`, `purchase`,
`api_failure`): the member is the event id (a login's with a leading `f` or `s`, failed
or successful), the score its event time in ms. One Lua script adds a
batch's events and reads back the stretches the batch needs, atomically:

- ZADD NX makes adding idempotent: an event delivered twice is one member.
- Scores are event times, so a late or out-of-order event lands where it belongs.
- Each set is trimmed to `keep` ms behind its newest event and expires `keep` ms after
  its last write: memory follows the event rate times the window, not the user count.
- The script first checks the *epoch*: a key naming this generation of windows. A Redis
  restart or flush loses it, and the windows with it. The next batch starts a new epoch,
  and each user whose windows must reach back before it is filled in once from
  PostgreSQL, which holds every event whose offsets were committed; the events not yet
  committed are delivered again by the bridge. So losing Redis loses no count.
"""

from __future__ import annotations

import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import redis
from django.conf import settings

from anomalies_app.detection import WindowEntry
from anomalies_app.rules import LOGIN

# How long a user's known places stay cached after their last new one.
PLACES_CACHE_MS = 86_400_000
ACTIVE_COUNT_EVERY_S = 5.0
# Windows trim on event time but expire on the clock: an hour more than they keep, so a
# pipeline stopped for up to that long still finds them when it starts again.
IDLE_GRACE_MS = 3_600_000

# Add members, trim, set expiry, then read each window's stretch; all or nothing.
# KEYS[1] is the epoch, then one key per window, then the users' epoch markers to set.
# ARGV: epoch, window count, then per window: lo, hi, keep, ttl, and its new entries as
# one string "score member score member ..."; then the markers' ttl. Each window's
# stretch comes back as one string "member score member score ...". (One argument and one
# reply per window, not two per entry: packing and parsing them in redis-py cost more
# than the script; docs/performance.md, "Detection scripts in Redis".)
RECORD_SCRIPT = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then
  return redis.error_reply('EPOCH windows were lost (Redis restarted or flushed)')
end
local windows = tonumber(ARGV[2])
local a = 3
local out = {}
for i = 1, windows do
  local key = KEYS[1 + i]
  local lo, hi, keep, ttl = ARGV[a], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3]
  local chunk = {}
  for score, member in string.gmatch(ARGV[a + 4], '(%S+) (%S+)') do
    chunk[#chunk + 1] = score
    chunk[#chunk + 1] = member
    if #chunk >= 1000 then
      redis.call('ZADD', key, 'NX', unpack(chunk))
      chunk = {}
    end
  end
  if #chunk > 0 then
    redis.call('ZADD', key, 'NX', unpack(chunk))
  end
  a = a + 5
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  if newest[2] then
    redis.call('ZREMRANGEBYSCORE', key, '-inf', string.format('(%d', tonumber(newest[2]) - keep))
  end
  redis.call('PEXPIRE', key, ttl)
  out[i] = table.concat(redis.call('ZRANGEBYSCORE', key, lo, hi, 'WITHSCORES'), ' ')
end
local marker_ttl = ARGV[a]
for i = 2 + windows, #KEYS do
  redis.call('SET', KEYS[i], '1', 'PX', marker_ttl)
end
return out
"""

# The places cache and the active-user sketch, one call each per batch. Arguments and
# replies go as one JSON document (cjson in Redis): a command per user, or an argument
# per place, cost more to pack in redis-py than the work they asked for
# (docs/performance.md, "Detection scripts in Redis").
# KEYS: the users' places hashes. ARGV[1]: per key, the places to look up. Reply: per
# key, the cached values (false where none).
# (Lists go to commands in chunks: Lua's unpack stops at a few thousand values.)
PLACES_GET_SCRIPT = """
local asked = cjson.decode(ARGV[1])
local out = {}
for i, places in ipairs(asked) do
  local values = {}
  for j = 1, #places, 1000 do
    for _, value in ipairs(redis.call('HMGET', KEYS[i], unpack(places, j, math.min(j + 999, #places)))) do
      values[#values + 1] = value
    end
  end
  out[i] = values
end
return cjson.encode(out)
"""
# KEYS: the users' places hashes. ARGV[1]: per key, "place value place value ..." as a
# list; ARGV[2]: how long the hash lives after its last new place (ms).
PLACES_SET_SCRIPT = """
local sets = cjson.decode(ARGV[1])
for i, fields in ipairs(sets) do
  for j = 1, #fields, 1000 do
    redis.call('HSET', KEYS[i], unpack(fields, j, math.min(j + 999, #fields)))
  end
  redis.call('PEXPIRE', KEYS[i], ARGV[2])
end
return #sets
"""
# KEYS: this minute's sketch, then the earlier minutes'. ARGV: the user ids (JSON list),
# the sketch's expiry (s), and 1 to count the users of all the minutes.
ACTIVE_SCRIPT = """
local users = cjson.decode(ARGV[1])
for i = 1, #users, 1000 do
  redis.call('PFADD', KEYS[1], unpack(users, i, math.min(i + 999, #users)))
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
if ARGV[3] == '1' then
  return redis.call('PFCOUNT', unpack(KEYS))
end
return 0
"""


class EpochLost(Exception):
    """Redis lost the windows between reading the epoch and writing to it."""


@dataclass(frozen=True)
class Epoch:
    name: str
    # Views that reach back before this time (ms) need the user's history from
    # PostgreSQL; 0 when there was none to load when the epoch began.
    history_before_ms: int


@dataclass(frozen=True)
class Reach:
    """How much of a kind's window the rules need: `radius` ms either side of an event to
    judge it, and `keep` ms behind the newest event so that events up to the allowed
    lateness still find their neighbours."""

    radius_ms: int
    keep_ms: int


def member_of(entry: WindowEntry, kind: str) -> str:
    if kind == LOGIN:
        return ("f" if entry.failed else "s") + entry.event_id
    return entry.event_id


def _entry_of(member: str, score: float, kind: str) -> WindowEntry:
    if kind == LOGIN:
        return WindowEntry(int(score), member[1:], member[0] == "f")
    return WindowEntry(int(score), member)


def entries_of(reply: bytes, kind: str) -> list[WindowEntry]:
    """A window's stretch as the script returns it: "member score member score ..."."""
    if not reply:
        return []
    parts = reply.decode().split(" ")
    return [_entry_of(parts[i], float(parts[i + 1]), kind) for i in range(0, len(parts), 2)]


# (user id, kind) -> entries
Windows = dict[tuple[int, str], list[WindowEntry]]


class WindowStore:
    """The windows of all users in one Redis. Thread-safe (redis-py pools connections).

    `load_history(user_ids, since_ms)` returns the counted events of those users from
    PostgreSQL, as {(user id, kind): entries}; `history_exists()` says whether any is stored.
    """

    def __init__(
        self,
        client: redis.Redis,
        *,
        prefix: str,
        load_history: Callable[[list[int], int], Windows],
        history_exists: Callable[[], bool],
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.prefix = prefix
        self.load_history = load_history
        self.history_exists = history_exists
        self.clock = clock
        self.record_script = client.register_script(RECORD_SCRIPT)
        self.places_get_script = client.register_script(PLACES_GET_SCRIPT)
        self.places_set_script = client.register_script(PLACES_SET_SCRIPT)
        self.active_script = client.register_script(ACTIVE_SCRIPT)
        self.epoch_key = f"{prefix}:epoch"
        self._epoch: Epoch | None = None
        self._counted_at = float("-inf")
        self._active = 0

    def key(self, user_id: int, kind: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:{kind}"

    def record(self, additions: Windows, reach: dict[str, Reach]) -> Windows:
        """Add the batch's entries and return, per (user, kind), the window from `radius`
        before the earliest added entry to `radius` after the latest."""
        for _attempt in range(3):
            # The epoch read last time, if any: the script checks it, so a stale one
            # costs a retry, not a wrong count.
            epoch = self._epoch or self.epoch()
            try:
                return self._record(epoch, additions, reach)
            except EpochLost:
                self._epoch = None
        raise EpochLost("the windows' epoch changed three times in a row")

    def epoch(self) -> Epoch:
        """The current epoch; a new one if Redis lost it. A new epoch needs history from
        PostgreSQL only if PostgreSQL holds any events (a first start has none to load)."""
        raw = self.client.get(self.epoch_key)
        if raw is None:
            history_before = int(self.clock() * 1000) if self.history_exists() else 0
            self.client.set(self.epoch_key, f"{uuid.uuid4().hex}:{history_before}", nx=True)
            raw = self.client.get(self.epoch_key)
            if raw is None:
                raise EpochLost("the epoch vanished as it was made")
        name = raw.decode() if isinstance(raw, bytes) else str(raw)
        self._epoch = Epoch(name, int(name.rpartition(":")[2]))
        return self._epoch

    def _record(self, epoch: Epoch, additions: Windows, reach: dict[str, Reach]) -> Windows:
        bounds = {
            window: (
                min(entry.timestamp for entry in entries) - reach[window[1]].radius_ms,
                max(entry.timestamp for entry in entries) + reach[window[1]].radius_ms,
            )
            for window, entries in additions.items()
            if entries
        }
        filled, history = self._history(epoch, additions, reach)
        entries_by_window: dict[tuple[int, str], list[WindowEntry]] = defaultdict(list)
        for window in bounds:
            entries_by_window[window].extend(additions[window])
        for window, entries in history.items():
            entries_by_window[window].extend(entries)
        windows = sorted(entries_by_window)
        if not windows:
            return {}
        keys: list[str] = [self.epoch_key]
        args: list[Any] = [epoch.name, len(windows)]
        for user_id, kind in windows:
            keys.append(self.key(user_id, kind))
            lo, hi = bounds.get((user_id, kind), (0, -1))
            keep = reach[kind].keep_ms
            entries = entries_by_window[(user_id, kind)]
            added = " ".join(f"{entry.timestamp} {member_of(entry, kind)}" for entry in entries)
            args += [lo, hi, keep, keep + IDLE_GRACE_MS, added]
        keys += [self._marker(epoch, user_id) for user_id in filled]
        args.append(max(r.keep_ms for r in reach.values()))
        try:
            replies = self.record_script(keys=keys, args=args)
        except redis.ResponseError as error:
            if str(error).startswith("EPOCH"):
                raise EpochLost(str(error)) from error
            raise
        result: Windows = {}
        for (user_id, kind), reply in zip(windows, replies, strict=True):
            if (user_id, kind) in bounds:
                result[(user_id, kind)] = entries_of(reply, kind)
        return result

    def _history(self, epoch: Epoch, additions: Windows, reach: dict[str, Reach]) -> tuple[list[int], Windows]:
        """The users to fill in from PostgreSQL (their views reach back before the epoch,
        and they were not filled in during it), and their history, every kind at once."""
        if not epoch.history_before_ms:
            return [], {}
        widest = max(r.radius_ms for r in reach.values())
        earliest: dict[int, int] = {}
        for (user_id, _), entries in additions.items():
            for entry in entries:
                earliest[user_id] = min(earliest.get(user_id, entry.timestamp), entry.timestamp)
        reaching = sorted(user_id for user_id, first in earliest.items() if first - widest < epoch.history_before_ms)
        if not reaching:
            return [], {}
        markers = self.client.mget([self._marker(epoch, user_id) for user_id in reaching])
        missing = [user_id for user_id, marker in zip(reaching, markers, strict=True) if marker is None]
        if not missing:
            return [], {}
        return missing, self.load_history(missing, min(earliest[user_id] for user_id in missing) - widest)

    def _marker(self, epoch: Epoch, user_id: int) -> str:
        return f"{self.prefix}:{{{user_id}}}:filled:{epoch.name}"

    def read(self, spans: dict[tuple[int, str], tuple[int, int]]) -> Windows:
        """The windows as they are now, each from `lo` to `hi` (event time, ms)."""
        pipe = self.client.pipeline(transaction=False)
        for (user_id, kind), (lo, hi) in spans.items():
            pipe.zrangebyscore(self.key(user_id, kind), lo, hi, withscores=True)
        return {
            (user_id, kind): [_entry_of(member.decode(), score, kind) for member, score in reply]
            for (user_id, kind), reply in zip(spans, pipe.execute(), strict=True)
        }

    def places_known(self, first_logins: dict[tuple[int, str], WindowEntry]) -> set[tuple[int, str]]:
        """The (user, place) pairs whose first login, as last read from PostgreSQL, is
        earlier than the given one: nothing to record or decide for those. (The first
        login itself always goes to PostgreSQL, so a retry after a failed publish finds
        its anomaly again.) A cache only:
        the value kept is never earlier than the truth (first logins only move earlier),
        so a miss or a stale value just sends the login to PostgreSQL."""
        by_user: dict[int, list[str]] = {}
        for user_id, place in first_logins:
            by_user.setdefault(user_id, []).append(place)
        keys = [self._places_key(user_id) for user_id in by_user]
        replies = orjson.loads(self.places_get_script(keys=keys, args=[orjson.dumps(list(by_user.values()))]))
        known = set()
        for (user_id, places), cached_values in zip(by_user.items(), replies, strict=True):
            for place, cached in zip(places, cached_values, strict=True):
                if cached:
                    timestamp, _, event_id = cached.partition(" ")
                    entry = first_logins[(user_id, place)]
                    if (int(timestamp), event_id) < (entry.timestamp, entry.event_id):
                        known.add((user_id, place))
        return known

    def places_remember(self, places: dict[int, dict[str, WindowEntry]]) -> None:
        if not places:
            return
        keys = [self._places_key(user_id) for user_id in places]
        fields = [
            [part for place, entry in first_logins.items() for part in (place, f"{entry.timestamp} {entry.event_id}")]
            for first_logins in places.values()
        ]
        self.places_set_script(keys=keys, args=[orjson.dumps(fields), PLACES_CACHE_MS])

    def _places_key(self, user_id: int) -> str:
        return f"{self.prefix}:{{{user_id}}}:places"

    def active_users(self, user_ids: set[int], *, minutes: int | None = None) -> int:
        """Count these users as active this minute; return about how many users were
        active in the last `minutes` (HyperLogLog: 12 KB a minute, about 1% off)."""
        minutes = minutes or settings.ACTIVE_SESSION_MINUTES
        now = self.clock()
        minute = int(now // 60)
        keys = [f"{self.prefix}:active:{minute - back}" for back in range(minutes)]
        # Counting merges the minutes' sketches, the costly part: every few seconds is enough.
        counting = now - self._counted_at >= ACTIVE_COUNT_EVERY_S
        reply = self.active_script(
            keys=keys,
            args=[orjson.dumps([str(user_id) for user_id in user_ids]), (minutes + 1) * 60, 1 if counting else 0],
        )
        if counting:
            self._counted_at, self._active = now, int(reply)
        return self._active
