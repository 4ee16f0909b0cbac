"""Read models folded from the task-event log: pure functions ``state, event -> state``."""
