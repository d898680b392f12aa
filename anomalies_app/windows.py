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

On a Redis Cluster a script may only touch keys of one hash slot. Every key of a user
carries the user id as its hash tag (`{42}`), so a user's keys share a slot; each slot has
an epoch of its own (a key whose tag lands in that slot), and a batch is one script call
per slot it touches, sent in one pipeline (a round trip per node). A node that restarts
empty loses its slots' epochs with their windows, and only its users are filled in again.
On one Redis there is one epoch and one call per batch, as before.

When the windows are not on the Redis of the Celery results (a cluster, or a
`DETECT_REDIS_URL` of its own), losing the windows no longer loses the task results with
them, and a batch analysed into windows that are then lost, but not yet stored, would be
in neither the windows nor PostgreSQL when its users are filled in. So the results'
Redis keeps a *generation* (`WindowsGeneration`), renamed before any epoch is made; a
detect task reports the generation it read before touching the windows, and the bridge
has the batch analysed again if the generation changed by the time the batch is both
stored and analysed (docs/architecture.md, "Detection").
"""

from __future__ import annotations

import functools
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
import redis
from django.conf import settings
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.crc import REDIS_CLUSTER_HASH_SLOTS, key_slot

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

    @classmethod
    def of(cls, raw: bytes) -> Epoch:
        name = raw.decode()
        return cls(name, int(name.rpartition(":")[2]))


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
T = TypeVar("T")


# Replies that redis-py's cluster pipeline deals with, and a plain pipeline cannot: a slot
# moved (MOVED, ASK) or moving (TRYAGAIN), or the cluster down for now (CLUSTERDOWN).
REDIRECTED = (redis.exceptions.AskError, redis.exceptions.TryAgainError, redis.exceptions.ClusterDownError)


def _raised(replies: list[Any]) -> list[Any]:
    """The replies of a pipeline run with raise_on_error=False, or the first error."""
    for reply in replies:
        if isinstance(reply, Exception):
            raise reply
    return replies


def user_slot(user_id: int) -> int:
    """The cluster slot of every key of this user: the slot of its hash tag, the user id."""
    return key_slot(str(user_id).encode())


@functools.cache
def slot_tags() -> tuple[str, ...]:
    """Per cluster slot, the smallest number whose text, as a hash tag, lands in it: the
    tag of that slot's epoch key (about 110,000 numbers are tried, once per process)."""
    tags: dict[int, str] = {}
    number = 0
    while len(tags) < REDIS_CLUSTER_HASH_SLOTS:
        tags.setdefault(key_slot(str(number).encode()), str(number))
        number += 1
    return tuple(tags[slot] for slot in range(REDIS_CLUSTER_HASH_SLOTS))


def by_slot(items: Iterable[T], user_of: Callable[[T], int]) -> dict[int, list[T]]:
    """The items grouped by the cluster slot of their user, in their order."""
    groups: dict[int, list[T]] = defaultdict(list)
    for item in items:
        groups[user_slot(user_of(item))].append(item)
    return dict(groups)


def _place_value(entry: WindowEntry) -> str:
    """A place's first login as the places cache keeps it: "timestamp event_id"."""
    return f"{entry.timestamp} {entry.event_id}"


def detect_redis(url: str) -> redis.Redis | RedisCluster:
    """The client for the windows' Redis at `url`: a cluster client if the server says it
    is a node of a Redis Cluster (`INFO cluster`, asked once per process), so that
    `DETECT_REDIS_URL` may name any node of a cluster as it names a Redis."""
    client = redis.Redis.from_url(url)
    if not client.info("cluster").get("cluster_enabled"):
        return client
    client.close()
    return RedisCluster.from_url(url)


def generation_key(prefix: str) -> str:
    """Where the windows' generation lives, on the Redis of the Celery results."""
    return f"{prefix}:generation"


class WindowsGeneration:
    """A random name for the windows as they are, on the Redis of the Celery results:
    renamed before any epoch is made, so before any user is filled in from PostgreSQL
    after windows were lost. A name read before a batch touched the windows and still the
    same once the batch is stored means nothing the batch wrote was lost unseen: a later
    filling-in finds the batch in PostgreSQL. Never absent when read: a results Redis that
    lost it gets a new one, which no task read before."""

    def __init__(self, client: redis.Redis, key: str) -> None:
        self.client = client
        self.key = key

    def current(self) -> str:
        raw = self.client.get(self.key)
        if raw is None:
            self.client.set(self.key, uuid.uuid4().hex, nx=True)
            raw = self.client.get(self.key)
            if raw is None:
                raise EpochLost("the windows' generation vanished as it was made")
        return raw.decode() if isinstance(raw, bytes) else str(raw)

    def renew(self) -> None:
        self.client.set(self.key, uuid.uuid4().hex)


