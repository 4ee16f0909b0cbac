"""What the task service refuses with: each error's message is the sentence a client is shown."""

from __future__ import annotations


class TaskNotFound(LookupError):
    def __init__(self, task_id: str) -> None:
        super().__init__(f"Failed to retrieve task: Task not found ({task_id!r})")


class Refused(ValueError):
    """A request that addresses a task but cannot be applied; it was recorded as rejected."""


class InvalidCursor(ValueError):
    pass


class LogBehind(RuntimeError):
    """The server could not read the log far enough to act on a request safely; nothing was recorded."""


class CancelPending(RuntimeError):
    """A cancel request is on the log, but no worker has ended the task in time."""

    def __init__(self, task_id: str, waited_ms: int) -> None:
        super().__init__(f"the cancellation of task {task_id} is recorded, but no worker has ended the task within "
                         f"{waited_ms / 1000:g} s; it ends cancelled when a worker takes its partition")
        self.task_id = task_id
