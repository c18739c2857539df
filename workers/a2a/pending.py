"""`PendingTasks`: which remote task each conversation's next message continues.

When an outside agent answers `input-required`, the bridge notes conversation → remote task id,
so the conversation's next message is sent with that `taskId` and continues the task. The map is
the bridge process's own: bounded (the least recently used entry goes first), entries expire,
and it does not survive a restart (a message after one starts a new task in the same
`contextId`). A caller can always name the task itself: `metadata.a2a_task_id` of its message.
"""

from __future__ import annotations

import time
from collections import OrderedDict

MAX_ENTRIES = 10_000
TTL = 24 * 3600.0  # seconds an unanswered question is remembered


class PendingTasks:
    def __init__(self, *, max_entries: int = MAX_ENTRIES, ttl: float = TTL) -> None:
        self.max_entries = max_entries
        self.ttl = ttl
        self._tasks: OrderedDict[str, tuple[str, float]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._tasks)

    def get(self, conversation_id: str | None) -> str | None:
        if not conversation_id:
            return None
        found = self._tasks.get(conversation_id)
        if found is None:
            return None
        task_id, expires = found
        if expires < time.monotonic():
            del self._tasks[conversation_id]
            return None
        self._tasks.move_to_end(conversation_id)
        return task_id

    def put(self, conversation_id: str, task_id: str) -> None:
        self._tasks[conversation_id] = (task_id, time.monotonic() + self.ttl)
        self._tasks.move_to_end(conversation_id)
        while len(self._tasks) > self.max_entries:
            self._tasks.popitem(last=False)

    def pop(self, conversation_id: str | None) -> None:
        if conversation_id:
            self._tasks.pop(conversation_id, None)