class WindowStore:
    """The windows of all users in one Redis or one Redis Cluster. Thread-safe (redis-py
    pools connections).

    `load_history(user_ids, since_ms)` returns the counted events of those users from
    PostgreSQL, as {(user id, kind): entries}; `history_exists()` says whether any is stored.
    `generations`: when the windows are not on the Redis of the Celery results (see the
    module's docstring); None when they are.
    """

    def __init__(
        self,
        client: redis.Redis | RedisCluster,
        *,
        prefix: str,
        load_history: Callable[[list[int], int], Windows],
        history_exists: Callable[[], bool],
        generations: WindowsGeneration | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.client = client
        self.cluster = isinstance(client, RedisCluster)
        self.prefix = prefix
        self.load_history = load_history
        self.history_exists = history_exists
        self.generations = generations
        self.clock = clock
        self.record_script = client.register_script(RECORD_SCRIPT)
        self.places_get_script = client.register_script(PLACES_GET_SCRIPT)
        self.places_set_script = client.register_script(PLACES_SET_SCRIPT)
        self.active_script = client.register_script(ACTIVE_SCRIPT)
        # Per shard (a cluster slot; on one Redis, the one shard 0), its epoch as last read.
        self._epochs: dict[int, Epoch] = {}
        # One thread reads (or makes) the epochs while the pool's others wait for them: on a
        # cluster that is 16,384 keys, not worth reading eight times at once.
        self._epochs_lock = threading.Lock()
        self._counted_at = float("-inf")
        self._active = 0

    def key(self, user_id: int, kind: str) -> str:
        return f"{self.prefix}:{{{user_id}}}:{kind}"

    def shard_of(self, user_id: int) -> int:
        return user_slot(user_id) if self.cluster else 0

    def epoch_key(self, shard: int) -> str:
        if self.cluster:
            return f"{self.prefix}:{{{slot_tags()[shard]}}}:epoch"
        return f"{self.prefix}:epoch"

    def generation(self) -> str | None:
        """The windows' generation, to read before a batch touches them (None when the
        windows share the Redis of the task results). The epochs are made first, so that
        a first start does not rename the generation under the batch."""
        if self.generations is None:
            return None
        self._current_epochs()
        return self.generations.current()

    def record(self, additions: Windows, reach: dict[str, Reach]) -> Windows:
        """Add the batch's entries and return, per (user, kind), the window from `radius`
        before the earliest added entry to `radius` after the latest."""
        for _attempt in range(3):
            # The epochs read last time, if any: the script checks them, so a stale one
            # costs a retry, not a wrong count.
            epochs = self._current_epochs()
            try:
                return self._record(epochs, additions, reach)
            except EpochLost:
                with self._epochs_lock:
                    if self._epochs is epochs:  # not already read again by another thread
                        self._epochs = {}
        raise EpochLost("the windows' epoch changed three times in a row")

    def _current_epochs(self) -> dict[int, Epoch]:
        epochs = self._epochs
        if epochs:
            return epochs
        with self._epochs_lock:
            return self._epochs or self.epochs()

    def epochs(self) -> dict[int, Epoch]:
        """The current epoch of every shard; a new one for each shard that lost its own
        (all of them made at once, under one name, so a node lost renames the generation
        once). A new epoch needs history from PostgreSQL only if PostgreSQL holds any
        events (a first start has none to load)."""
        shards = range(REDIS_CLUSTER_HASH_SLOTS) if self.cluster else range(1)
        keys = [self.epoch_key(shard) for shard in shards]
        raws = self._mget(keys)
        missing = [index for index, raw in enumerate(raws) if raw is None]
        if missing:
            history_before = int(self.clock() * 1000) if self.history_exists() else 0
            if self.generations is not None:
                self.generations.renew()  # before the epochs: see WindowsGeneration
            name = f"{uuid.uuid4().hex}:{history_before}"
            made = self._set_new([keys[index] for index in missing], name.encode())
            # Another worker may have made some first: those are read back.
            lost = [index for index, ours in zip(missing, made, strict=True) if not ours]
            for index, raw in zip(lost, self._mget([keys[index] for index in lost]), strict=True):
                if raw is None:
                    raise EpochLost("an epoch vanished as it was made")
                raws[index] = raw
            for index, ours in zip(missing, made, strict=True):
                if ours:
                    raws[index] = name.encode()
        self._epochs = {shard: Epoch.of(raw) for shard, raw in zip(shards, raws, strict=True)}
        return self._epochs

    def _record(self, epochs: dict[int, Epoch], additions: Windows, reach: dict[str, Reach]) -> Windows:
        bounds = {
            window: (
                min(entry.timestamp for entry in entries) - reach[window[1]].radius_ms,
                max(entry.timestamp for entry in entries) + reach[window[1]].radius_ms,
            )
            for window, entries in additions.items()
            if entries
        }
        filled, history = self._history(epochs, additions, reach)
        entries_by_window: dict[tuple[int, str], list[WindowEntry]] = defaultdict(list)
        for window in bounds:
            entries_by_window[window].extend(additions[window])
        for window, entries in history.items():
            entries_by_window[window].extend(entries)
        if not entries_by_window:
            return {}
        marker_ttl = max(r.keep_ms for r in reach.values())
        shards = self._shards(sorted(entries_by_window), lambda window: window[0])
        filled_by_shard = self._shards(filled, lambda user_id: user_id)
        calls = []
        for shard, windows in shards.items():
            epoch = epochs[shard]
            keys: list[str] = [self.epoch_key(shard)]
            args: list[Any] = [epoch.name, len(windows)]
            for user_id, kind in windows:
                keys.append(self.key(user_id, kind))
                lo, hi = bounds.get((user_id, kind), (0, -1))
                keep = reach[kind].keep_ms
                entries = entries_by_window[(user_id, kind)]
                added = " ".join(f"{entry.timestamp} {member_of(entry, kind)}" for entry in entries)
                args += [lo, hi, keep, keep + IDLE_GRACE_MS, added]
            keys += [self._marker(epoch, user_id) for user_id in filled_by_shard.get(shard, ())]
            args.append(marker_ttl)
            calls.append((shard, keys, args))
        result: Windows = {}
        for windows, replies in zip(shards.values(), self._scripts(self.record_script, calls), strict=True):
            for (user_id, kind), reply in zip(windows, replies, strict=True):
                if (user_id, kind) in bounds:
                    result[(user_id, kind)] = entries_of(reply, kind)
        return result

    def _history(
        self, epochs: dict[int, Epoch], additions: Windows, reach: dict[str, Reach]
    ) -> tuple[list[int], Windows]:
        """The users to fill in from PostgreSQL (their views reach back before their
        shard's epoch, and they were not filled in during it), and their history, every
        kind at once."""
        if not any(epoch.history_before_ms for epoch in epochs.values()):
            return [], {}
        widest = max(r.radius_ms for r in reach.values())
        earliest: dict[int, int] = {}
        for (user_id, _), entries in additions.items():
            for entry in entries:
                earliest[user_id] = min(earliest.get(user_id, entry.timestamp), entry.timestamp)
        epoch_of = {user_id: epochs[self.shard_of(user_id)] for user_id in earliest}
        reaching = sorted(
            user_id
            for user_id, first in earliest.items()
            if first - widest < epoch_of[user_id].history_before_ms  # 0: nothing to fill in
        )
        if not reaching:
            return [], {}
        markers = self._mget([self._marker(epoch_of[user_id], user_id) for user_id in reaching])
        missing = [user_id for user_id, marker in zip(reaching, markers, strict=True) if marker is None]
        if not missing:
            return [], {}
        return missing, self.load_history(missing, min(earliest[user_id] for user_id in missing) - widest)

    def _marker(self, epoch: Epoch, user_id: int) -> str:
        return f"{self.prefix}:{{{user_id}}}:filled:{epoch.name}"

    def _shards(self, items: Iterable[T], user_of: Callable[[T], int]) -> dict[int, list[T]]:
        """The items by shard: by cluster slot, or all in shard 0 on one Redis."""
        if self.cluster:
            return by_slot(items, user_of)
        listed = list(items)
        return {0: listed} if listed else {}

    def _scripts(self, script: Script, calls: list[tuple[int, list[str], list[Any]]]) -> list[Any]:
        """The replies of `script` run once per (shard, keys, args). On a cluster, each
        call's keys are in its shard's slot, and the calls go by node, one pipeline each
        (docs/performance.md, "Detection on a Redis Cluster"). A node that restarted has
        no scripts: they are loaded on every master and the calls sent again (every script
        here is idempotent)."""
        try:
            if not self.cluster:
                return [script(keys=keys, args=args) for _, keys, args in calls]
            commands = [(slot, ("EVALSHA", script.sha, len(keys), *keys, *args)) for slot, keys, args in calls]
            replies = self._on_nodes(commands)
            if any(isinstance(reply, redis.exceptions.NoScriptError) for reply in replies):
                self.client.script_load(script.script)
                replies = self._on_nodes(commands)
            return _raised(replies)
        except redis.ResponseError as error:
            if "EPOCH windows were lost" in str(error):
                raise EpochLost(str(error)) from error
            raise

    def _on_nodes(self, commands: list[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        """The replies (or errors) of (slot, command)s sent straight to the master of each
        slot, as redis-py last saw the cluster, in a plain pipeline per node: a fifth of
        the cost per command of redis-py's cluster pipeline. Slots that moved, or a node
        away, send them through the cluster pipeline instead, which follows redirections
        and asks the cluster for its slots again."""
        manager = self.client.nodes_manager  # type: ignore[union-attr]
        replies: list[Any] = [None] * len(commands)
        try:
            by_node: dict[str, list[int]] = defaultdict(list)
            nodes = {}
            for index, (slot, _) in enumerate(commands):
                node = manager.get_node_from_slot(slot)
                by_node[node.name].append(index)
                nodes[node.name] = node
            for name, indices in by_node.items():
                pipe = self.client.get_redis_connection(nodes[name]).pipeline(transaction=False)  # type: ignore[union-attr]
                for index in indices:
                    pipe.execute_command(*commands[index][1])
                for index, reply in zip(indices, pipe.execute(raise_on_error=False), strict=True):
                    replies[index] = reply
        except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.SlotNotCoveredError):
            return self._through_cluster(commands)
        if any(isinstance(reply, REDIRECTED) for reply in replies):
            return self._through_cluster(commands)
        return replies

    def _through_cluster(self, commands: list[tuple[int, tuple[Any, ...]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for _, command in commands:
            pipe.execute_command(*command)
        return pipe.execute(raise_on_error=False)  # type: ignore[no-any-return]

    def _set_new(self, keys: list[str], value: bytes) -> list[bool]:
        """SET NX of each key; per key, whether this call set it."""
        if self.cluster:
            commands = [(key_slot(key.encode()), ("SET", key, value, "NX")) for key in keys]
            return [bool(reply) for reply in _raised(self._on_nodes(commands))]
        pipe = self.client.pipeline(transaction=False)
        for key in keys:
            pipe.set(key, value, nx=True)
        return [bool(reply) for reply in pipe.execute()]

    def _mget(self, keys: list[str]) -> list[Any]:
        if self.cluster:
            return _raised(self._on_nodes([(key_slot(key.encode()), ("GET", key)) for key in keys]))
        return self.client.mget(keys)  # type: ignore[no-any-return]

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
        shards = self._shards(by_user, lambda user_id: user_id)
        calls = [
            (shard, self._places_keys(users), [orjson.dumps([by_user[user_id] for user_id in users])])
            for shard, users in shards.items()
        ]
        known = set()
        for users, reply in zip(shards.values(), self._scripts(self.places_get_script, calls), strict=True):
            for user_id, cached_values in zip(users, orjson.loads(reply), strict=True):
                for place, cached in zip(by_user[user_id], cached_values, strict=True):
                    if cached:
                        timestamp, _, event_id = cached.partition(" ")
                        entry = first_logins[(user_id, place)]
                        if (int(timestamp), event_id) < (entry.timestamp, entry.event_id):
                            known.add((user_id, place))
        return known

    def places_remember(self, places: dict[int, dict[str, WindowEntry]]) -> None:
        if not places:
            return
        calls = []
        for shard, users in self._shards(places, lambda user_id: user_id).items():
            fields = [
                [part for place, entry in places[user_id].items() for part in (place, _place_value(entry))]
                for user_id in users
            ]
            calls.append((shard, self._places_keys(users), [orjson.dumps(fields), PLACES_CACHE_MS]))
        self._scripts(self.places_set_script, calls)

    def _places_keys(self, user_ids: list[int]) -> list[str]:
        return [f"{self.prefix}:{{{user_id}}}:places" for user_id in user_ids]

    def active_users(self, user_ids: set[int], *, minutes: int | None = None) -> int:
        """Count these users as active this minute; return about how many users were
        active in the last `minutes` (HyperLogLog: 12 KB a minute, about 1% off)."""
        minutes = minutes or settings.ACTIVE_SESSION_MINUTES
        now = self.clock()
        minute = int(now // 60)
        # One hash tag for all the minutes' sketches: one slot, so one call on a cluster.
        keys = [f"{self.prefix}:{{active}}:{minute - back}" for back in range(minutes)]
        # Counting merges the minutes' sketches, the costly part: every few seconds is enough.
        counting = now - self._counted_at >= ACTIVE_COUNT_EVERY_S
        users = orjson.dumps([str(user_id) for user_id in user_ids])
        args = [users, (minutes + 1) * 60, 1 if counting else 0]
        (reply,) = self._scripts(self.active_script, [(key_slot(keys[0].encode()), keys, args)])
        if counting:
            self._counted_at, self._active = now, int(reply)
        return self._active
