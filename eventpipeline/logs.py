"""What every log record says about the Celery task it was logged in.

Settings' LOGGING puts `TaskContext` on the one handler of every process. A record logged
while a task runs, by the task or by anything it calls, gets the task's id and name and,
for the batch tasks, the batch id the bridge gave the batch (the task's `batch_id`
argument). The JSON formatter writes them as fields; the text format leaves them out.
A record that already has a field (the bridge passes `batch_id` in `extra`) keeps it.
"""

from __future__ import annotations

import logging

from celery import current_task


class TaskContext(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not current_task:  # a proxy: false outside a task
            return True
        request = current_task.request
        fields = {
            "task_id": request.id,
            "task_name": current_task.name,
            "batch_id": (request.kwargs or {}).get("batch_id"),
        }
        for name, value in fields.items():
            if value is not None and not hasattr(record, name):
                setattr(record, name, value)
        return True
