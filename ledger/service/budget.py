"""How many events each principal's requests may put on the log per second (a token bucket each).

The log keeps everything forever, and every request that changes a task, and every refused or ignored
one, is an event: without a bound one client could fill the log as fast as the brokers take writes.
A request over its principal's budget is refused before anything is appended; an audit record over
budget (a refused answer, another principal's probe) is counted and dropped, since the request it
records was refused anyway.
"""

from __future__ import annotations

import math
import time

MAX_TRACKED = 10_000  # principals with a partly spent budget; full buckets are forgotten beyond this


class OverBudget(RuntimeError):
    """The principal's requests wrote more than their share of the log; retry after ``retry_after_s``."""

    def __init__(self, principal: str | None, per_second: float, retry_after_s: float) -> None:
        self.retry_after_ms = math.ceil(retry_after_s * 1000)  # above 0: the budget is short of at least a bit
        super().__init__(f"Too many changes: {principal or 'the anonymous principal'} may write {per_second:g} "
                         f"events per second (LEDGER_PRINCIPAL_EVENTS_PER_S); retry in {self.retry_after_ms} ms")


class WriteBudget:
    def __init__(self, per_second: float, burst: float | None = None) -> None:
        self.per_second = per_second
        self.burst = burst if burst is not None else 2 * per_second
        self._buckets: dict[str | None, tuple[float, float]] = {}  # principal -> (tokens, as of)

    def charge(self, principal: str | None, events: int) -> None:
        """Spend ``events`` of the principal's budget, or raise ``OverBudget`` and spend nothing."""
        wait = self._spend(principal, events)
        if wait > 0:
            raise OverBudget(principal, self.per_second, wait)

    def allows(self, principal: str | None, events: int) -> bool:
        """Spend ``events`` if the budget has them; False (nothing spent) otherwise."""
        return self._spend(principal, events) == 0

    def _spend(self, principal: str | None, events: int) -> float:
        now = time.monotonic()
        tokens, as_of = self._buckets.get(principal, (self.burst, now))
        tokens = min(self.burst, tokens + (now - as_of) * self.per_second)
        if tokens < events:
            self._buckets[principal] = (tokens, now)
            return (events - tokens) / self.per_second
        if len(self._buckets) >= MAX_TRACKED and principal not in self._buckets:
            self._forget_full(now)
        self._buckets[principal] = (tokens - events, now)
        return 0.0

    def _forget_full(self, now: float) -> None:
        for principal, (tokens, as_of) in list(self._buckets.items()):
            if tokens + (now - as_of) * self.per_second >= self.burst:
                del self._buckets[principal]
