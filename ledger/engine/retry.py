"""A tool's retry policy: how often a task re-runs its tool after the tool raised, and how long it waits
between attempts (a durable wait, like ``ctx.sleep``: the task holds nothing meanwhile)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class Retry:
    """``@app.tool(retry=Retry(...))``: an exception in attempt k < ``max_attempts`` runs the tool again
    after ``initial_delay * backoff ** (k - 1)`` seconds, at most ``max_delay``; recorded steps and answered
    questions come back from the journal. An exception of a ``non_retryable`` type fails the task at once."""

    max_attempts: int = 3
    initial_delay: float = 1.0
    backoff: float = 2.0
    max_delay: float = 60.0
    non_retryable: tuple[type[BaseException], ...] = ()

    def __post_init__(self) -> None:
        if not isinstance(self.max_attempts, int) or self.max_attempts < 1:
            raise ValueError(f"Retry.max_attempts must be an integer of 1 or more, got {self.max_attempts!r}")
        for name in ("initial_delay", "max_delay"):
            if not 0 <= getattr(self, name) < float("inf"):
                raise ValueError(f"Retry.{name} is seconds, 0 or more, got {getattr(self, name)!r}")
        if not 1 <= self.backoff < float("inf"):
            raise ValueError(f"Retry.backoff must be 1 or more, got {self.backoff!r}")
        if not all(isinstance(kind, type) and issubclass(kind, BaseException) for kind in self.non_retryable):
            raise ValueError(f"Retry.non_retryable takes exception types, got {self.non_retryable!r}")

    def delay_ms(self, failed_attempt: int) -> int | None:
        """How long to wait before the attempt after ``failed_attempt`` (1-based), or None when that was the
        last."""
        if failed_attempt >= self.max_attempts:
            return None
        seconds = min(self.initial_delay * self.backoff ** (failed_attempt - 1), self.max_delay)
        return round(seconds * 1000)

    def retries(self, error: BaseException) -> bool:
        return not isinstance(error, self.non_retryable)
