"""How many tasks wait in each Celery queue: what `celery_queue_length{queue}` exports and
what an operator's status report shows (docs/design.md, "Prometheus metrics").
"""

from __future__ import annotations

from collections.abc import Iterable

from celery import Celery
from django.conf import settings
from kombu.exceptions import ChannelError

# A broker that does not answer costs the caller (a Prometheus scrape) this long, not forever.
BROKER_TIMEOUT_S = 2


def celery_queue_names() -> list[str]:
    """The queues the pipeline's tasks go to: storing, detecting, and the default one (beat's retention)."""
    return list(dict.fromkeys([settings.STORE_QUEUE, settings.DETECT_QUEUE, settings.CELERY_TASK_DEFAULT_QUEUE]))


def celery_queue_lengths(*, app: Celery, queues: Iterable[str]) -> dict[str, int]:
    """Per queue, the tasks waiting for a worker. Tasks a worker has taken and not yet
    acknowledged (running, or held by a worker that died until the visibility timeout
    gives them back) are not counted.

    kombu counts, so its naming holds: on Redis a queue is a list, plus one list per
    priority step above 0 (`<queue>\\x06\\x163`, ...6, ...9) when tasks are sent with a
    priority, and all of them count. Redis keeps no empty list, and kombu then says the
    queue does not exist: that is 0. Raises kombu's OperationalError when the broker cannot
    be reached within BROKER_TIMEOUT_S.
    """
    timeouts = {
        "socket_timeout": BROKER_TIMEOUT_S,
        "socket_connect_timeout": BROKER_TIMEOUT_S,
        "max_retries": 1,
    }
    with app.connection_for_read(transport_options=timeouts) as connection:
        connection.ensure_connection(max_retries=1, timeout=BROKER_TIMEOUT_S)
        with connection.channel() as channel:
            lengths: dict[str, int] = {}
            for queue in queues:
                try:
                    # queue_declare: not in the stubs' StdChannel, but every kombu channel has it.
                    declared = channel.queue_declare(queue=queue, passive=True)  # type: ignore[attr-defined]
                    lengths[queue] = declared.message_count
                except ChannelError:
                    lengths[queue] = 0
            return lengths
