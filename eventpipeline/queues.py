"""How many tasks wait in each Celery queue: LLEN of kombu's lists on the Redis broker."""

from __future__ import annotations

from collections.abc import Iterable

import redis
from django.conf import settings
from kombu.transport.redis import PRIORITY_STEPS, Channel


def _queue_keys(queue: str) -> list[str]:
    """Kombu keeps a queue as one Redis list per priority step: the queue's own name for
    the lowest, `<queue>\\x06\\x16<step>` for the others."""
    return [queue if step == 0 else f"{queue}{Channel.sep}{step}" for step in PRIORITY_STEPS]


def celery_queue_lengths(queues: Iterable[str] | None = None, *, timeout: float = 2.0) -> dict[str, int]:
    """Tasks waiting per queue (not those a worker has taken and not yet acknowledged);
    by default the queues of the settings: STORE_QUEUE, DETECT_QUEUE and the default one."""
    names = list(
        queues or dict.fromkeys([settings.STORE_QUEUE, settings.DETECT_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE])
    )
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL, socket_timeout=timeout, socket_connect_timeout=timeout)
    with client, client.pipeline(transaction=False) as pipe:
        for name in names:
            for key in _queue_keys(name):
                pipe.llen(key)
        lengths = pipe.execute()
    steps = len(PRIORITY_STEPS)
    return {name: sum(lengths[index * steps : (index + 1) * steps]) for index, name in enumerate(names)}
